"""The Connect unary adapter's tables and parsing (no I/O)."""

from __future__ import annotations

import time

import grpc
import pytest

from quota_service.server.auth import AccessTokens
from quota_service.server.connect import CONNECT_CODE, HttpCallContext, _deadline, procedures

pytestmark = pytest.mark.unit


def test_every_grpc_status_but_ok_has_a_connect_code_and_status() -> None:
    assert set(CONNECT_CODE) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert CONNECT_CODE[grpc.StatusCode.PERMISSION_DENIED] == ("permission_denied", 403)
    assert CONNECT_CODE[grpc.StatusCode.UNAUTHENTICATED] == ("unauthenticated", 401)
    assert CONNECT_CODE[grpc.StatusCode.INVALID_ARGUMENT] == ("invalid_argument", 400)
    assert CONNECT_CODE[grpc.StatusCode.NOT_FOUND] == ("not_found", 404)
    assert CONNECT_CODE[grpc.StatusCode.UNAVAILABLE] == ("unavailable", 503)
    assert CONNECT_CODE[grpc.StatusCode.FAILED_PRECONDITION] == ("failed_precondition", 400)
    for code, (name, _status) in CONNECT_CODE.items():
        assert name == code.name.lower() or (code, name) == (grpc.StatusCode.CANCELLED, "canceled")


class _Servicer:
    def __getattr__(self, name: str) -> object:
        return name


def test_procedures_are_every_unary_rpc_and_admin_only_when_served() -> None:
    quota_only = procedures(quota_servicer=_Servicer(), admin_servicer=_Servicer(), tokens=None)
    assert set(quota_only) == {
        "/quota.v1.QuotaService/CheckAndReserve",
        "/quota.v1.QuotaService/Commit",
        "/quota.v1.QuotaService/Release",
        "/quota.v1.QuotaService/GetUsage",
    }
    both = procedures(quota_servicer=_Servicer(), admin_servicer=_Servicer(), tokens=AccessTokens(admin="a"))
    assert "/quota.v1.AdminService/SetTier" in both
    assert both["/quota.v1.AdminService/SetTier"].admin
    assert "/quota.v1.AdminService/WatchEvents" not in both  # streaming: the SSE endpoint instead


def test_connect_timeout_header() -> None:
    assert _deadline(None) is None
    deadline = _deadline("1500")
    assert deadline is not None and 1.4 < deadline - time.monotonic() <= 1.5
    for bad in ("-1", "1.5", "abc", "12345678901"):
        with pytest.raises(ValueError):
            _deadline(bad)
    context = HttpCallContext([("authorization", "Bearer x")], deadline=time.monotonic() + 2, peer="http:1")
    remaining = context.time_remaining()
    assert remaining is not None and 1.9 < remaining <= 2
    assert HttpCallContext([], deadline=None, peer="").time_remaining() is None
