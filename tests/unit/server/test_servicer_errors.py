"""Servicers without a network: every failure leaves as a precise status code, never UNKNOWN."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from quota.v1 import quota_pb2
from quota_service.errors import InvalidRequest, NotFound, PolicyError, PolicyIssue, StoreUnavailable
from quota_service.server.servicers import QuotaServicer
from quota_service.server.status import grpc_errors, status_for

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
