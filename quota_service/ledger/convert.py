"""Domain :class:`~quota_service.ledger.events.Event` <-> ``quota.v1.Event``, and its proto3 JSON.

Units become each metric's own measure here (units -> tokens/images, micro-dollars -> USD,
through :func:`quota_service.policy.units.from_units`) and back. Back from the wire, an
amount is rounded to the *nearest* whole unit (half to even): the wire double of ``n``
units is the double nearest ``n`` (or ``n / 1e6`` for ``cost_usd``), so for every amount
below 2**52 units ``from_proto(to_proto(e)) == e`` exactly. (Rounding up, as requests do,
would be wrong for the negative differences of CORRECTED records.)

JSON is the proto3 JSON mapping (``google.protobuf.json_format``): lowerCamelCase names,
enums by name, int64 as strings, default values left out; :func:`event_to_json` writes it
compact with sorted keys, so the same event always gives the same bytes (the webhook body).
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal
from typing import cast

from google.protobuf import json_format

from quota.v1 import events_pb2, quota_pb2
from quota_service.errors import InvalidRequest
from quota_service.ledger.events import Event, EventKind, LimitSnapshot, Threshold
from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.units import from_units, scale
from quota_service.policy.windows import Window

__all__ = ["event_from_json", "event_from_proto", "event_to_json", "event_to_proto"]

_LIMIT_KIND = {
    LimitKind.TIER: quota_pb2.LIMIT_KIND_TIER,
    LimitKind.OVERRIDE: quota_pb2.LIMIT_KIND_OVERRIDE,
    LimitKind.HARD_STOP: quota_pb2.LIMIT_KIND_HARD_STOP,
    LimitKind.GLOBAL: quota_pb2.LIMIT_KIND_GLOBAL,
}
_LIMIT_KIND_BACK = {v: k for k, v in _LIMIT_KIND.items()}


def _units(metric: str, value: float) -> int:
    return int((Decimal(repr(float(value))) * scale(metric)).to_integral_value(rounding=ROUND_HALF_EVEN))


def _amounts_to_wire(amounts: dict[str, int]) -> dict[str, float]:
    return {metric: from_units(metric, units) for metric, units in amounts.items()}


def _amounts_from_wire(amounts: dict[str, float]) -> dict[str, int]:
    return {metric: _units(metric, value) for metric, value in amounts.items()}


# The enum numbers are the contract's on both sides (EventKind, Threshold, Decision); the
# stubs type proto enums as their own int subclasses, hence the casts.
def _decision(decision: Decision | None) -> quota_pb2.Decision:
    return quota_pb2.DECISION_UNSPECIFIED if decision is None else cast(quota_pb2.Decision, int(decision))


def _limit_to_proto(limit: LimitSnapshot) -> quota_pb2.LimitStatus:
    metric = limit.metric
    return quota_pb2.LimitStatus(
        metric=metric,
        window=limit.window.value,
        used=from_units(metric, limit.used),
        held=from_units(metric, limit.held),
        max=from_units(metric, limit.max_units),
        remaining=from_units(metric, limit.remaining),
        ratio=limit.ratio,
        resets_at=limit.resets_at,
        kind=_LIMIT_KIND[limit.kind],
        decision=_decision(limit.decision),
        warn_at=0.0 if limit.warn_at is None else float(limit.warn_at),
        block_at=1.0 if limit.block_at is None else float(limit.block_at),
    )


def _limit_from_proto(msg: quota_pb2.LimitStatus) -> LimitSnapshot:
    if msg.kind not in _LIMIT_KIND_BACK:
        raise InvalidRequest("limit.kind must be set")
    try:
        window = Window(msg.window)
    except ValueError as exc:
        raise InvalidRequest(f"limit.window {msg.window!r} is not a window") from exc
    kind = _LIMIT_KIND_BACK[msg.kind]
    thresholds = kind in (LimitKind.TIER, LimitKind.OVERRIDE)
    return LimitSnapshot(
        metric=msg.metric,
        window=window,
        used=_units(msg.metric, msg.used),
        held=_units(msg.metric, msg.held),
        max_units=_units(msg.metric, msg.max),
        resets_at=msg.resets_at,
        kind=kind,
        decision=Decision(msg.decision) if msg.decision else None,
        warn_at=Decimal(repr(msg.warn_at)) if thresholds else None,
        block_at=Decimal(repr(msg.block_at)) if thresholds else None,
    )


def event_to_proto(event: Event) -> events_pb2.Event:
    msg = events_pb2.Event(
        id=event.id,
        kind=cast(events_pb2.EventKind, int(event.kind)),
        at_ms=event.at_ms,
        subject=event.subject,
        tier=event.tier,
        feature=event.feature,
        provider=event.provider,
        model=event.model,
        request_id=event.request_id,
        reservation_id=event.reservation_id,
        estimate=_amounts_to_wire(event.estimate),
        actual=_amounts_to_wire(event.actual),
        cost_usd=from_units("cost_usd", event.cost_micros),
        decision=_decision(event.decision),
        reason=quota_pb2.REASON_UNSPECIFIED
        if event.reason is None
        else cast(quota_pb2.Reason, quota_pb2.Reason.Value(event.reason.value)),
        threshold=(
            events_pb2.THRESHOLD_UNSPECIFIED
            if event.threshold is None
            else cast(events_pb2.Threshold, int(event.threshold))
        ),
        policy_version=event.policy_version,
        actor=event.actor,
        detail=event.detail,
    )
    if event.limit is not None:
        msg.limit.CopyFrom(_limit_to_proto(event.limit))
    return msg


def event_from_proto(msg: events_pb2.Event) -> Event:
    """The domain event of a wire message; :class:`InvalidRequest` when it cannot be one
    (no kind, an unknown enum number, a bad id or detail)."""
    try:
        kind = EventKind(msg.kind)
        decision = Decision(msg.decision) if msg.decision else None
        reason = Reason(quota_pb2.Reason.Name(msg.reason)) if msg.reason else None
        threshold = Threshold(msg.threshold) if msg.threshold else None
        return Event(
            id=msg.id,
            kind=kind,
            at_ms=msg.at_ms,
            subject=msg.subject,
            tier=msg.tier,
            feature=msg.feature,
            provider=msg.provider,
            model=msg.model,
            request_id=msg.request_id,
            reservation_id=msg.reservation_id,
            estimate=_amounts_from_wire(dict(msg.estimate)),
            actual=_amounts_from_wire(dict(msg.actual)),
            cost_micros=_units("cost_usd", msg.cost_usd),
            decision=decision,
            reason=reason,
            limit=_limit_from_proto(msg.limit) if msg.HasField("limit") else None,
            threshold=threshold,
            policy_version=msg.policy_version,
            actor=msg.actor,
            detail=msg.detail,
        )
    except InvalidRequest:
        raise
    except ValueError as exc:
        raise InvalidRequest(f"not a valid event: {exc}") from exc


def event_to_json(event: Event) -> bytes:
    """The event in the proto3 JSON mapping, compact, keys sorted, UTF-8: stable bytes."""
    obj = json_format.MessageToDict(event_to_proto(event))
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_from_json(data: bytes | str) -> Event:
    """The event of its proto3 JSON; unknown fields are ignored (a newer writer's additions)."""
    msg = events_pb2.Event()
    try:
        json_format.Parse(data, msg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"not a valid event JSON: {exc}") from exc
    return event_from_proto(msg)
