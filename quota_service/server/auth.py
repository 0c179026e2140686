"""Admin credentials: exactly one ``authorization: Bearer <token>`` on every AdminService call.

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

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from quota_service.errors import PermissionDenied, QuotaServiceError, Unauthenticated
from quota_service.server.status import abort_with

ADMIN_PREFIX = "/quota.v1.AdminService/"
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


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses AdminService calls whose bearer token is missing, ambiguous or wrong.

    ``token`` empty means the server runs with ``--insecure-admin`` (loopback only):
    every admin call is let through.
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if not self._token or not method.startswith(ADMIN_PREFIX):
            return await continuation(handler_call_details)
        try:
            presented = bearer_token(handler_call_details.invocation_metadata)
        except Unauthenticated as exc:
            return _refuse(exc)
        if not hmac.compare_digest(presented.encode(), self._token):
            return _refuse(PermissionDenied("the admin token is not valid"))
        return await continuation(handler_call_details)


def _refuse(error: QuotaServiceError) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, error)

    return grpc.unary_unary_rpc_method_handler(abort)
