"""One deadline per request, carried in a context variable.

The servicer sets it from the caller's gRPC deadline (capped by the server's own budget,
``serve --request-budget``) with :func:`request_deadline`; every store round trip of that
request, group-commit queue waits included, takes its time from :func:`budget`. So the
``on_store_error`` answer is ready before the caller gives up, whatever Redis does
(stopped, frozen, failing over). Background work (a withdraw after a failure, the
stop watcher) runs outside any request deadline and uses the store's own per-call timeout.

Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["budget", "remaining", "request_deadline"]

#: The monotonic instant by which the current request must be answered; None outside a request.
_DEADLINE: ContextVar[float | None] = ContextVar("quota_request_deadline", default=None)


@contextlib.contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """Run the body under a deadline ``seconds`` from now (``None``: no request deadline).
    A nested, later deadline never extends an earlier one."""
    if seconds is None:
        yield
        return
    instant = time.monotonic() + max(0.0, seconds)
    outer = _DEADLINE.get()
    token = _DEADLINE.set(instant if outer is None else min(outer, instant))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current request's deadline (may be <= 0); ``None`` outside a request."""
    instant = _DEADLINE.get()
    return None if instant is None else instant - time.monotonic()


def budget(per_call_seconds: float) -> float:
    """How long one store call may take now: its own timeout, cut to what is left of the
    request's deadline. May be <= 0: the caller must then fail at once, without I/O."""
    left = remaining()
    return per_call_seconds if left is None else min(per_call_seconds, left)
