"""The one place where errors become gRPC status codes.

Every servicer method is wrapped by :func:`grpc_errors`; no exception ever reaches a
client as ``UNKNOWN``: ours map to their codes, anything else is logged with its
traceback and answered ``INTERNAL``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from quota_service.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PolicyError,
    QuotaServiceError,
    StoreUnavailable,
    Unauthenticated,
)
from quota_service.metrics import RPC_LATENCY

log = logging.getLogger(__name__)

STATUS_OF: dict[type[QuotaServiceError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PolicyError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(exc: QuotaServiceError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: QuotaServiceError) -> None:
    """End the call with ``exc``'s status code and message (raises ``AbortError``)."""
    await context.abort(status_for(exc), str(exc))


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
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the server log")
        finally:
            latency.observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]
