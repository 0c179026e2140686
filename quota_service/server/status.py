"""The one place where errors become gRPC status codes and status messages.

Every servicer method is wrapped by :func:`grpc_errors`; no exception ever reaches a
client as ``UNKNOWN``: ours map to their codes, anything else is logged with its
traceback and answered ``INTERNAL``.

Every status message is :func:`status_message`: control and invisible characters escaped
(an echoed value can neither forge a line in a client's log nor act on an operator's
terminal) and at most :data:`MAX_STATUS_MESSAGE_BYTES` bytes of UTF-8. The message travels
in the HTTP/2 trailers, which the peer limits (gRPC clients: 8 KiB soft, 16 KiB hard):
an error that echoed a 20 KB name arrived as ``RESOURCE_EXHAUSTED`` "Stream removed"
instead of its own status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from quota_service.errors import (
    CommitRefused,
    InvalidRequest,
    NotFound,
    OutboxFull,
    PermissionDenied,
    PolicyError,
    QuotaServiceError,
    StoreDataError,
    StoreUnavailable,
    Unauthenticated,
)
from quota_service.escaping import visible
from quota_service.ledger.errors import LedgerError, LedgerOff, LedgerUnavailable
from quota_service.metrics import RPC_LATENCY

log = logging.getLogger(__name__)

#: The longest status message sent (bytes of UTF-8, the marker included): ample for every
#: message of ours, far below any peer's header limit (even once percent-encoded, x3).
MAX_STATUS_MESSAGE_BYTES = 1024
#: Ends a message that was cut at :data:`MAX_STATUS_MESSAGE_BYTES`.
TRUNCATED = "… (truncated)"

STATUS_OF: dict[type[QuotaServiceError], grpc.StatusCode] = {
    # More specific first is not needed: status_for walks the exception's MRO.
    LedgerUnavailable: grpc.StatusCode.UNAVAILABLE,
    LedgerError: grpc.StatusCode.INTERNAL,
    LedgerOff: grpc.StatusCode.FAILED_PRECONDITION,
    StoreDataError: grpc.StatusCode.INTERNAL,
    OutboxFull: grpc.StatusCode.UNAVAILABLE,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PolicyError: grpc.StatusCode.FAILED_PRECONDITION,
    CommitRefused: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(exc: QuotaServiceError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


def status_message(text: str) -> str:
    """``text`` fit to travel as a status message: every control, format (bidi, zero-width)
    and line-separator character escaped (``\\n``, ``\\x1b``, ``\\u202e``), then cut on a
    character boundary to at most :data:`MAX_STATUS_MESSAGE_BYTES` bytes of UTF-8, ending
    with :data:`TRUNCATED` when it was cut. Bounded work whatever the length of ``text``."""
    # quotactl's escaping, so a message reads the same however it reaches an operator.
    # Escaping never shortens and every character is at least a byte: this prefix suffices.
    shown = visible(text[: MAX_STATUS_MESSAGE_BYTES + 1])
    encoded = shown.encode()
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return shown
    room = MAX_STATUS_MESSAGE_BYTES - len(TRUNCATED.encode())
    return encoded[:room].decode("utf-8", errors="ignore") + TRUNCATED  # drops a cut character's bytes


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: QuotaServiceError) -> None:
    """End the call with ``exc``'s status code and bounded message (raises ``AbortError``)."""
    await context.abort(status_for(exc), status_message(str(exc)))


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: Method) -> Method:
    """Wrap an ``async def Rpc(self, request, context)`` servicer method."""
    name = method.__name__
    latency = RPC_LATENCY.labels(name)  # resolved once, not per call

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        try:
            return await method(self, request, context)
        except QuotaServiceError as exc:
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", name)
            await context.abort(
                grpc.StatusCode.INTERNAL, status_message(f"internal error in {name}; see the server log")
            )
        finally:
            latency.observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


StreamMethod = TypeVar("StreamMethod", bound=Callable[..., AsyncIterator[Any]])


def grpc_stream_errors(method: StreamMethod) -> StreamMethod:
    """Wrap an ``async def Rpc(self, request, context)`` server-streaming method (an async
    generator): the same mapping as :func:`grpc_errors`, for an error before or between messages."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for message in method(self, request, context):
                yield message
        except QuotaServiceError as exc:
            await abort_with(context, exc)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed", name)
            await context.abort(
                grpc.StatusCode.INTERNAL, status_message(f"internal error in {name}; see the server log")
            )

    return wrapper  # type: ignore[return-value]
