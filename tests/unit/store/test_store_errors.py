"""The one translation of redis-py's errors (bounded_call): an outage is StoreUnavailable,
anything else Redis refuses is StoreDataError naming the key. No I/O: each case raises the
exception redis-py raises for that reply (as parsed from real Redis replies); the real
Redis cases are in tests/integration/store/test_data_errors.py and test_outage.py."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    DataError,
    MasterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quota_service.errors import StoreDataError, StoreUnavailable
from quota_service.store.redis_store import bounded_call, parsed

pytestmark = pytest.mark.unit

OUTAGES = [
    RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    RedisTimeoutError("Timeout reading from socket"),
    BusyLoadingError("Redis is loading the dataset in memory"),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    MovedError("3999 127.0.0.1:6381"),
    AskError("3999 127.0.0.1:6381"),
    ClusterError("TTL exhausted."),
    SlotNotCoveredError("Slot 3999 is not covered by the cluster."),
    ReadOnlyError("You can't write against a read only replica."),
    ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."),
    ResponseError("NOREPLICAS Not enough good replicas to write."),
    # Redis 6.2 reports a command's refusal inside a script wrapped like this:
    ResponseError(
        "Error running script (call to f_0123): @user_script:68: @user_script: 68: "
        "-READONLY You can't write against a read only replica."
    ),
    OSError(113, "No route to host"),
]

DATA_ERRORS = [
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ResponseError("ERR user_script:12: attempt to compare nil with number script: 0123, on @user_script:12."),
    ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"),
    DataError("Invalid input of type: 'NoneType'."),
]


async def raising(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
async def test_an_outage_is_store_unavailable(exc: BaseException) -> None:
    with pytest.raises(StoreUnavailable):
        await bounded_call("reserve", 1.0, lambda: raising(exc), key="r:{alice}:x")


@pytest.mark.parametrize("exc", DATA_ERRORS, ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
async def test_anything_else_redis_refuses_is_store_data_error_naming_the_key(exc: BaseException) -> None:
    with pytest.raises(StoreDataError) as info:
        await bounded_call("reserve", 1.0, lambda: raising(exc), key="r:{alice}:x")
    assert info.value.key == "r:{alice}:x"
    assert "redis reserve" in str(info.value) and "r:{alice}:x" in str(info.value)


@pytest.mark.parametrize(
    "message",
    [
        "QUOTADATA q:{alice}:tokens:day:2026-11-24 used is not a whole number: ten script: "
        + "a" * 40
        + ", on @user_script:9.",  # Redis 7
        "Error running script (call to f_0123): @user_script:9: "
        "QUOTADATA q:{alice}:tokens:day:2026-11-24 used is not a whole number: ten",  # Redis 6.2
    ],
)
async def test_a_script_names_the_damaged_key_itself(message: str) -> None:
    with pytest.raises(StoreDataError) as info:
        await bounded_call("reserve", 1.0, lambda: raising(ResponseError(message)), key="r:{alice}:x")
    assert info.value.key == "q:{alice}:tokens:day:2026-11-24"
    assert str(info.value).endswith("used is not a whole number: ten")


@pytest.mark.parametrize(
    "reply", [["reserved"], ["nonsense", "", "0", "0", [], "", "", "", ""], "not a list", {"a": 1}]
)
def test_a_reply_that_does_not_parse_is_store_data_error(reply: object) -> None:
    def parse(value: object) -> object:
        status, *_rest = value  # type: ignore[misc]
        if status != "reserved":
            raise ValueError(f"unknown status {status!r}")
        return json.loads("{")

    with pytest.raises(StoreDataError) as info:
        parsed("reserve", "r:{alice}:x", parse, reply)
    assert info.value.key == "r:{alice}:x"
