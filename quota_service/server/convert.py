"""Domain values <-> quota.v1 messages. Units become the metric's own measure here
(micro-dollars -> USD) and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from quota.v1 import admin_pb2, quota_pb2
from quota_service.admin import AtRisk
from quota_service.lifecycle.diff import PolicyDiff
from quota_service.lifecycle.shadow import LoadStatus, ShadowStatus
from quota_service.policy.compiled import Limit, LimitKind
from quota_service.policy.domain import GLOBAL_SCOPE, Decision, Reason
from quota_service.policy.engine import LimitReport
from quota_service.policy.units import from_units
from quota_service.policy.windows import window_span
from quota_service.quotas import ReserveAnswer
from quota_service.reload import PolicyStatus
from quota_service.store.base import SettledCounter

DECISION = {
    Decision.ALLOW: quota_pb2.ALLOW,
    Decision.WARN: quota_pb2.WARN,
    Decision.DENY: quota_pb2.DENY,
}
REASON: dict[Reason, quota_pb2.Reason] = {reason: quota_pb2.Reason.Value(reason.value) for reason in Reason}  # type: ignore[misc]
KIND = {
    LimitKind.TIER: quota_pb2.LIMIT_KIND_TIER,
    LimitKind.OVERRIDE: quota_pb2.LIMIT_KIND_OVERRIDE,
    LimitKind.HARD_STOP: quota_pb2.LIMIT_KIND_HARD_STOP,
    LimitKind.GLOBAL: quota_pb2.LIMIT_KIND_GLOBAL,
}


@dataclass(frozen=True, slots=True)
class _LimitFields:
    """What a LimitStatus says of its limit alone (the same for every request it judges)."""

    limit: Limit
    window: str
    max: float
    kind: quota_pb2.LimitKind
    warn_at: float
    block_at: float


#: id(limit) -> its fields, for the limits of the policies in use (bounded: a reload
#: brings new limit objects; the table is cleared when it grows past this).
_LIMIT_FIELDS: dict[int, _LimitFields] = {}
_LIMIT_FIELDS_MAX = 4096


def _limit_fields(limit: Limit) -> _LimitFields:
    fields = _LIMIT_FIELDS.get(id(limit))
    if fields is None or fields.limit is not limit:  # a new limit (an id may be reused)
        thresholds = limit.thresholds
        fields = _LimitFields(
            limit=limit,
            window=limit.window.value,
            max=from_units(limit.metric, limit.max_units),
            kind=KIND[limit.kind],
            warn_at=float(thresholds.warn_at) if thresholds else 0.0,
            block_at=float(thresholds.block_at) if thresholds else 1.0,
        )
        if len(_LIMIT_FIELDS) >= _LIMIT_FIELDS_MAX:
            _LIMIT_FIELDS.clear()
        _LIMIT_FIELDS[id(limit)] = fields
    return fields


def limit_status(report: LimitReport) -> quota_pb2.LimitStatus:
    limit = report.limit
    metric = limit.metric
    fields = _limit_fields(limit)
    used, held = report.used, report.held
    return quota_pb2.LimitStatus(
        metric=metric,
        window=fields.window,
        used=from_units(metric, used),
        held=from_units(metric, held),
        max=fields.max,
        remaining=from_units(metric, max(0, limit.max_units - used - held)),  # LimitReport.remaining
        ratio=report.ratio,
        resets_at=report.ref.resets_at,
        kind=fields.kind,
        decision=DECISION[report.decision],
        warn_at=fields.warn_at,
        block_at=fields.block_at,
    )


def settled_window(settled: SettledCounter, *, now: int, tz: tzinfo) -> quota_pb2.SettledWindow:
    """One window a Commit settled on: ``amount`` is what it added to ``used`` there (the
    correction, for a late commit after expiry), in the metric's own measure."""
    ref = settled.counter
    start = window_span(ref.window, datetime.fromtimestamp(ref.resets_at - 1, UTC), tz).start
    return quota_pb2.SettledWindow(
        metric=ref.metric,
        window=ref.window.value,
        window_start=start,
        resets_at=ref.resets_at,
        current=ref.resets_at > now,
        lost=settled.lost,
        amount=from_units(ref.metric, settled.used_delta),
        company_wide=ref.scope == GLOBAL_SCOPE,
    )


def reserve_response(answer: ReserveAnswer) -> quota_pb2.CheckAndReserveResponse:
    outcome = answer.outcome
    response = quota_pb2.CheckAndReserveResponse(
        decision=DECISION[outcome.decision],
        reason=REASON[outcome.reason],
        message=outcome.message,
        reservation_id=answer.reservation_id,
        tier=answer.tier,
        limits=[limit_status(r) for r in outcome.limits],
        policy_version=answer.policy_version,
        retry_after_seconds=outcome.retry_after_seconds,
        reservation_expires_at=answer.expires_at,
        replayed=answer.replayed,
    )
    if outcome.deciding is not None:
        response.limit.CopyFrom(limit_status(outcome.deciding))
    return response


def policy_status(status: PolicyStatus) -> admin_pb2.PolicyStatus:
    message = admin_pb2.PolicyStatus(
        version=status.version,
        loaded_at=status.loaded_at,
        files=list(status.files),
        last_error=status.last_error,
        last_error_at=status.last_error_at,
        tiers=list(status.tiers),
        default_tier=status.default_tier,
    )
    if status.last_change is not None:
        message.last_change.CopyFrom(
            admin_pb2.PolicyChange(diff=policy_diff(status.last_change.diff), at=status.last_change.at)
        )
    return message


def policy_diff(diff: PolicyDiff) -> admin_pb2.PolicyDiff:
    return admin_pb2.PolicyDiff(
        old_version=diff.old_version,
        new_version=diff.new_version,
        changes=[
            admin_pb2.PolicyChangeEntry(
                tier=c.tier,
                category=c.category.value,
                key=c.key,
                change=c.kind,
                before=c.before or "",
                after=c.after or "",
                shown_before=c.shown_before,
                shown_after=c.shown_after,
            )
            for c in diff.changes
        ],
        tiers_added=list(diff.tiers_added),
        tiers_removed=list(diff.tiers_removed),
        summary=diff.summary(),
    )


def at_risk(entry: AtRisk) -> admin_pb2.SubjectAtRisk:
    found = entry.standing
    message = admin_pb2.SubjectAtRisk(
        subject=found.subject,
        tier=found.tier,
        decision=DECISION[found.decision],
        reason=REASON[found.reason],
        message=found.message,
        live_decision=DECISION[entry.live_decision],
    )
    if found.deciding is not None:
        message.limit.CopyFrom(limit_status(found.deciding))
    return message


def shadow_status(shadow: ShadowStatus, loaded: LoadStatus) -> admin_pb2.ShadowStatus:
    """The shadow policy's counts (this replica) and its load status (``loaded``)."""
    return admin_pb2.ShadowStatus(
        version=shadow.version,
        files=list(shadow.files),
        loaded_at=loaded.loaded_at,
        last_error=loaded.last_error,
        decided=shadow.decided,
        divergences=[
            admin_pb2.ShadowDivergenceCount(tier=tier, reason=reason, count=count)
            for (tier, reason), count in sorted(shadow.divergences.items())
        ],
        sampled=shadow.sampled,
        dropped=shadow.dropped,
    )
