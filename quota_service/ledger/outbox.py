"""Outbox entries as ledger events: what the Lua steps append, read back.

Every counter change a usage record describes is appended, by the same Lua script call, to
the outbox stream of the subject's slot (``x:{T}``, see :mod:`quota_service.store.keys`
and ``store/lua/lib.lua`` "the outbox", which documents the fields). The usage relay
(:mod:`quota_service.server.usage_relay`) reads the entries and stores the events
:func:`entry_event` makes of them. Everything an event says comes from its entry, so an
entry read twice (two relays, a retry after a ledger outage, a replica killed between the
insert and the delete) makes the same event with the same id: stored once.

========== ===================================================================================
kind       what the event says
========== ===================================================================================
COMMITTED  ``estimate`` and ``actual`` (units per metric, ``cost_usd`` included when priced),
           ``cost_micros`` = the actual's cost at the reservation's own prices; ``decision``
           ALLOW or WARN (the reservation's)
           (``detail.fail_open``: granted while Redis was unreachable, within the tier's
           ``fail_open_allowance``, charged at its estimate once Redis answered again)
RELEASED   ``cost_micros`` 0; detail ``withdrawn`` when the service gave it back itself (its
           caller had been answered DENY after a store failure)
EXPIRED    never settled: charged at its estimate when its TTL passed (``at_ms``); ``actual``
           = what was charged (the estimate), ``cost_micros`` the estimate's cost
CORRECTED  a Commit (or Release) after EXPIRED: ``actual`` and ``cost_micros`` are the
           difference to what the EXPIRED record charged (may be negative); detail
           ``corrects`` = the EXPIRED record's id
DENIED     the gate refused: ``estimate`` the ask, ``reason`` and ``limit`` the deciding
           counter's (the first the gate rule denies, as the engine orders them); a denial by
           the company-wide gate has reason GLOBAL_LIMIT. Id ``den_<reservation id>``: the
           reservation id the request would have had (unique per command)
THRESHOLD  ``THRESHOLD_CROSSED``: ``limit`` (used and held just after), ``threshold``; id
           :func:`~quota_service.ledger.events.threshold_event_id` of the natural key
========== ===================================================================================

Per subject and window, the ``cost_micros`` of COMMITTED + EXPIRED + CORRECTED records add up
to the subject's ``cost_usd`` counter (and their ``actual`` to each counted metric's).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypedDict

from quota_service.ledger.errors import LedgerError
from quota_service.ledger.events import (
    Event,
    EventKind,
    LimitSnapshot,
    Threshold,
    is_event_id,
    record_id,
    threshold_event_id,
)
from quota_service.ledger.store import EventRow, amounts_json, event_of, row_of
from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, Decision, Reason
from quota_service.policy.units import COST_METRIC
from quota_service.store import keys, protocol
from quota_service.store.base import KIND_OF_LETTER, THRESHOLD_OF_LETTER
from quota_service.store.protocol import Entry

__all__ = ["EntryError", "entry_event", "entry_record"]

_KIND = {
    Entry.COMMITTED: EventKind.COMMITTED,
    Entry.RELEASED: EventKind.RELEASED,
    Entry.EXPIRED: EventKind.EXPIRED,
    Entry.CORRECTED: EventKind.CORRECTED,
}
_USAGE_ENTRY = {entry.value: kind for entry, kind in _KIND.items()}
#: Metric names whose JSON is the name in quotes (every name a policy accepts).
_PLAIN_METRIC = re.compile(r"[A-Za-z0-9_]{1,64}")
_THRESHOLD = {"warn": Threshold.WARN, "block": Threshold.BLOCK, "cap": Threshold.CAP}
_DECISION = {"w": Decision.WARN, "a": Decision.ALLOW}
#: The reason a denial by a limit of each kind gives (as the engine's judge names them).
_CAP_REASON = {LimitKind.HARD_STOP: Reason.HARD_STOP, LimitKind.GLOBAL: Reason.GLOBAL_LIMIT}


class EntryError(ValueError):
    """An outbox entry that cannot be an event (damaged, or written by an unknown version)."""


def _int(fields: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = fields.get(name, "")
    if text == "" and default is not None:
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise EntryError(f"field {name!r} is not a whole number: {text[:64]!r}") from exc


def _detail(**items: Any) -> str:
    kept = {k: v for k, v in items.items() if v not in (None, "", 0)}
    return json.dumps(kept, sort_keys=True, separators=(",", ":")) if kept else ""


def entry_event(fields: Mapping[str, str]) -> Event:
    """The event of one outbox entry (its fields as decoded strings); :class:`EntryError`
    when the entry cannot be one."""
    try:
        kind = Entry(fields.get("k", ""))
    except ValueError as exc:
        raise EntryError(f"unknown entry kind {fields.get('k', '')[:16]!r}") from exc
    try:
        if kind is Entry.THRESHOLD:
            return _threshold(fields)
        if kind is Entry.DENIED:
            return _denied(fields)
        return _usage(_KIND[kind], fields)
    except EntryError:
        raise
    except (ValueError, KeyError, IndexError) as exc:
        raise EntryError(f"{kind.name} entry: {exc}") from exc


def _common(fields: Mapping[str, str]) -> tuple[str, dict[str, str], str, int]:
    subject = fields.get("s", "")
    if not subject:
        raise EntryError("no subject")
    head = protocol.parse_head(fields.get("h", ""))
    reservation_id = ""
    if fields.get("n") and fields.get("g"):
        reservation_id = keys.ReservationName(subject, fields["n"], fields["g"]).reservation_id
    return subject, head, reservation_id, _int(fields, "t")


class _About(TypedDict):
    tier: str
    feature: str
    provider: str
    model: str
    request_id: str
    policy_version: str


def _about(head: Mapping[str, str], *, tier: str | None = None) -> _About:
    """What a record says of its request, from the request's head (``tier``: in its place)."""
    return _About(
        tier=head["tier"] if tier is None else tier,
        feature=head["feature"],
        provider=head["provider"],
        model=head["model"],
        request_id=head["request_id"],
        policy_version=head["policy_version"],
    )


