"""Prometheus metrics (served on ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("quota_decisions_total", "CheckAndReserve answers by decision and reason", ["decision", "reason"])
RPC_LATENCY = Histogram(
    "quota_rpc_seconds",
    "Time to answer an RPC",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STORE_ERRORS = Counter("quota_store_errors_total", "Redis calls that failed or timed out", ["operation"])
#: Damaged data in Redis, or a command Redis refused (StoreDataError: WRONGTYPE, a script
#: error, out of memory): a bug or a lasting condition, not an outage. ``operation``:
#: reserve | commit | release | usage | ... (incremented where it is answered, in quotas.py).
STORE_DATA_ERRORS = Counter(
    "quota_store_data_errors_total",
    "Redis calls that found damaged data or were refused (StoreDataError)",
    ["operation"],
)
GROUP_COMMIT_SHED = Counter(
    "quota_group_commit_shed_total", "Store calls refused at once because the group-commit queue was full"
)
WITHDRAWS = Counter(
    "quota_withdraws_total",
    "Background withdraws of a denied request's reservation after a store failure, by outcome",
    ["outcome"],
)
POLICY_RELOAD_FAILURES = Counter("quota_policy_reload_failures_total", "Policy reloads that failed validation")
POLICY_RELOADS = Counter("quota_policy_reloads_total", "Policy reloads that swapped in a new version")
#: Every worker of ``serve --workers N`` reads the same stops: in prometheus-client's
#: multiprocess mode the one view shows the largest live worker's value, not one per pid.
EMERGENCY_STOPS_ACTIVE = Gauge(
    "quota_emergency_stops_active", "Emergency stops currently in force", multiprocess_mode="livemax"
)
COMMITS_REFUSED = Counter(
    "quota_commits_refused_total",
    "Commits refused for review: they reported more than commit_max_ratio times the estimate",
    ["tier"],
)
#: Exceptions from inside the Redis client library that are not Redis' own answers (an
#: AttributeError from redis-py's cluster client during a failover, say): answered as an
#: outage (StoreUnavailable). ``error`` is the exception's class name.
STORE_CLIENT_FAULTS = Counter(
    "quota_store_client_faults_total",
    "Unexpected exceptions from inside the Redis client library, answered as store unavailable",
    ["operation", "error"],
)
#: Exceptions a background task (withdraws, relays, subscriptions, polls, retention) caught
#: and carried on after.
BACKGROUND_ERRORS = Counter(
    "quota_background_errors_total", "Exceptions caught by background tasks, which carried on", ["task"]
)
#: The usage outbox (Redis streams the usage relay drains into the ledger).
OUTBOX_REFUSALS = Counter(
    "quota_outbox_refusals_total",
    "Reservations refused because the usage outbox was full (the ledger store was down for long)",
)
OUTBOX_PENDING = Gauge(
    "quota_outbox_pending",
    "Usage records and events waiting in the Redis outbox for the ledger (as the last relay pass saw)",
    multiprocess_mode="livemax",
)
OUTBOX_RELAYED = Counter("quota_outbox_relayed_total", "Outbox entries stored in the ledger by this replica")
OUTBOX_LAG = Histogram(
    "quota_outbox_lag_seconds",
    "From an outbox entry's append to its storage in the ledger (one observation per stored batch: its oldest entry)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0),
)
RECORDS_DROPPED = Counter(
    "quota_records_dropped_total",
    "Records the service could not keep (denials decided without the store, buffered in memory, over the cap)",
)
REAPED = Counter("quota_reaper_sweeps_total", "Scopes whose expired reservations the reaper settled")
STORE_LOST = Gauge(
    "quota_store_lost",
    "1 while this replica fails closed because Redis lost its data (store identity gone); restore from the ledger",
    multiprocess_mode="livemax",
)
FAIL_OPEN = Counter(
    "quota_fail_open_total",
    "on_store_error: allow during an outage: requests granted within the allowance, denied past it, written back",
    ["outcome"],
)
REPLICA_WAIT_SHORT = Counter(
    "quota_redis_wait_short_total",
    "Money writes fewer replicas than --redis-wait-replicas acknowledged within --redis-wait-ms",
)
#: ``serve --shadow-policies``: requests the shadow policy decided, and those it decided
#: otherwise than the live policy, by the live tier and ``<live>-><shadow>`` (``ALLOW->DENY``).
SHADOW_DECISIONS = Counter("quota_shadow_decisions_total", "Requests the shadow policy decided (never enforced)")
SHADOW_DIVERGENCES = Counter(
    "quota_shadow_divergences_total",
    "Requests the shadow policy would have answered otherwise, by live tier and live->shadow decision",
    ["tier", "reason"],
)
