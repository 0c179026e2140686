"""Admin credentials and roles: exactly one ``authorization: Bearer <token>`` on every
AdminService call, and what each token may do.

Two roles (:class:`Role`): the **admin** token (``--admin-token``) may call everything; the
**viewer** token (``--viewer-token``) may call the reads (:data:`READ_METHODS`: GetSubject,
ListOverrides, ListStops, GetPolicyStatus, TopUsage, ListAudit, ListEvents, WatchEvents,
ListWebhooks, the dashboard's GetCompanyUsage, DescribePolicy, GetActivity, GetAnalytics, the
lifecycle's Recommend and GetEstimates) and gets ``PERMISSION_DENIED`` on every write, so a
backend or a dashboard reader does not hold the power to stop everything. :func:`authorize`
is the one decision, shared by the gRPC interceptor and the HTTP face.

The header is read by one function, :func:`bearer_token`, for the interceptor and for the
audit log's actor alike (RFC 7235 credentials, RFC 6750 Bearer):

* no ``authorization`` header, more than one (never "the last one wins"), a scheme other
  than Bearer (Basic, Digest, a bare token, garbage) or a Bearer without a token:
  ``UNAUTHENTICATED``, the call carries no usable credentials;
* a Bearer token that is not the admin token: ``PERMISSION_DENIED``.

The scheme is matched case-insensitively (``bearer``, ``BEARER``); spaces and tabs around
the value are ignored and one or more spaces separate the scheme from the token, as the
RFC grammar allows. Tokens are compared in constant time. The quota RPCs need no token (the
backend calls them on a private network or over mTLS).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from quota_service.errors import PermissionDenied, QuotaServiceError, Unauthenticated
from quota_service.server.status import abort_with

ADMIN_PREFIX = "/quota.v1.AdminService/"
#: AdminService methods a viewer may call: they change nothing.
READ_METHODS = frozenset(
    {
        "GetSubject",
        "ListOverrides",
        "ListStops",
        "GetPolicyStatus",
        "TopUsage",
        "ListAudit",
        "ListEvents",
        "WatchEvents",
        "ListWebhooks",
        # the dashboard's reads (quota_service.server.dashboard_reads)
        "GetCompanyUsage",
        "DescribePolicy",
        "GetActivity",
        "GetAnalytics",
        # the policy lifecycle's suggestions (quota_service.server.lifecycle_reads)
        "Recommend",
        "GetEstimates",
    }
)
#: AdminService methods that answer with a stream (their refusal must be a stream too).
STREAMING_METHODS = frozenset({"WatchEvents"})
AUTHORIZATION = "authorization"
BEARER = "bearer"
#: Optional whitespace around a header value (RFC 9110 section 5.5: OWS is SP / HTAB).
_OWS = " \t"

Metadata = Iterable[tuple[str, str | bytes]]


def token_fingerprint(token: str) -> str:
    """What the audit log records of a credential: never the token itself."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def bearer_token(metadata: Metadata | None) -> str:
    """The token of the call's one ``authorization: Bearer <token>`` header.

    Raises :class:`Unauthenticated` when there is no such header, more than one, the
    scheme is not Bearer (in any case), or no token follows it. Says nothing about whether
    the token is the right one."""
    values = [value for key, value in metadata or () if key.lower() == AUTHORIZATION]
    if not values:
        raise Unauthenticated("admin calls need 'authorization: Bearer <token>' metadata")
    if len(values) > 1:
        raise Unauthenticated(f"admin calls need exactly one authorization header, got {len(values)}")
    value = values[0]
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip(_OWS)
    scheme, _, credentials = text.partition(" ")
    token = credentials.lstrip(" ")
    if scheme.lower() != BEARER or not token:
        raise Unauthenticated("admin calls need a Bearer token: 'authorization: Bearer <token>'")
    return token


def actor_of(metadata: Metadata | None) -> str:
    """Who made a call, for the audit log: the fingerprint of its Bearer token, or
    ``anonymous`` when it carries none that :func:`bearer_token` accepts (only possible with
    ``--insecure-admin``: otherwise the interceptor refused the call)."""
    try:
        return token_fingerprint(bearer_token(metadata))
    except Unauthenticated:
        return "anonymous"


class Role(enum.Enum):
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class AccessTokens:
    """Who may call AdminService. ``admin``: the admin token ("" = none); ``viewer``: the
    viewer token ("" = none); ``insecure``: every call is an admin call without a token
    (``--insecure-admin``, loopback only)."""

    admin: str = ""
    viewer: str = ""
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.admin and self.admin == self.viewer:
            raise ValueError("the viewer token must differ from the admin token")


def authorize(tokens: AccessTokens, method: str, metadata: Metadata | None) -> Role:
    """The caller's role for AdminService ``method`` (its bare name, e.g. ``"SetTier"``).

    Raises :class:`Unauthenticated` (no usable Bearer credentials) or
    :class:`PermissionDenied` (a token that is neither, or the viewer token on a write)."""
    if tokens.insecure:
        return Role.ADMIN
    presented = bearer_token(metadata).encode()
    if tokens.admin and hmac.compare_digest(presented, tokens.admin.encode()):
        return Role.ADMIN
    if tokens.viewer and hmac.compare_digest(presented, tokens.viewer.encode()):
        if method not in READ_METHODS:
            raise PermissionDenied(f"the viewer token may only read; {method} needs the admin token")
        return Role.VIEWER
    raise PermissionDenied("the admin token is not valid")


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses AdminService calls whose bearer token is missing, ambiguous, wrong, or the
    viewer token on a write (:func:`authorize`)."""

    def __init__(self, tokens: AccessTokens) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if not method.startswith(ADMIN_PREFIX):
            return await continuation(handler_call_details)
        name = method[len(ADMIN_PREFIX) :]
        try:
            authorize(self._tokens, name, handler_call_details.invocation_metadata)
        except (Unauthenticated, PermissionDenied) as exc:
            return _refuse(exc, streaming=name in STREAMING_METHODS)
        return await continuation(handler_call_details)


def _refuse(error: QuotaServiceError, *, streaming: bool = False) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, error)

    if streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
