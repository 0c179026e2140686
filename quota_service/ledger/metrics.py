"""Prometheus metrics of the ledger and the webhook deliverer (served with the others on
``/metrics``; defined here so the ledger layer stands on its own).

Counters count what this process did; the ``*_pending`` / ``*_dead`` gauges are read from
the shared delivery table by the deliverer (every replica reports the same totals)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEDGER_INSERTED = Counter(
    "quota_ledger_events_inserted_total", "Events newly stored in the ledger (duplicates not counted)"
)
LEDGER_ERRORS = Counter(
    "quota_ledger_errors_total",
    "Ledger store calls that failed: kind=unavailable (an outage) or error (a bug)",
    ["operation", "kind"],
)
WEBHOOK_DELIVERED = Counter("quota_webhook_delivered_total", "Webhook deliveries answered 2xx", ["endpoint"])
WEBHOOK_FAILED_ATTEMPTS = Counter(
    "quota_webhook_failed_attempts_total",
    "Webhook attempts that failed (non-2xx, timeout, no connection)",
    ["endpoint"],
)
WEBHOOK_GAVE_UP = Counter(
    "quota_webhook_given_up_total", "Webhook deliveries given up after the whole retry schedule", ["endpoint"]
)
WEBHOOK_PENDING = Gauge(
    "quota_webhook_pending_deliveries", "Webhook deliveries waiting (stored, every replica)", ["endpoint"]
)
WEBHOOK_DEAD = Gauge(
    "quota_webhook_dead_deliveries", "Webhook deliveries given up and kept for inspection", ["endpoint"]
)
