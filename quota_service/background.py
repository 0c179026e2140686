"""Background tasks never die from an exception: they log, count and carry on.

A background task (a withdraw after a failed reserve, the audit relay, the stop and config
subscriptions and polls, ledger retention, following the policy's webhooks) that ends on an
unexpected exception ends silently: its work (withdrawing a hold, relaying audit entries,
re-reading emergency stops) just stops until a restart. Each of them wraps one pass of its
loop in :func:`surviving`: an ``Exception`` is logged with its traceback (at most once per
task per :data:`LOG_EVERY_SECONDS`), counted in ``quota_background_errors_total{task}``, and
swallowed, so the loop goes on to its next pass. Cancellation (``CancelledError``, a
``BaseException``) is never caught: shutdown still stops every task.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Final

from quota_service.metrics import BACKGROUND_ERRORS

__all__ = ["LOG_EVERY_SECONDS", "survived", "surviving"]

log = logging.getLogger(__name__)

#: At most one traceback per task this often, in seconds (a lasting fault repeats every pass).
LOG_EVERY_SECONDS: Final = 10.0

_last_logged: dict[str, float] = {}


def survived(task: str, exc: Exception) -> None:
    """Record that background ``task`` caught ``exc`` and carries on: counted, logged (rate-limited)."""
    BACKGROUND_ERRORS.labels(task).inc()
    now = time.monotonic()
    if now - _last_logged.get(task, float("-inf")) >= LOG_EVERY_SECONDS:
        _last_logged[task] = now
        log.error("background task %r: unexpected %s; carrying on", task, type(exc).__name__, exc_info=exc)


@contextlib.contextmanager
def surviving(task: str) -> Iterator[None]:
    """Run one pass of background ``task``: any ``Exception`` is :func:`survived`, not raised."""
    try:
        yield
    except Exception as exc:
        survived(task, exc)