def _estimate(fields: Mapping[str, str], head: Mapping[str, str]) -> tuple[dict[str, int], int]:
    estimate = protocol.parse_amounts(fields.get("e", ""))
    cost = int(head.get("cost") or 0)
    if cost:
        estimate[COST_METRIC] = cost
    return estimate, cost


def _usage(kind: EventKind, fields: Mapping[str, str]) -> Event:
    try:
        return event_of(_usage_row(kind, fields))
    except LedgerError as exc:
        raise EntryError(str(exc)) from exc


def entry_record(fields: Mapping[str, str]) -> tuple[EventRow, Event | None]:
    """The ledger row of one outbox entry, what :func:`entry_event` says in the form the
    ledger stores (the usage relay's fast path), and for a denial or a crossing its event
    too (what the rules that act on new events read). The usage records, nearly every
    entry, are made straight into their row, checked as an :class:`Event` checks them (a
    valid id, whole amounts, negative only in a CORRECTED record), with no event made.
    :class:`EntryError` when the entry cannot be a record."""
    kind = _USAGE_ENTRY.get(fields.get("k", ""))
    if kind is None:
        event = entry_event(fields)
        return row_of(event), event
    try:
        return _usage_row(kind, fields), None
    except EntryError:
        raise
    except (ValueError, KeyError, IndexError) as exc:
        raise EntryError(f"{kind.name} entry: {exc}") from exc


