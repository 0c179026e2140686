"""Servicers without a network: every failure leaves as a precise status code, never UNKNOWN."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from quota.v1 import quota_pb2
from quota_service.errors import InvalidRequest, NotFound, PolicyError, PolicyIssue, StoreUnavailable
from quota_service.escaping import visible
from quota_service.server.servicers import QuotaServicer
from quota_service.server.status import (
    MAX_STATUS_MESSAGE_BYTES,
    TRUNCATED,
    grpc_errors,
    status_for,
    status_message,
)

pytestmark = pytest.mark.unit


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class RecordingContext:
    """The slice of grpc.aio.ServicerContext the servicers use: abort()."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


class Exploding:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @grpc_errors
    async def Rpc(self, request: Any, context: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("gone"), grpc.StatusCode.NOT_FOUND),
        (StoreUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (PolicyError([PolicyIssue("p.yaml", 3, "tiers", "broken")]), grpc.StatusCode.FAILED_PRECONDITION),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_errors_map_to_their_codes(error: Exception, code: grpc.StatusCode) -> None:
    with pytest.raises(Aborted) as info:
        await Exploding(error).Rpc(None, RecordingContext())
    assert info.value.code == code
    if code is grpc.StatusCode.INTERNAL:
        assert "a bug" not in info.value.details  # internals stay in the server log


def test_every_error_of_ours_has_a_code() -> None:
    assert status_for(InvalidRequest("x")) is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("CheckAndReserve", quota_pb2.CheckAndReserveRequest(subject="", feature="f", usage={"tokens": 1})),
        ("CheckAndReserve", quota_pb2.CheckAndReserveRequest(subject="u", feature="f", usage={"tokens": -1})),
        ("Commit", quota_pb2.CommitRequest(reservation_id="")),
        ("Release", quota_pb2.ReleaseRequest(reservation_id="not-ours")),
        ("GetUsage", quota_pb2.GetUsageRequest(subject="has space")),
    ],
)
async def test_invalid_requests_never_reach_the_core(method: str, request_message: object) -> None:
    # No Quotas at all: validation must refuse before anything would touch it.
    servicer = QuotaServicer(quotas=None)  # type: ignore[arg-type]
    with pytest.raises(Aborted) as info:
        await getattr(servicer, method)(request_message, RecordingContext())
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("reservation_id " + "x" * 20_000 + " is not valid"),
        NotFound("tier " + "é" * 20_000 + " does not exist"),  # two bytes a character
        InvalidRequest("metric " + "\U0001f680" * 5_000),  # four bytes a character
        InvalidRequest("\x1b" * 5_000),  # four bytes once escaped
    ],
)
async def test_every_status_message_is_bounded(error: Exception) -> None:
    with pytest.raises(Aborted) as info:
        await Exploding(error).Rpc(None, RecordingContext())
    details = info.value.details
    assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert len(details.encode()) > MAX_STATUS_MESSAGE_BYTES - 16  # cut at the limit, not far before it
    assert details.endswith(TRUNCATED)
    assert details.startswith(visible(str(error))[:40])


def test_a_message_at_the_limit_is_whole_and_one_byte_more_is_cut() -> None:
    fits = "m" * MAX_STATUS_MESSAGE_BYTES
    assert status_message(fits) == fits
    cut = status_message(fits + "m")
    assert cut.endswith(TRUNCATED) and len(cut.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert status_message("é" * 600).endswith(TRUNCATED)  # 600 characters, 1200 bytes
    assert status_message("tier 'pro' does not exist") == "tier 'pro' does not exist"


def test_status_messages_escape_control_and_invisible_characters() -> None:
    assert status_message("bad key 'a\x1b[2J\nforged\u202e\x00'") == "bad key 'a\\x1b[2J\\nforged\\u202e\\x00'"
    # A cut never splits a UTF-8 character.
    message = status_message("a" + "€" * 1000)
    message.encode().decode("utf-8")
    assert message.endswith(TRUNCATED)
