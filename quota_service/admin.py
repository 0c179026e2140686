"""The admin core: tiers, overrides, emergency stops, policies, usage and the audit log.

What :class:`~quota_service.server.admin.AdminServicer` calls; no transport in it (no
``grpc``), and no Redis either: the store is the :class:`AdminStore` protocol
(:class:`quota_service.store.admin_store.RedisAdminStore` on Redis).

Guarantees:

* Every change (SetTier, SetOverride, DeleteOverride, EmergencyStop, ResumeStop,
  ReloadPolicies, ResetUsage) is appended to the audit log with who (the credential's
  fingerprint, never the credential), when (unix ms), what, before, after (JSON) and why.
  The change is made first; an audit entry that cannot be written is logged as an error
  with the whole entry (and every entry is also written to the server log), the change stands.
  Each entry (stored or not) is then handed to the ``audit_sink``, if any: ``serve`` turns
  every entry into one ADMIN_CHANGE or STOP_CHANGED event in the ledger
  (:mod:`quota_service.ledger.admin_events`, :mod:`quota_service.server.audit_relay`).
* After every write to a subject's config, this replica's config cache forgets the subject,
  so its next request sees the change; every other replica forgets it when the write's
  notice reaches it (``config_write.lua`` publishes it; the stop watcher follows the
  channel), and in any case a plan built from a stale config is caught by the config version
  the reserve script checks atomically (one retry, never a wrong decision).
* Every ``reason`` is checked before anything is written (:func:`validate_reason`): at most
  :data:`MAX_REASON_BYTES` bytes of UTF-8, newlines allowed, no other control character
  (NUL, ESC, tab, CR, DEL, C1). Format characters (right-to-left marks, bidi isolates) stay
  allowed, since right-to-left text needs them; ``quotactl`` shows them escaped.
* Amounts cross this module in the metric's own measure on the way in (``max`` of an
  override: US dollars for ``cost_usd``, whole counts otherwise) and leave it in whole
  units (micro-dollars for ``cost_usd``): the conversion is exact or refused, like the
  policy's own caps (:func:`override_units`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from quota_service.clock import Clock, to_ms
from quota_service.errors import InvalidRequest, NotFound, PolicyError, StoreDataError, StoreUnavailable
from quota_service.lifecycle.diff import PolicyDiff, Standing, diff_policies, standing, standing_counters
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.domain import CounterRef, Decision, OverrideRecord, SubjectConfig
from quota_service.policy.engine import LimitReport
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.units import MAX_UNITS, exact_units, from_units, validate_metric_name
from quota_service.policy.validation import (
    canonical_name,
    validate_name,
    validate_reason,
    validate_subject,
)
from quota_service.policy.windows import WINDOW_ORDER, Window, window_span
from quota_service.quotas import Quotas
from quota_service.reload import PolicyStatus

log = logging.getLogger(__name__)

#: TopUsage's ``n`` when the caller gives 0, and the most it may ask for.
DEFAULT_TOP_N = 10
MAX_TOP_N = 1000
#: ListAudit's ``limit`` when the caller gives 0, and the most it may ask for.
DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_LIMIT = 1000
#: The longest override TTL (seconds): ten years. Longer is "until deleted" (ttl 0).
MAX_OVERRIDE_TTL_SECONDS = 10 * 366 * 86_400
#: A subject stays in the override index this long after its last override write even when
#: it has no override left (seconds), so pruning the index never races a write in flight.
OVERRIDE_INDEX_GRACE_SECONDS = 60
#: Subjects whose overrides are read at once by ListOverrides of every subject.
LIST_CONCURRENCY = 32
#: ``reload --dry-run``: the most subjects read from each top-spenders board (one per metric
#: and window the candidate policy caps per subject): the active subjects evaluated.
PREVIEW_SUBJECTS_PER_BOARD = 1000
#: The longest ``reason`` of an admin write (bytes of UTF-8): a sentence or a ticket
#: reference. Every reason is read back by everyone: an audit entry holds it up to three
#: times (the entry, the before/after JSON) and ListOverrides lists every override's; one
#: megabyte reason made ListAudit and ListOverrides fail with RESOURCE_EXHAUSTED (a


class AuditAction(enum.StrEnum):
    SET_TIER = "SetTier"
    SET_OVERRIDE = "SetOverride"
    DELETE_OVERRIDE = "DeleteOverride"
    EMERGENCY_STOP = "EmergencyStop"
    RESUME_STOP = "ResumeStop"
    RELOAD_POLICIES = "ReloadPolicies"
    RESET_USAGE = "ResetUsage"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit log entry. ``at_ms``: unix milliseconds. ``actor``: the credential's
    fingerprint (``token:<12 hex>``) or ``anonymous`` (insecure admin). ``target``: what
    was changed (the subject, ``SCOPE:target`` of a stop, the policy path). ``subject``:
    the subject concerned, ``""`` when none (ListAudit filters on it). ``before`` /
    ``after``: JSON texts (``null`` when nothing). ``entry_id``: the stream id, ``""``
    before it is stored."""

    at_ms: int
    actor: str
    action: str
    target: str
    subject: str
    before: str
    after: str
    reason: str
    entry_id: str = ""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One subject's counter in a window: ``used`` and ``held`` in whole units."""

    subject: str
    used: int
    held: int