def _amounts_row(name: str, amounts: dict[str, int], *, signed: bool) -> str:
    """``amounts`` as the ledger's JSON text (:func:`~quota_service.ledger.store.amounts_json`),
    checked; written by hand for the plain metric names every policy has."""
    for metric, units in amounts.items():
        if not metric:
            raise EntryError(f"{name}: a metric without a name")
        if units < 0 and not signed:
            raise EntryError(f"{name}[{metric!r}] must not be negative, got {units}")
        if not _PLAIN_METRIC.fullmatch(metric):
            return amounts_json(amounts)
    return "{" + ",".join(f'"{m}":{amounts[m]}' for m in sorted(amounts)) + "}"


def _usage_row(kind: EventKind, fields: Mapping[str, str]) -> EventRow:
    subject, head, reservation_id, at_ms = _common(fields)
    if not reservation_id:
        raise EntryError("a usage record without its reservation")
    event_id = record_id(kind, reservation_id)
    if not is_event_id(event_id):
        raise EntryError(f"not a valid record id: {event_id[:64]!r}")
    estimate, estimate_cost = _estimate(fields, head)
    actual: dict[str, int] = {}
    cost = 0
    mode = fields.get("m", "")
    # detail, in the order of its sorted keys (as _detail writes it: falsy values left out)
    corrects = settled_by = ""
    fail_open = withdrawn = False
    if kind is EventKind.COMMITTED:
        actual = protocol.parse_amounts(fields.get("a", ""))
        cost = actual.get(COST_METRIC, 0)
        fail_open = mode == "fail_open"  # granted while the store was unreachable, charged at its estimate
    elif kind is EventKind.EXPIRED:
        actual, cost = dict(estimate), estimate_cost
    elif kind is EventKind.CORRECTED:
        settled = protocol.parse_amounts(fields.get("a", "")) if mode == "commit" else {}
        actual = {m: settled.get(m, 0) - estimate.get(m, 0) for m in sorted(set(settled) | set(estimate))}
        cost = actual.get(COST_METRIC, 0)
        corrects = record_id(EventKind.EXPIRED, reservation_id)
        settled_by = mode
    elif mode == "withdraw":
        withdrawn = True
    signed = kind is EventKind.CORRECTED
    if cost < 0 and not signed:
        raise EntryError(f"cost_micros must not be negative in a {kind.name} record")
    if not 0 <= at_ms < 2**63:
        raise EntryError(f"at_ms must be unix milliseconds, got {at_ms}")
    detail = [f'"corrects":{json.dumps(corrects)}'] if corrects else []
    expires, reserved = _int(fields, "x", 0), _int(fields, "c", 0)
    if expires:
        detail.append(f'"expires_at_ms":{expires}')
    if fail_open:
        detail.append('"fail_open":true')
    if reserved:
        detail.append(f'"reserved_at_ms":{reserved}')
    if settled_by:
        detail.append(f'"settled_by":{json.dumps(settled_by)}')
    if withdrawn:
        detail.append('"withdrawn":true')
    decision = _DECISION.get(fields.get("d", ""))
    return EventRow(
        id=event_id,
        kind=int(kind),
        at_ms=at_ms,
        subject=subject,
        **_about(head),
        reservation_id=reservation_id,
        estimate=_amounts_row("estimate", estimate, signed=signed),
        actual=_amounts_row("actual", actual, signed=signed),
        cost_micros=cost,
        decision=0 if decision is None else int(decision),
        reason="",
        limit_status=None,
        threshold=0,
        actor="",
        detail="{" + ",".join(detail) + "}" if detail else "",
    )


def _lines(text: str) -> list[tuple[int, int, str, LimitKind, int]]:
    """(counter index from 1, line units, threshold name, limit kind, cap) of a lines text."""
    out = []
    for item in text.split():
        index, units, label, cap = item.split(":")
        out.append((int(index), int(units), THRESHOLD_OF_LETTER[label[0]], KIND_OF_LETTER[label[1]], int(cap)))
    return out


