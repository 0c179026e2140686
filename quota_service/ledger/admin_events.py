"""ADMIN_CHANGE and STOP_CHANGED events from the admin plane's audit entries.

Every admin write (SetTier, SetOverride, DeleteOverride, ResetUsage, ReloadPolicies,
EmergencyStop, ResumeStop) appends one entry to the audit log (the Redis stream that
``ListAudit`` reads); the audit relay (:mod:`quota_service.server.audit_relay`) turns each
entry into one event with :func:`audit_event`. Both views stand on the same record:

* ``EmergencyStop`` / ``ResumeStop`` -> ``STOP_CHANGED``, id ``stp_<audit entry id>``;
  every other action -> ``ADMIN_CHANGE``, id ``adm_<audit entry id>``. The entry id (a
  Redis stream id, ``<unix ms>-<n>``) is unique and fixed when the entry is written, so the
  relay, a second replica's relay or a retry after a ledger outage all store the same id once.
* ``at_ms`` the entry's time, ``actor`` who (a credential fingerprint), ``subject`` the
  subject concerned (``""`` for a reload, a GLOBAL/PROVIDER/FEATURE/TIER stop), ``tier`` the
  tier assigned by SetTier or the tier a TIER stop names (webhook ``tiers`` filters match it),
  ``policy_version`` the version a reload put in force.
* ``detail`` (JSON): ``{"action", "target", "before", "after", "reason", "audit_id"}``,
  ``before``/``after`` as the audit entry has them (JSON values, not texts); for a stop also
  ``"stop": "pulled" | "lifted"``.

An entry that could not be stored in the audit log at all (Redis down during a reload) gets a
minted id instead (:func:`~quota_service.ledger.events.new_event_id`) and is written straight
to the ledger, best effort.
"""

from __future__ import annotations

import json
from typing import Any

from quota_service.ledger.events import Event, EventKind, new_event_id

__all__ = ["STOP_ACTIONS", "audit_event", "audit_event_id"]

#: Audit actions whose event is STOP_CHANGED (and whether the stop was pulled).
STOP_ACTIONS = {"EmergencyStop": "pulled", "ResumeStop": "lifted"}
_MAX_TEXT = 4096


def _kind(action: str) -> EventKind:
    return EventKind.STOP_CHANGED if action in STOP_ACTIONS else EventKind.ADMIN_CHANGE


def audit_event_id(action: str, entry_id: str) -> str:
    """``stp_<entry id>`` for a stop change, ``adm_<entry id>`` for every other change."""
    return ("stp_" if action in STOP_ACTIONS else "adm_") + entry_id


def _parsed(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text[:_MAX_TEXT]


def audit_event(
    *,
    entry_id: str,
    at_ms: int,
    actor: str,
    action: str,
    target: str,
    subject: str,
    before: str,
    after: str,
    reason: str,
) -> Event:
    """The event of one audit entry (``entry_id`` ``""``: not stored in the audit log; a
    fresh id is minted). Raises :class:`ValueError` for an entry that cannot be an event
    (an id with characters an event id may not carry)."""
    kind = _kind(action)
    before_value, after_value = _parsed(before), _parsed(after)
    detail: dict[str, Any] = {
        "action": action,
        "target": target,
        "before": before_value,
        "after": after_value,
        "reason": reason,
        "audit_id": entry_id,
    }
    tier = ""
    policy_version = ""
    if kind is EventKind.STOP_CHANGED:
        detail["stop"] = STOP_ACTIONS[action]
        scope, _, name = target.partition(":")
        if scope == "TIER":
            tier = name
    elif action == "SetTier" and isinstance(after_value, dict):
        tier = str(after_value.get("tier") or "")
    elif action == "ReloadPolicies" and isinstance(after_value, dict):
        policy_version = str(after_value.get("version") or "")
    event_id = audit_event_id(action, entry_id) if entry_id else new_event_id(kind, max(at_ms, 0))
    return Event(
        id=event_id,
        kind=kind,
        at_ms=max(at_ms, 0),
        subject=subject,
        tier=tier,
        actor=actor,
        policy_version=policy_version,
        detail=json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    )