class AdminStore(Protocol):
    """What the admin core needs of the store. Every method may raise
    :class:`StoreUnavailable`; none may hang past its deadline."""

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig: ...

    async def set_tier(self, subject: str, tier: str | None) -> str | None:
        """Assign (``None``: unassign); returns the tier assigned before. Bumps the config version."""
        ...

    async def set_override(self, record: OverrideRecord) -> None: ...

    async def delete_override(self, subject: str, metric: str, window: Window) -> bool: ...

    async def note_overridden(self, subject: str, now_s: int) -> None:
        """Record ``subject`` in the index of subjects with overrides (before writing one)."""
        ...

    async def overridden_subjects(self) -> list[str]: ...

    async def prune_overridden(self, subject: str, written_before_s: int) -> None:
        """Drop ``subject`` from the index unless it was noted at or after ``written_before_s``."""
        ...

    async def put_stop(self, stop: EmergencyStop) -> EmergencyStop | None:
        """Store (or replace) a stop and announce it; returns the one it replaced."""
        ...

    async def delete_stop(self, scope: StopScope, target: str) -> EmergencyStop | None:
        """Remove a stop and announce it; returns the removed one (``None``: there was none)."""
        ...

    async def list_stops(self) -> list[EmergencyStop]: ...

    async def append_audit(self, record: AuditRecord) -> str: ...

    async def list_audit(self, limit: int, subject: str) -> list[AuditRecord]:
        """Newest first, at most ``limit``; only entries about ``subject`` unless it is ``""``."""
        ...

    async def reset_usage(self, subject: str, metric: str | None, window: Window | None) -> dict[str, int]:
        """Set ``used`` to 0 on every stored counter of ``subject`` (of ``metric`` / ``window``
        when given), ``held`` untouched. Returns ``{"<metric>:<window>:<window_id>": used before}``
        for each counter whose ``used`` was above 0."""
        ...

    async def top_usage(self, metric: str, window: Window, window_id: str, n: int) -> list[UsageRow]:
        """The ``n`` subjects with the highest ``used`` of one concrete window (ties: higher
        ``held``, then subject). An O(keys) scan of every master."""
        ...


class StopRefresher(Protocol):
    async def refresh(self) -> None:
        """Reload this replica's stop cache now (raises :class:`StoreUnavailable`)."""
        ...


@dataclass(frozen=True, slots=True)
class TierChange:
    subject: str
    tier: str  # "" = unassigned (the policy's default applies)
    previous_tier: str  # "" = none was assigned


