"""The store boundary's last line: failures of the Redis client library that are not Redis' answers.

redis-py raises its own errors for what Redis and the network do, and
:func:`~quota_service.store.redis_store.bounded_call` translates those by kind (an outage,
or damaged data). But a client library also fails in ways of its own: during a cluster
failover redis-py's cluster client (8.1.0) raised ``AttributeError`` (``'NoneType' object
has no attribute ...``), ``TypeError``, ``IndexError`` and ``KeyError`` from inside its
topology and connection code, and a connection can raise whatever a bug makes it raise.
None of those says anything about the request or the data: to a caller the store did not
answer. So every one of them is :class:`~quota_service.errors.StoreUnavailable` (gRPC
``UNAVAILABLE``, retried by the clients; ``on_store_error`` decides a CheckAndReserve),
never an ``INTERNAL`` that nobody retries, and never an exception that ends a background
task. It is counted (``quota_store_client_faults_total{operation,error}``) and logged with
its traceback, at most once per operation and exception class per :data:`LOG_EVERY_SECONDS`
(a failover raises it for every request in flight).

:func:`client_fault` is called from ``bounded_call`` only: that stays the one place where the
client library's exceptions become ours.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from quota_service.errors import StoreUnavailable
from quota_service.metrics import STORE_CLIENT_FAULTS

__all__ = ["LOG_EVERY_SECONDS", "client_fault"]

log = logging.getLogger(__name__)

#: At most one traceback per (operation, exception class) this often, in seconds.
LOG_EVERY_SECONDS: Final = 10.0

_last_logged: dict[tuple[str, str], float] = {}


def client_fault(what: str, exc: Exception) -> StoreUnavailable:
    """The :class:`StoreUnavailable` for ``exc``, an unexpected exception raised from inside the
    client library during the store operation ``what``; counted, and logged (rate-limited)."""
    kind = type(exc).__name__
    STORE_CLIENT_FAULTS.labels(what, kind).inc()
    now = time.monotonic()
    key = (what, kind)
    if now - _last_logged.get(key, float("-inf")) >= LOG_EVERY_SECONDS:
        _last_logged[key] = now
        log.warning(
            "redis %s: %s raised inside the Redis client library; answered as store unavailable "
            "(retryable). Counted in quota_store_client_faults_total; next traceback in %.0f s at the earliest",
            what,
            kind,
            LOG_EVERY_SECONDS,
            exc_info=exc,
        )
    return StoreUnavailable(f"redis {what} failed inside the client library: {kind}: {exc}")
