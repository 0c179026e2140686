"""Admin credentials: ``authorization: Bearer <token>`` on every AdminService call.

Missing credentials get ``UNAUTHENTICATED``, wrong ones ``PERMISSION_DENIED``; tokens
are compared in constant time. The quota RPCs need no token (the backend calls them on
a private network or over mTLS).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

ADMIN_PREFIX = "/quota.v1.AdminService/"


def token_fingerprint(token: str) -> str:
    """What the audit log records of a credential: never the token itself."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def actor_of(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return token_fingerprint(value[len("Bearer ") :])
    return "anonymous"


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses AdminService calls whose bearer token is missing or wrong.

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
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        if presented is None:
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, "admin calls need 'authorization: Bearer <token>' metadata")
        if not presented.startswith(b"Bearer ") or not hmac.compare_digest(presented[7:], self._token):
            return _refuse(grpc.StatusCode.PERMISSION_DENIED, "the admin token is not valid")
        return await continuation(handler_call_details)


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)