@dataclass(frozen=True, slots=True)
class SubjectView:
    """``tier``: the tier in force (the default when none, or a removed one, is assigned);
    ``tier_assigned``: an existing tier is assigned. ``stops``: every stop that covers, or
    may cover, the subject's requests (GLOBAL, its SUBJECT and TIER stops, every PROVIDER
    and FEATURE stop). ``limits``: every per-subject limit in its current window."""

    subject: str
    tier: str
    tier_assigned: bool
    overrides: tuple[OverrideRecord, ...]
    stops: tuple[EmergencyStop, ...]
    limits: tuple[LimitReport, ...]


@dataclass(frozen=True, slots=True)
class AtRisk:
    """A subject the candidate policy would answer WARN or DENY now (``standing``), and
    what the policy in force answers it (``live_decision``)."""

    standing: Standing
    live_decision: Decision


@dataclass(frozen=True, slots=True)
class ReloadPreview:
    """``reload --dry-run``: the files' policy against the one in force, swapped nothing.
    ``at_risk``: DENY first, then by how far past their line, then by subject."""

    diff: PolicyDiff
    at_risk: tuple[AtRisk, ...]
    subjects_checked: int
    status: PolicyStatus


@dataclass(frozen=True, slots=True)
class TopUsage:
    metric: str
    window: Window
    window_start: int  # unix seconds
    entries: tuple[UsageRow, ...]


# -- pure validation (no I/O) -----------------------------------------------------------------


def parse_window(text: str, *, field: str = "window") -> Window:
    """``minute`` / ``hour`` / ``day`` / ``month``; :class:`InvalidRequest` otherwise."""
    try:
        return Window(text)
    except ValueError:
        raise InvalidRequest(
            f"{field} {text!r} is not valid: one of {', '.join(w.value for w in WINDOW_ORDER)}"
        ) from None


def override_units(metric: str, amount: float) -> int:
    """An override's ``max`` as whole units, exactly, with the policy caps' rule: ``cost_usd``
    in US dollars becomes micro-dollars and must be a whole number of them; every other
    metric must be a whole number. Negative, NaN, infinite or too large: :class:`InvalidRequest`."""
    if isinstance(amount, bool) or not isinstance(amount, int | float) or math.isnan(amount) or math.isinf(amount):
        raise InvalidRequest(f"max must be a finite number, got {amount!r}")
    if amount < 0:
        raise InvalidRequest(f"max must not be negative, got {amount!r}")
    try:
        # repr() of a double is the shortest text that reads back as it: 25.5 -> "25.5", exactly.
        exact = Decimal(repr(float(amount)))
    except InvalidOperation as exc:  # pragma: no cover - repr(float) is always a valid Decimal
        raise InvalidRequest(f"max {amount!r} is not a number") from exc
    units = exact_units(metric, exact)
    if units is None:
        what = "whole micro-dollars (at most 6 decimals)" if metric == "cost_usd" else f"a whole number of {metric}"
        raise InvalidRequest(f"max {amount!r} for {metric} must be {what}")
    if units > MAX_UNITS:
        raise InvalidRequest(f"max {amount!r} for {metric} is too large")
    return units


def override_expiry(ttl_seconds: int, now_s: int) -> int:
    """``expires_at`` (unix seconds) of an override set now with ``ttl_seconds`` (0 = never)."""
    if ttl_seconds < 0:
        raise InvalidRequest(f"ttl_seconds must not be negative, got {ttl_seconds}")
    if ttl_seconds > MAX_OVERRIDE_TTL_SECONDS:
        raise InvalidRequest(f"ttl_seconds must be at most {MAX_OVERRIDE_TTL_SECONDS} (or 0: until deleted)")
    return 0 if ttl_seconds == 0 else now_s + ttl_seconds


