"""Admin credentials without a network: the one parser of the ``authorization`` header
(RFC 7235 / RFC 6750 Bearer) used by the interceptor and the audit log's actor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from quota_service.errors import Unauthenticated
from quota_service.server.auth import AccessTokens, AdminAuthInterceptor, actor_of, bearer_token, token_fingerprint

pytestmark = pytest.mark.unit

TOKEN = "s3cret-Token_1"
Metadata = Sequence[tuple[str, str | bytes]]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class RecordingContext:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


class CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = tuple(metadata)


PASSED: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: "passed")


async def intercept(
    metadata: Metadata,
    *,
    method: str = "/quota.v1.AdminService/ListStops",
    token: str = TOKEN,
    viewer: str = "",
) -> str:
    """``passed`` when the call reaches the service, else ``CODE: details`` of the refusal."""

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return PASSED

    tokens = AccessTokens(admin=token, viewer=viewer, insecure=not token and not viewer)
    handler = await AdminAuthInterceptor(tokens).intercept_service(continuation, CallDetails(method, metadata))
    if handler is PASSED:
        return "passed"
    with pytest.raises(Aborted) as refused:
        await handler.unary_unary(None, RecordingContext())
    return f"{refused.value.code.name}: {refused.value.details}"


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",  # the scheme is case-insensitive (RFC 7235 section 2.1)
        f"BEARER {TOKEN}",
        f"BeArEr {TOKEN}",
        f"Bearer   {TOKEN}",  # 1*SP between scheme and credentials
        f"  Bearer {TOKEN}\t ",  # OWS around a field value (RFC 9110 section 5.5)
    ],
)
async def test_a_bearer_token_in_any_case_and_spacing_is_accepted(value: str) -> None:
    assert bearer_token([("authorization", value)]) == TOKEN
    assert await intercept([("user-agent", "x"), ("authorization", value)]) == "passed"
    assert actor_of((("authorization", value),)) == token_fingerprint(TOKEN)


async def test_no_authorization_header_is_unauthenticated() -> None:
    assert (await intercept([("user-agent", "x")])).startswith("UNAUTHENTICATED: admin calls need")
    assert actor_of(()) == actor_of(None) == "anonymous"


@pytest.mark.parametrize(
    "values",
    [
        ["Bearer wrong", f"Bearer {TOKEN}"],  # the last one no longer wins
        [f"Bearer {TOKEN}", "Bearer wrong"],
        [f"Bearer {TOKEN}", f"Bearer {TOKEN}"],
    ],
)
async def test_more_than_one_authorization_header_is_refused(values: list[str]) -> None:
    metadata = [("authorization", value) for value in values]
    with pytest.raises(Unauthenticated, match="exactly one authorization header"):
        bearer_token(metadata)
    refused = await intercept(metadata)
    assert refused.startswith("UNAUTHENTICATED: ") and "exactly one authorization header" in refused
    assert actor_of(tuple(metadata)) == "anonymous"


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        'Digest username="ops", realm="quota"',
        TOKEN,  # no scheme at all
        "Bearer",  # the scheme without a token
        "Bearer    ",
        f"Bearer\t{TOKEN}",  # only SP separates scheme and credentials
        f"Bearer{TOKEN}",
        "",
        "garbage !!",
    ],
)
async def test_a_non_bearer_scheme_is_unauthenticated(value: str) -> None:
    with pytest.raises(Unauthenticated, match="admin calls need a Bearer token"):
        bearer_token([("authorization", value)])
    refused = await intercept([("authorization", value)])
    assert refused.startswith("UNAUTHENTICATED: admin calls need a Bearer token"), refused
    assert actor_of((("authorization", value),)) == "anonymous"


@pytest.mark.parametrize("value", ["Bearer wrong", f"Bearer {TOKEN}x", f"bearer {TOKEN.upper()}", f"Bearer {TOKEN} x"])
async def test_a_wrong_bearer_token_is_permission_denied(value: str) -> None:
    assert await intercept([("authorization", value)]) == "PERMISSION_DENIED: the admin token is not valid"


async def test_quota_calls_and_an_insecure_admin_plane_need_no_token() -> None:
    assert await intercept([], method="/quota.v1.QuotaService/CheckAndReserve") == "passed"
    assert await intercept([("authorization", "Basic x")], token="") == "passed"


VIEWER = "viewer-token-of-the-dashboard"


@pytest.mark.parametrize(
    "method",
    [
        "GetSubject",
        "ListOverrides",
        "ListStops",
        "GetPolicyStatus",
        "TopUsage",
        "ListAudit",
        "ListEvents",
        "ListWebhooks",
    ],
)
async def test_the_viewer_token_may_read(method: str) -> None:
    metadata = [("authorization", f"Bearer {VIEWER}")]
    assert await intercept(metadata, method=f"/quota.v1.AdminService/{method}", viewer=VIEWER) == "passed"


@pytest.mark.parametrize(
    "method",
    ["SetTier", "SetOverride", "DeleteOverride", "EmergencyStop", "ResumeStop", "ReloadPolicies", "ResetUsage"],
)
async def test_the_viewer_token_may_not_write(method: str) -> None:
    metadata = [("authorization", f"Bearer {VIEWER}")]
    refused = await intercept(metadata, method=f"/quota.v1.AdminService/{method}", viewer=VIEWER)
    assert refused == f"PERMISSION_DENIED: the viewer token may only read; {method} needs the admin token"
    # the admin token still may
    assert (
        await intercept(
            [("authorization", f"Bearer {TOKEN}")], method=f"/quota.v1.AdminService/{method}", viewer=VIEWER
        )
        == "passed"
    )


def test_the_viewer_token_must_differ_from_the_admin_token() -> None:
    with pytest.raises(ValueError, match="differ"):
        AccessTokens(admin="same", viewer="same")


WRITES = ("SetTier", "SetOverride", "DeleteOverride", "EmergencyStop", "ResumeStop", "ReloadPolicies", "ResetUsage")


def test_every_admin_method_is_either_a_read_or_a_write_the_viewer_may_not_call() -> None:
    """A new RPC must be classified: the viewer may call exactly the reads."""
    from quota.v1 import admin_pb2
    from quota_service.server.auth import READ_METHODS

    methods = set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert methods == READ_METHODS | set(WRITES)
    assert not READ_METHODS & set(WRITES)
