"""What ``serve`` builds over the ledger, each part real: the audit relay (admin writes on a
real Redis become ADMIN_CHANGE / STOP_CHANGED events), the webhook deliverer following the
policy's ``notifications`` (a real aiohttp receiver verifying every Standard Webhooks
signature), and the secret check of the policy loader. SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_ledger_webhooks import FAST, SECRET, Receiver, eventually

from quota_service.admin import Admin
from quota_service.clock import SystemClock
from quota_service.errors import PolicyError
from quota_service.ledger import Event, EventKind, Ledger, new_event_id
from quota_service.ledger.convert import event_from_json
from quota_service.ledger.schema import webhook_deliveries
from quota_service.policy.stops import StopScope
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.audit_relay import AuditRelay
from quota_service.server.notifications import Notifications, checked_loader
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
ACTOR = "token:0123456789ab"
ENV = {"QUOTA_WEBHOOK_SECRET": SECRET}


def policy_with(tmp_path: Path, webhooks: str) -> Path:
    path = tmp_path / "policies" / "alpha.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(ALPHA.read_text() + "\n" + webhooks)
    return path


def hook(url: str, extra: str = "") -> str:
    return f"    - {{url: '{url}', secret_env: QUOTA_WEBHOOK_SECRET{extra}}}\n"


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()
    assert not [p for r in started for p in r.problems], "a request failed the Standard Webhooks verification"


def event(n: int, kind: EventKind = EventKind.THRESHOLD_CROSSED, tier: str = "free_alpha") -> Event:
    at_ms = 1_764_547_200_000 + n
    return Event(id=new_event_id(kind, at_ms), kind=kind, at_ms=at_ms, subject=f"u{n}", tier=tier)


# -- ADMIN_CHANGE / STOP_CHANGED ------------------------------------------------------------


async def test_every_admin_write_becomes_one_event_beside_its_audit_entry(
    redis_url: str, ledger: Ledger, tmp_path: Path
) -> None:
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    store = RedisAdminStore(counters=counters)
    quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
    woken: list[int] = []
    relay = AuditRelay(counters=counters, ledger=ledger, on_stored=lambda: woken.append(1))
    admin = Admin(quotas=quotas, store=store, audit_sink=relay.record)
    try:
        await admin.set_tier("alice", "pro_alpha", actor=ACTOR, reason="paying customer")
        await admin.set_override("alice", "tokens", "day", 5000, 3600, actor=ACTOR, reason="launch day")
        await admin.delete_override("alice", "tokens", "day", actor=ACTOR)
        await admin.reset_usage("alice", actor=ACTOR, reason="ticket 4711")
        await admin.reload_policies(actor=ACTOR)
        await admin.emergency_stop(StopScope.TIER, "free_alpha", actor=ACTOR, reason="runaway agent")
        await admin.resume_stop(StopScope.TIER, "free_alpha", actor=ACTOR, reason="fixed")
        await relay.drain()
        audit = list(reversed(await admin.list_audit(limit=50)))  # ListAudit works as before
        assert [a.action for a in audit] == [
            "SetTier",
            "SetOverride",
            "DeleteOverride",
            "ResetUsage",
            "ReloadPolicies",
            "EmergencyStop",
            "ResumeStop",
        ]
        stored, _ = await ledger.list_events(page_size=100)
        assert [e.id for e in stored] == [
            ("stp_" if a.action in ("EmergencyStop", "ResumeStop") else "adm_") + a.entry_id for a in audit
        ]
        assert [e.kind for e in stored] == [EventKind.ADMIN_CHANGE] * 5 + [EventKind.STOP_CHANGED] * 2
        assert all(e.actor == ACTOR for e in stored) and woken
        assert [e.at_ms for e in stored] == [a.at_ms for a in audit]
        tier_event, stop_event, resume_event = stored[0], stored[5], stored[6]
        assert (tier_event.subject, tier_event.tier) == ("alice", "pro_alpha")
        detail = json.loads(tier_event.detail)
        assert detail == {
            "action": "SetTier",
            "target": "alice",
            "before": {"tier": None},
            "after": {"tier": "pro_alpha"},
            "reason": "paying customer",
            "audit_id": audit[0].entry_id,
        }
        assert stored[4].policy_version == quotas.policy.current.version
        assert stop_event.tier == "free_alpha" and stop_event.subject == ""
        assert json.loads(stop_event.detail)["stop"] == "pulled"
        assert json.loads(stop_event.detail)["reason"] == "runaway agent"
        assert json.loads(resume_event.detail)["stop"] == "lifted"

        # Idempotent: another relay (a restart, another replica) from scratch stores nothing new.
        again = AuditRelay(counters=counters, ledger=ledger)
        await ledger.advance_relay_cursor("audit", "0-0", newer=lambda _new, _old: True)
        await again.drain()
        assert await ledger.count() == 7
        # ... and one started later carries on from the cursor.
        await admin.set_tier("bob", "basic_alpha", actor=ACTOR)
        await again.drain()
        stored, _ = await ledger.list_events(page_size=100)
        assert len(stored) == 8 and stored[-1].subject == "bob"
    finally:
        await relay.stop()
        await counters.close()


async def test_the_relay_runs_in_the_background_and_is_woken_by_the_admin_core(redis_url: str, ledger: Ledger) -> None:
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    relay = AuditRelay(counters=counters, ledger=ledger, poll_seconds=30.0)  # only the wake-up is fast
    admin = Admin(
        quotas=Quotas(policy=LivePolicy(ALPHA), store=counters),
        store=RedisAdminStore(counters=counters),
        audit_sink=relay.record,
    )
    await relay.start()
    try:
        await admin.emergency_stop(StopScope.GLOBAL, "", actor=ACTOR, reason="bill spiking")

        async def arrived() -> bool:
            return await ledger.count() == 1

        await eventually(arrived, within_seconds=10)
        (stop,), _ = await ledger.list_events()
        assert stop.kind is EventKind.STOP_CHANGED and stop.id.startswith("stp_")
    finally:
        await relay.stop()
        await counters.close()


# -- webhooks as serve runs them --------------------------------------------------------------


async def test_webhooks_of_the_policy_get_every_matching_event_retried_and_followed_across_reloads(
    ledger: Ledger, tmp_path: Path, receivers: list[Receiver]
) -> None:
    first = await Receiver(SystemClock(), statuses=[500]).start()
    second = await Receiver(SystemClock()).start()
    receivers += [first, second]
    path = policy_with(tmp_path, f"notifications:\n  webhooks:\n{hook(first.url, ', kinds: [THRESHOLD_CROSSED]')}")
    policy = LivePolicy(path, loader=checked_loader(ENV))
    served = Notifications(
        ledger=ledger, policy=policy, environ=ENV, schedule=FAST, poll_interval_seconds=0.05, follow_seconds=0.05
    )
    await served.start()
    try:
        wanted, other = event(1), event(2, EventKind.COMMITTED)
        await ledger.insert([wanted, other])  # written by another code path: the deliverer reads the ledger
        served.wake()
        await eventually(lambda: len(first.got) >= 2)
        assert [(r.webhook_id, r.status) for r in first.got[:2]] == [(wanted.id, 500), (wanted.id, 200)]
        assert event_from_json(first.got[1].body) == wanted

        # A reload adds a webhook (and narrows nothing): it gets what is stored from then on.
        path.write_text(path.read_text() + hook(second.url, ", tiers: [pro_alpha], name: pro-hook"))
        assert policy.reload()
        await eventually(lambda: len(served.deliverer.endpoints) == 2)
        later = [event(3, tier="pro_alpha"), event(4, tier="free_alpha")]
        await ledger.insert(later)
        served.wake()
        await eventually(lambda: len(second.got) == 1 and len(first.got) == 4)
        assert second.got[0].webhook_id == later[0].id  # the tier filter
        assert {r.webhook_id for r in first.got[2:]} == {later[0].id, later[1].id}
        names = sorted(e.name for e in served.deliverer.endpoints)
        assert names == ["127.0.0.1", "pro-hook"]
    finally:
        await served.stop()


async def test_a_restart_loses_no_pending_delivery(ledger: Ledger, tmp_path: Path, receivers: list[Receiver]) -> None:
    receiver = await Receiver(SystemClock(), statuses=[500, 500]).start()
    receivers.append(receiver)
    path = policy_with(tmp_path, f"notifications:\n  webhooks:\n{hook(receiver.url)}")
    policy = LivePolicy(path, loader=checked_loader(ENV))
    slow = (3600.0,) * 7  # after a failure, the next attempt is an hour away: it stays pending
    before = Notifications(ledger=ledger, policy=policy, environ=ENV, schedule=slow, poll_interval_seconds=0.05)
    await before.start()
    pending = event(7)
    try:
        await ledger.insert([pending])
        before.wake()
        await eventually(lambda: len(receiver.got) == 1)

        async def failed_once() -> bool:
            rows = await before.deliverer.deliveries(state="pending")
            return len(rows) == 1 and rows[0].attempts == 1

        await eventually(failed_once)
    finally:
        await before.stop()
    # A new process (same ledger) with a schedule that is due at once: the delivery resumes.
    after = Notifications(ledger=ledger, policy=policy, environ=ENV, schedule=FAST, poll_interval_seconds=0.05)
    # The stored next attempt is an hour away: make it due, as that hour passing would.
    async with ledger.transaction(write=True) as conn:
        await conn.execute(sa.update(webhook_deliveries).values(next_attempt_at_ms=0))
    await after.start()
    try:
        await eventually(lambda: len(receiver.got) == 3)
        assert [r.webhook_id for r in receiver.got] == [pending.id] * 3
        assert [r.status for r in receiver.got] == [500, 500, 200]

        async def delivered() -> bool:
            rows = await after.deliverer.deliveries()
            return [(r.state, r.attempts) for r in rows] == [("delivered", 3)]

        await eventually(delivered)
    finally:
        await after.stop()


def test_a_missing_or_bad_secret_is_a_policy_error_naming_the_webhook_and_the_variable(tmp_path: Path) -> None:
    webhook = "    - {url: 'https://h.example/x', secret_env: HOOK_KEY, name: billing}\n"
    path = policy_with(tmp_path, "notifications:\n  webhooks:\n" + webhook)
    with pytest.raises(PolicyError) as missing:
        LivePolicy(path, loader=checked_loader({}))
    assert str(missing.value) == (
        f"{path}: notifications.webhooks[0].secret_env: webhook 'billing': environment variable HOOK_KEY "
        "is not set (it must hold the webhook's secret, whsec_<base64>)"
    )
    with pytest.raises(PolicyError, match=r"webhook 'billing': HOOK_KEY: a webhook secret must be whsec_<base64>"):
        LivePolicy(path, loader=checked_loader({"HOOK_KEY": "whsec_not base64!"}))
    with pytest.raises(PolicyError, match=r"webhook 'billing' needs the ledger, which is off"):
        LivePolicy(path, loader=checked_loader({"HOOK_KEY": SECRET}, ledger_on=False))
    # On a reload the last good policy stays.
    live = LivePolicy(path, loader=checked_loader({"HOOK_KEY": SECRET}))
    path.write_text(path.read_text().replace("HOOK_KEY", "OTHER_KEY"))
    with pytest.raises(PolicyError, match="OTHER_KEY is not set"):
        live.reload()
    assert live.current.notifications.webhooks[0].secret_env == "HOOK_KEY"
    assert SECRET not in live.status().last_error


async def test_retention_removes_events_older_than_the_policy_says(ledger: Ledger, tmp_path: Path) -> None:
    path = policy_with(tmp_path, "ledger_retention_days: 30\n")
    policy = LivePolicy(path, loader=checked_loader(ENV))
    served = Notifications(ledger=ledger, policy=policy, environ=ENV)
    day_ms = 86_400_000
    now_ms = int(SystemClock().now().timestamp() * 1000)
    old = Event(
        id=new_event_id(EventKind.ADMIN_CHANGE, now_ms - 31 * day_ms),
        kind=EventKind.ADMIN_CHANGE,
        at_ms=now_ms - 31 * day_ms,
    )
    recent = [
        Event(
            id=new_event_id(EventKind.ADMIN_CHANGE, now_ms - n * day_ms),
            kind=EventKind.ADMIN_CHANGE,
            at_ms=now_ms - n * day_ms,
        )
        for n in (29, 1)
    ]
    await ledger.insert([old, *recent])
    assert await served.retention_pass() == 1
    kept, _ = await ledger.list_events()
    assert [e.id for e in kept] == [e.id for e in recent]