def validate_stop(scope: StopScope | None, target: str, policy: CompiledPolicy | None = None) -> tuple[StopScope, str]:
    """A stop's scope and target: GLOBAL takes no target, every other scope needs one
    (a name as for subjects, features, providers; PROVIDER and FEATURE targets in their
    canonical form, as requests are compared); a TIER stop must name a tier of
    ``policy`` (when given), so a typo never gives the false comfort of a stop that stops nothing."""
    if scope is None:
        raise InvalidRequest("scope is required: GLOBAL, PROVIDER, FEATURE, TIER or SUBJECT")
    if scope is StopScope.GLOBAL:
        if target:
            raise InvalidRequest("a GLOBAL stop takes no target")
        return scope, ""
    if not target:
        raise InvalidRequest(f"a {scope.value} stop needs a target")
    if scope in (StopScope.PROVIDER, StopScope.FEATURE):
        # Compared with the request's canonical names: a stop on "OpenAI" stops "openai".
        target = canonical_name("target", target)
    elif scope is StopScope.SUBJECT:
        validate_subject(target, field_name="target")
    else:
        validate_name("target", target)
    if scope is StopScope.TIER and policy is not None and target not in policy.tiers:
        raise NotFound(f"tier {target!r} does not exist; tiers: {', '.join(sorted(policy.tiers))}")
    return scope, target


def stop_label(scope: StopScope, target: str) -> str:
    """``GLOBAL`` or ``SCOPE:target``: the audit target and the stop's field in the store."""
    return scope.value if scope is StopScope.GLOBAL else f"{scope.value}:{target}"


def stop_concerns(stop: EmergencyStop, subject: str, tier: str) -> bool:
    """Whether ``stop`` covers, or may cover, requests of ``subject`` in ``tier``: GLOBAL,
    this subject's or this tier's stops, and every PROVIDER and FEATURE stop (they apply
    to whichever of its requests use that provider or feature)."""
    if stop.scope is StopScope.SUBJECT:
        return stop.target == subject
    if stop.scope is StopScope.TIER:
        return stop.target == tier
    return True


def validate_tier(policy: CompiledPolicy, tier: str) -> str:
    """A tier to assign: ``""`` (unassign) or a tier of the current policy (:class:`NotFound`
    naming the tiers otherwise)."""
    if tier and tier not in policy.tiers:
        raise NotFound(f"tier {tier!r} does not exist; tiers: {', '.join(sorted(policy.tiers))}")
    return tier


def top_n(n: int) -> int:
    if n < 0 or n > MAX_TOP_N:
        raise InvalidRequest(f"n must be between 1 and {MAX_TOP_N} (0: {DEFAULT_TOP_N})")
    return n or DEFAULT_TOP_N


def audit_limit(limit: int) -> int:
    if limit < 0 or limit > MAX_AUDIT_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT_LIMIT} (0: {DEFAULT_AUDIT_LIMIT})")
    return limit or DEFAULT_AUDIT_LIMIT


def override_json(record: OverrideRecord | None) -> dict[str, Any] | None:
    """An override for the audit log, ``max`` in the metric's own measure (USD for cost_usd)."""
    if record is None:
        return None
    return {
        "metric": record.metric,
        "window": record.window.value,
        "max": from_units(record.metric, record.max_units),
        "expires_at": record.expires_at,
        "reason": record.reason,
    }


def stop_json(stop: EmergencyStop | None) -> dict[str, Any] | None:
    if stop is None:
        return None
    return {
        "scope": stop.scope.value,
        "target": stop.target,
        "reason": stop.reason,
        "created_at": stop.created_at,
        "created_by": stop.created_by,
        **({"expires_at": stop.expires_at} if stop.expires_at else {}),
    }


def _json(value: object) -> str:
    # ensure_ascii=False: a reason's non-ASCII text stays as it is (UTF-8 on the wire), not
    # six bytes of \uXXXX per character, so a page of audit entries stays within its bounds.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- the core ---------------------------------------------------------------------------------