def _denied(fields: Mapping[str, str]) -> Event:
    subject, head, reservation_id, at_ms = _common(fields)
    if not reservation_id:
        raise EntryError("a denial without the reservation id it would have had")
    estimate, _ = _estimate(fields, head)
    reason = Reason.GLOBAL_LIMIT
    limit: LimitSnapshot | None = None
    if fields.get("m") != "compensate":
        reason, limit = _deciding(subject, fields)
    return Event(
        id=f"den_{reservation_id}",
        kind=EventKind.DENIED,
        at_ms=at_ms,
        subject=subject,
        **_about(head),
        reservation_id="",
        estimate=estimate,
        decision=Decision.DENY,
        reason=reason,
        limit=limit,
        detail=_detail(would_be_reservation_id=reservation_id),
    )


def _deciding(subject: str, fields: Mapping[str, str]) -> tuple[Reason, LimitSnapshot | None]:
    """The first counter the gate rule denies, and the limit on it that does (the lowest
    block line reached, else the lowest cap the ask passes)."""
    refs = protocol.parse_layout(subject, fields.get("q", ""))
    values = protocol.parse_values(fields.get("v", ""))
    charges = [tuple(int(x) for x in item.split(":")) for item in fields.get("r", "").split(",") if item]
    lines = _lines(fields.get("L", ""))
    for i, (ref, value, (ask, cap, block)) in enumerate(zip(refs, values, charges, strict=True), start=1):
        uh = value.used + value.held
        if ask <= 0 or not (uh >= block or uh + ask > cap):
            continue
        blocked = uh >= block  # the engine's order: a block line reached, else a cap passed
        wanted = "block" if blocked else "cap"
        candidates = [
            (units, kind, max_units)
            for index, units, threshold, kind, max_units in lines
            if index == i and threshold == wanted and (uh >= units if blocked else uh + ask > units)
        ]
        kind, max_units = LimitKind.TIER, cap
        if candidates:
            _, kind, max_units = min(candidates, key=lambda c: c[0])
        reason = _CAP_REASON.get(kind, Reason.BLOCK_THRESHOLD if blocked else Reason.LIMIT_EXCEEDED)
        return reason, _snapshot(ref, value.used, value.held, max_units, kind, Decision.DENY)
    return Reason.LIMIT_EXCEEDED, None


def _snapshot(
    ref: CounterRef, used: int, held: int, max_units: int, kind: LimitKind, decision: Decision | None
) -> LimitSnapshot:
    return LimitSnapshot(
        metric=ref.metric,
        window=ref.window,
        used=used,
        held=held,
        max_units=max_units,
        resets_at=ref.resets_at,
        kind=kind,
        decision=decision,
    )


def _threshold(fields: Mapping[str, str]) -> Event:
    subject, head, _, at_ms = _common(fields)
    (ref,) = protocol.parse_layout(subject, fields.get("q", ""))
    label = fields.get("l", "")
    if len(label) != 2 or label[0] not in THRESHOLD_OF_LETTER or label[1] not in KIND_OF_LETTER:
        raise EntryError(f"not a threshold label: {label[:8]!r}")
    threshold = _THRESHOLD[THRESHOLD_OF_LETTER[label[0]]]
    kind = KIND_OF_LETTER[label[1]]
    line, cap = _int(fields, "L"), _int(fields, "M")
    limit = _snapshot(ref, _int(fields, "u"), _int(fields, "o"), cap, kind, None)
    if cap and threshold is not Threshold.CAP:  # the line as a fraction of the cap (to 1/10,000)
        at = (Decimal(line) / Decimal(cap)).quantize(Decimal("0.0001"))
        if threshold is Threshold.WARN:
            limit = dataclasses.replace(limit, warn_at=at)
        else:
            limit = dataclasses.replace(limit, block_at=at)
    return Event(
        id=threshold_event_id(subject, kind, ref.metric, ref.window, ref.window_id, threshold),
        kind=EventKind.THRESHOLD_CROSSED,
        at_ms=at_ms,
        subject=subject,
        **_about(head, tier="" if subject == GLOBAL_SCOPE else None),
        limit=limit,
        threshold=threshold,
        detail=_detail(line_units=line, window_id=ref.window_id),
    )