class Admin:
    """The admin plane over a live policy, the quota path (for its config cache and usage
    reports) and an :class:`AdminStore`. ``stops``: this replica's stop cache, refreshed
    right after a stop changes (other replicas follow within a second by themselves).

    Every method that changes something takes ``actor`` (who, for the audit log) and
    ``reason`` (why, free text) keyword arguments."""

    def __init__(
        self,
        *,
        quotas: Quotas,
        store: AdminStore,
        stops: StopRefresher | None = None,
        clock: Clock | None = None,
        audit_sink: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        self.quotas = quotas
        self.store = store
        self.stops = stops
        self.clock = clock or quotas.clock
        #: Told of every audit entry after it is appended (``entry_id`` ``""``: it could not
        #: be stored). Must not block: it schedules its work (the event relay's wake-up).
        self.audit_sink = audit_sink

    @property
    def policy(self) -> CompiledPolicy:
        return self.quotas.policy.current

    def _now_ms(self) -> int:
        return to_ms(self.clock.now())

    # -- audit --------------------------------------------------------------------------

    async def _audit(
        self,
        action: AuditAction,
        *,
        actor: str,
        target: str,
        subject: str,
        before: object,
        after: object,
        reason: str,
    ) -> None:
        record = AuditRecord(
            at_ms=self._now_ms(),
            actor=actor,
            action=action.value,
            target=target,
            subject=subject,
            before=_json(before),
            after=_json(after),
            reason=reason,
        )
        log.info(
            "audit: %s %s by %s: %s -> %s (reason: %s)",
            record.action,
            record.target,
            record.actor,
            record.before,
            record.after,
            record.reason or "-",
        )
        try:
            record = replace(record, entry_id=await self.store.append_audit(record))
        except (StoreUnavailable, StoreDataError) as exc:
            log.error("audit entry NOT stored (%s); the change stands: %s", exc, record)
        if self.audit_sink is not None:
            try:
                self.audit_sink(record)
            except Exception:  # the change stands whatever the sink does
                log.exception("the audit sink failed on %s", record)

    async def list_audit(self, *, limit: int = 0, subject: str = "") -> list[AuditRecord]:
        """The newest ``limit`` entries (0: 50, at most 1000), newest first; only those about
        ``subject`` when given (a bounded scan back through the stream)."""
        if subject:
            validate_subject(subject)
        return await self.store.list_audit(audit_limit(limit), subject)

    # -- tiers ----------------------------------------------------------------------------

    async def set_tier(self, subject: str, tier: str, *, actor: str, reason: str = "") -> TierChange:
        """Assign ``tier`` (a tier of the current policy; ``""``: unassign, the default applies).
        In force for the subject's next request on every replica."""
        validate_subject(subject)
        validate_tier(self.policy, tier)
        validate_reason(reason)
        previous = await self.store.set_tier(subject, tier or None)
        self.quotas.configs.forget(subject)
        await self._audit(
            AuditAction.SET_TIER,
            actor=actor,
            target=subject,
            subject=subject,
            before={"tier": previous},
            after={"tier": tier or None},
            reason=reason,
        )
        return TierChange(subject, tier, previous or "")

    async def get_subject(self, subject: str) -> SubjectView:
        """Tier, overrides, the stops concerning the subject and its limits now."""
        validate_subject(subject)
        config, usage, stops = await asyncio.gather(
            self.store.subject_config(subject, self._now_ms()),
            self.quotas.usage(subject),
            self.store.list_stops(),
        )
        policy = self.policy
        assigned = config.tier is not None and config.tier in policy.tiers
        return SubjectView(
            subject=subject,
            tier=usage.tier,
            tier_assigned=assigned,
            overrides=config.overrides,
            stops=tuple(s for s in stops if stop_concerns(s, subject, usage.tier)),
            limits=usage.limits,
        )

    # -- overrides --------------------------------------------------------------------------

    async def set_override(
        self,
        subject: str,
        metric: str,
        window: str,
        amount: float,
        ttl_seconds: int = 0,
        *,
        actor: str,
        reason: str = "",
    ) -> OverrideRecord:
        """Cap ``metric`` per ``window`` for ``subject`` at ``amount`` (the metric's own measure:
        USD for ``cost_usd``), replacing the tier's cap there (or adding one), for
        ``ttl_seconds`` (0: until deleted). Replaces an override of the same metric and window."""
        validate_subject(subject)
        validate_metric_name(metric)
        parsed_window = parse_window(window)
        units = override_units(metric, amount)
        validate_reason(reason)
        now_ms = self._now_ms()
        now_s = now_ms // 1000
        record = OverrideRecord(
            subject=subject,
            metric=metric,
            window=parsed_window,
            max_units=units,
            expires_at=override_expiry(ttl_seconds, now_s),
            reason=reason,
            created_at=now_s,
            created_by=actor,
        )
        before = _find_override(await self.store.subject_config(subject, now_ms), metric, parsed_window)
        # Indexed first: the index may name a subject without overrides, never miss one.
        await self.store.note_overridden(subject, now_s)
        await self.store.set_override(record)
        self.quotas.configs.forget(subject)
        await self._audit(
            AuditAction.SET_OVERRIDE,
            actor=actor,
            target=subject,
            subject=subject,
            before=override_json(before),
            after=override_json(record),
            reason=reason,
        )
        return record

    async def delete_override(self, subject: str, metric: str, window: str, *, actor: str, reason: str = "") -> bool:
        """Remove an override; ``False`` (and no audit entry) when there was no live one."""
        validate_subject(subject)
        validate_reason(reason)
        validate_metric_name(metric)
        parsed_window = parse_window(window)
        before = _find_override(await self.store.subject_config(subject, self._now_ms()), metric, parsed_window)
        deleted = await self.store.delete_override(subject, metric, parsed_window)
        if not deleted:
            return False
        self.quotas.configs.forget(subject)
        await self._audit(
            AuditAction.DELETE_OVERRIDE,
            actor=actor,
            target=subject,
            subject=subject,
            before=override_json(before),
            after=None,
            reason=reason,
        )
        return True

    async def list_overrides(self, subject: str = "") -> list[OverrideRecord]:
        """The live overrides of ``subject``, or of every subject when ``""`` (read through the
        index of subjects with overrides, one config read per indexed subject), by subject,
        metric, window. Subjects left without overrides for a while are pruned from the index."""
        now_ms = self._now_ms()
        if subject:
            validate_subject(subject)
            return list((await self.store.subject_config(subject, now_ms)).overrides)
        subjects = sorted(await self.store.overridden_subjects())
        found: list[OverrideRecord] = []
        for start in range(0, len(subjects), LIST_CONCURRENCY):
            chunk = subjects[start : start + LIST_CONCURRENCY]
            configs = await asyncio.gather(*(self.store.subject_config(s, now_ms) for s in chunk))
            for name, config in zip(chunk, configs, strict=True):
                if config.overrides:
                    found.extend(config.overrides)
                else:
                    await self.store.prune_overridden(name, now_ms // 1000 - OVERRIDE_INDEX_GRACE_SECONDS)
        return found

    # -- emergency stops ----------------------------------------------------------------------

    async def emergency_stop(
        self, scope: StopScope | None, target: str, *, actor: str, reason: str = "", ttl_seconds: int = 0
    ) -> EmergencyStop:
        """Pull a stop: every request it covers is denied (EMERGENCY_STOP) on this replica
        at once, on every replica within a second, across restarts, until :meth:`resume_stop`
        (or, with ``ttl_seconds``, until it lifts itself then: a rule's stop).
        Pulling the same scope and target again replaces its reason."""
        scope, target = validate_stop(scope, target, self.policy)
        validate_reason(reason)
        now_s = self._now_ms() // 1000
        stop = EmergencyStop(scope, target, reason, now_s, actor, now_s + ttl_seconds if ttl_seconds > 0 else 0)
        previous = await self.store.put_stop(stop)
        await self._refresh_stops()
        await self._audit(
            AuditAction.EMERGENCY_STOP,
            actor=actor,
            target=stop_label(scope, target),
            subject=target if scope is StopScope.SUBJECT else "",
            before=stop_json(previous),
            after=stop_json(stop),
            reason=reason,
        )
        return stop

    async def resume_stop(self, scope: StopScope | None, target: str, *, actor: str, reason: str = "") -> bool:
        """Lift a stop; ``False`` (and no audit entry) when no such stop was in force."""
        scope, target = validate_stop(scope, target)
        validate_reason(reason)
        previous = await self.store.delete_stop(scope, target)
        if previous is None:
            return False
        await self._refresh_stops()
        await self._audit(
            AuditAction.RESUME_STOP,
            actor=actor,
            target=stop_label(scope, target),
            subject=target if scope is StopScope.SUBJECT else "",
            before=stop_json(previous),
            after=None,
            reason=reason,
        )
        return True

    async def list_stops(self) -> list[EmergencyStop]:
        """Every stop in force, read from the store (not this replica's cache)."""
        return await self.store.list_stops()

    async def _refresh_stops(self) -> None:
        if self.stops is None:
            return
        try:
            await self.stops.refresh()
        except (StoreUnavailable, StoreDataError) as exc:  # the watcher's own loops catch up
            log.warning("could not refresh the stop cache right after a change: %s", exc)

    # -- policies -----------------------------------------------------------------------------

    def policy_status(self) -> PolicyStatus:
        return self.quotas.policy.status()

    async def reload_policies(self, *, actor: str, reason: str = "") -> tuple[bool, PolicyStatus]:
        """Load the policy files again. ``(changed, status)``; a bad file raises
        :class:`PolicyError` (recorded in the status, the log and the audit log) and the
        running policy stays. Counters are never touched."""
        validate_reason(reason)
        live = self.quotas.policy
        before = live.current.version
        target = str(live.path)
        try:
            changed = await asyncio.to_thread(live.reload)
        except PolicyError as exc:
            await self._audit(
                AuditAction.RELOAD_POLICIES,
                actor=actor,
                target=target,
                subject="",
                before={"version": before},
                after={"version": before, "error": str(exc)},
                reason=reason,
            )
            raise
        after = live.current.version
        await self._audit(
            AuditAction.RELOAD_POLICIES,
            actor=actor,
            target=target,
            subject="",
            before={"version": before},
            after={"version": after, "changed": changed},
            reason=reason,
        )
        return changed, live.status()

    async def preview_reload(self, *, per_board: int = PREVIEW_SUBJECTS_PER_BOARD) -> ReloadPreview:
        """Load and validate the files on disk without swapping (a bad file raises
        :class:`PolicyError`; nothing is recorded: a dry run changes nothing), diff them
        against the policy in force, and evaluate the active subjects under both with
        nothing asked and nothing reserved (:func:`~quota_service.lifecycle.diff.standing`).
        Active subjects: the top ``per_board`` of each top-spenders board (one per metric and
        window the candidate caps per subject, current window in its timezone) with usage
        or holds. An admin read, O(boards x per_board) store reads, never on the request path."""
        live = self.quotas.policy
        current = live.current
        candidate = await asyncio.to_thread(live.load_candidate)
        diff = diff_policies(current, candidate)
        now = self.clock.now()
        boards = sorted(
            {limit.counter for tier in candidate.tiers.values() for limit in (*tier.limits, *tier.hard_stops)},
            key=lambda counter: (counter[0], WINDOW_ORDER.index(counter[1])),
        )
        subjects: set[str] = set()
        for metric, window in boards:
            span = window_span(window, now, candidate.timezone)
            rows = await self.store.top_usage(metric, window, span.window_id, per_board)
            subjects.update(row.subject for row in rows if row.used > 0 or row.held > 0)
        ordered = sorted(subjects)
        found: list[AtRisk] = []
        for start in range(0, len(ordered), LIST_CONCURRENCY):
            chunk = ordered[start : start + LIST_CONCURRENCY]
            found.extend(
                r
                for r in await asyncio.gather(*(self._at_risk(s, current, candidate, now) for s in chunk))
                if r is not None
            )
        found.sort(key=lambda r: (-r.standing.decision, -(r.standing.deciding.ratio if r.standing.deciding else 0)))
        return ReloadPreview(diff, tuple(found), len(ordered), live.status())

    async def _at_risk(
        self, subject: str, current: CompiledPolicy, candidate: CompiledPolicy, now: datetime
    ) -> AtRisk | None:
        now_ms = to_ms(now)
        config = await self.store.subject_config(subject, now_ms)
        refs: dict[CounterRef, None] = {}
        for policy in (current, candidate):
            refs.update((c.ref, None) for c in standing_counters(policy, subject, config, now))
        values = await self.quotas.store.usage(tuple(refs), now_ms)
        after = standing(candidate, subject, config, values, now)
        if after.decision is Decision.ALLOW:
            return None
        return AtRisk(after, standing(current, subject, config, values, now).decision)

    # -- usage --------------------------------------------------------------------------------

    async def reset_usage(
        self, subject: str, metric: str = "", window: str = "", *, actor: str, reason: str = ""
    ) -> int:
        """Zero ``used`` of the subject's stored counters (every window still stored, the
        current ones included), of one ``metric`` and/or ``window`` when given; ``held`` (open
        reservations) is kept, so reservations still settle correctly. Returns how many
        counters had usage and were zeroed. Company-wide counters are never touched:
        ``__global__`` is refused, as by every admin RPC (:func:`validate_subject`)."""
        validate_subject(subject)
        validate_reason(reason)
        if metric:
            validate_metric_name(metric)
        parsed_window = parse_window(window) if window else None
        previous = await self.store.reset_usage(subject, metric or None, parsed_window)
        await self._audit(
            AuditAction.RESET_USAGE,
            actor=actor,
            target=subject,
            subject=subject,
            before={"used": {k: _display(k, v) for k, v in sorted(previous.items())}},
            after={"metric": metric or None, "window": window or None, "counters_reset": len(previous)},
            reason=reason,
        )
        return len(previous)

    async def top_usage(self, metric: str, window: str, n: int = 0) -> TopUsage:
        """The ``n`` subjects (0: 10, at most 1000) with the highest ``used`` of ``metric`` in
        the current ``window`` (the policy's timezone), ties by ``held``. ``used`` and ``held``
        are as stored: a reservation past its expiry but not yet swept still counts as held.
        An admin scan: O(keys) over every master, never on the request path."""
        validate_metric_name(metric)
        parsed_window = parse_window(window)
        count = top_n(n)
        span = window_span(parsed_window, self.clock.now(), self.policy.timezone)
        rows = await self.store.top_usage(metric, parsed_window, span.window_id, count)
        return TopUsage(metric, parsed_window, span.start, tuple(rows))


def _find_override(config: SubjectConfig, metric: str, window: Window) -> OverrideRecord | None:
    return next((o for o in config.overrides if o.metric == metric and o.window == window), None)


def _display(counter: str, used: int) -> float:
    """A reset counter's ``used`` in its metric's measure, for the audit log."""
    return from_units(counter.split(":", 1)[0], used)


__all__ = [
    "Admin",
    "AdminStore",
    "AtRisk",
    "AuditAction",
    "AuditRecord",
    "ReloadPreview",
    "StopRefresher",
    "SubjectView",
    "TierChange",
    "TopUsage",
    "UsageRow",
    "override_units",
    "parse_window",
    "stop_concerns",
    "validate_stop",
]
