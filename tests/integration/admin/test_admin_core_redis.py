"""The admin core over a real Redis: tiers, overrides and their index, stops, audit, reset, top."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from admin_plane import ACTOR, ALPHA, Plane

from quota_service.admin import Admin
from quota_service.errors import InvalidRequest, NotFound, PolicyError, StoreDataError
from quota_service.policy.domain import Decision
from quota_service.policy.stops import StopScope
from quota_service.policy.validation import build_request
from quota_service.policy.windows import Window
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.admin_store import AUDIT_KEY, OVERRIDE_INDEX_KEY, STOPS_KEY

pytestmark = pytest.mark.redis


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


async def spend(plane: Plane, who: str, tokens: int, *, commit: bool = True, feature: str = "blog_writer") -> str:
    request = build_request(
        subject=who, feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
    )
    answer = await plane.quotas.check_and_reserve(request)
    assert answer.outcome.decision is not Decision.DENY, answer.outcome
    if commit:
        await plane.quotas.commit(answer.reservation_id, {"tokens": tokens})
    return answer.reservation_id


async def test_set_tier_validates_forgets_the_cache_and_is_audited(plane: Plane) -> None:
    who = subject()
    await spend(plane, who, 10)
    await plane.quotas.subject_config(who, fresh=True)
    assert plane.quotas.configs.get(who) is not None  # read and cached as free_alpha

    with pytest.raises(NotFound) as info:
        await plane.admin.set_tier(who, "platinum", actor=ACTOR)
    assert "platinum" in str(info.value) and "basic_alpha, free_alpha, pro_alpha" in str(info.value)

    change = await plane.admin.set_tier(who, "basic_alpha", actor=ACTOR, reason="alpha tester")
    assert (change.tier, change.previous_tier) == ("basic_alpha", "")
    assert plane.quotas.configs.get(who) is None  # this replica's next call reads it again
    await spend(plane, who, 10, feature="seo_analysis")  # a basic_alpha feature

    view = await plane.admin.get_subject(who)
    assert (view.tier, view.tier_assigned) == ("basic_alpha", True)
    tokens_day = next(r for r in view.limits if r.limit.metric == "tokens" and r.limit.kind.value == "tier")
    assert (tokens_day.limit.max_units, tokens_day.used) == (10_000, 20)

    back = await plane.admin.set_tier(who, "", actor=ACTOR, reason="trial over")
    assert (back.tier, back.previous_tier) == ("", "basic_alpha")
    view = await plane.admin.get_subject(who)
    assert (view.tier, view.tier_assigned) == ("free_alpha", False)

    entries = await plane.admin.list_audit(subject=who)
    assert [e.action for e in entries] == ["SetTier", "SetTier"]
    newest, oldest = entries
    assert json.loads(oldest.before) == {"tier": None} and json.loads(oldest.after) == {"tier": "basic_alpha"}
    assert json.loads(newest.before) == {"tier": "basic_alpha"} and json.loads(newest.after) == {"tier": None}
    assert (oldest.actor, oldest.reason, oldest.target) == (ACTOR, "alpha tester", who)
    assert oldest.at_ms <= newest.at_ms and abs(oldest.at_ms / 1000 - time.time()) < 60
    assert oldest.entry_id and oldest.entry_id != newest.entry_id


async def test_overrides_convert_exactly_expire_and_are_listed_for_every_subject(plane: Plane) -> None:
    who, other = subject(), subject()
    money = await plane.admin.set_override(who, "cost_usd", "month", 25.5, actor=ACTOR, reason="campaign")
    assert (money.max_units, money.expires_at, money.created_by) == (25_500_000, 0, ACTOR)
    tokens = await plane.admin.set_override(who, "tokens", "day", 5000, 3600, actor=ACTOR)
    assert tokens.max_units == 5000 and abs(tokens.expires_at - (time.time() + 3600)) < 5
    await plane.admin.set_override(other, "images", "day", 0, 2, actor=ACTOR)

    for bad, message in [
        (("tokens", "day", 2.5), "whole number of tokens"),
        (("cost_usd", "day", 0.0000005), "whole micro-dollars"),
        (("tokens", "day", -1), "must not be negative"),
        (("tokens", "week", 1), "week"),
        (("Tokens", "day", 1), "metric name"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            await plane.admin.set_override(who, *bad, actor=ACTOR)  # type: ignore[arg-type]
        assert message in str(info.value)

    listed = await plane.admin.list_overrides(who)
    assert [(o.metric, o.window) for o in listed] == [("cost_usd", Window.MONTH), ("tokens", Window.DAY)]
    everyone = await plane.admin.list_overrides("")
    assert {(o.subject, o.metric) for o in everyone} == {(who, "cost_usd"), (who, "tokens"), (other, "images")}

    # The override replaces the tier's cap on the next call.
    limits = (await plane.quotas.usage(who)).limits
    assert any(r.limit.metric == "tokens" and r.limit.max_units == 5000 for r in limits)

    # A 2-second override goes by itself: the next read leaves it out.
    deadline = time.monotonic() + 5
    while await plane.admin.list_overrides(other):
        assert time.monotonic() < deadline, "the 2-second override did not expire within 5 s"
        await asyncio.sleep(0.1)
    # ... and ListOverrides of everyone keeps the index entry while it is fresh (pruned later).
    assert await plane.raw.zscore(OVERRIDE_INDEX_KEY, other) is not None

    assert await plane.admin.delete_override(who, "tokens", "day", actor=ACTOR) is True
    assert await plane.admin.delete_override(who, "tokens", "day", actor=ACTOR) is False
    actions = [(e.action, json.loads(e.before), json.loads(e.after)) for e in await plane.admin.list_audit(subject=who)]
    assert actions[0] == ("DeleteOverride", actions[0][1], None) and actions[0][1]["max"] == 5000
    assert actions[1][0] == "SetOverride" and actions[1][2]["expires_at"] == tokens.expires_at
    assert actions[2][0] == "SetOverride" and actions[2][2]["max"] == 25.5 and actions[2][1] is None


async def test_index_prunes_subjects_left_without_overrides(plane: Plane) -> None:
    gone = subject()
    await plane.raw.zadd(OVERRIDE_INDEX_KEY, {gone: int(time.time()) - 3600})
    assert await plane.admin.list_overrides("") == []
    assert await plane.raw.zscore(OVERRIDE_INDEX_KEY, gone) is None


async def test_stops_put_replace_list_resume_and_audit(plane: Plane) -> None:
    who = subject()
    with pytest.raises(InvalidRequest):
        await plane.admin.emergency_stop(StopScope.GLOBAL, "x", actor=ACTOR)
    with pytest.raises(InvalidRequest):
        await plane.admin.emergency_stop(StopScope.PROVIDER, "", actor=ACTOR)
    with pytest.raises(InvalidRequest):
        await plane.admin.emergency_stop(None, "", actor=ACTOR)
    with pytest.raises(NotFound):
        await plane.admin.emergency_stop(StopScope.TIER, "platinum", actor=ACTOR)

    stop = await plane.admin.emergency_stop(StopScope.SUBJECT, who, actor=ACTOR, reason="runaway loop")
    assert stop.created_at > 0 and stop.created_by == ACTOR
    await plane.admin.emergency_stop(StopScope.PROVIDER, "openai", actor=ACTOR, reason="incident")
    await plane.admin.emergency_stop(StopScope.TIER, "pro_alpha", actor=ACTOR, reason="pro bleeding")
    await plane.admin.emergency_stop(StopScope.SUBJECT, who, actor=ACTOR, reason="still looping")
    stops = await plane.admin.list_stops()
    assert [(s.scope, s.target, s.reason) for s in stops] == [
        (StopScope.PROVIDER, "openai", "incident"),
        (StopScope.TIER, "pro_alpha", "pro bleeding"),
        (StopScope.SUBJECT, who, "still looping"),
    ]
    assert await plane.raw.hlen(STOPS_KEY) == 3

    # The subject's view lists what may cover it: its own stop and the provider's, not pro_alpha's.
    view = await plane.admin.get_subject(who)
    assert {(s.scope, s.target) for s in view.stops} == {(StopScope.SUBJECT, who), (StopScope.PROVIDER, "openai")}

    assert await plane.admin.resume_stop(StopScope.SUBJECT, who, actor=ACTOR, reason="fixed") is True
    assert await plane.admin.resume_stop(StopScope.SUBJECT, who, actor=ACTOR) is False
    entries = await plane.admin.list_audit(subject=who)
    assert [e.action for e in entries] == ["ResumeStop", "EmergencyStop", "EmergencyStop"]
    assert json.loads(entries[1].before)["reason"] == "runaway loop"
    assert json.loads(entries[1].after)["reason"] == "still looping"
    assert entries[0].target == f"SUBJECT:{who}" and json.loads(entries[0].after) is None
    assert [e.action for e in await plane.admin.list_audit(limit=2)] == ["ResumeStop", "EmergencyStop"]


async def test_reset_usage_zeroes_used_keeps_held_and_only_what_was_asked(plane: Plane) -> None:
    who, bystander = subject(), subject()
    await spend(plane, who, 300)
    await spend(plane, who, 50, commit=False)  # held
    await spend(plane, bystander, 200)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    month = day[:7]

    assert await plane.admin.reset_usage(who, "images", "", actor=ACTOR) == 0
    count = await plane.admin.reset_usage(who, "tokens", "day", actor=ACTOR, reason="ticket 7")
    assert count == 1
    assert await plane.raw.hgetall(f"q:{{{who}}}:tokens:day:{day}") == {"used": "0", "held": "50"}
    assert (await plane.raw.hget(f"q:{{{who}}}:cost_usd:month:{month}", "used")) == "180"  # untouched
    assert (await plane.raw.hget(f"q:{{{bystander}}}:tokens:day:{day}", "used")) == "200"

    assert await plane.admin.reset_usage(who, actor=ACTOR) == 2  # cost_usd per month and per day (hard stop)
    assert (await plane.raw.hget(f"q:{{{who}}}:cost_usd:month:{month}", "used")) == "0"
    (entry, first, *_) = await plane.admin.list_audit(subject=who)
    assert entry.action == "ResetUsage" and json.loads(entry.after)["counters_reset"] == 2
    assert json.loads(first.before) == {"used": {f"tokens:day:{day}": 300.0}} and first.reason == "ticket 7"
    with pytest.raises(InvalidRequest):
        await plane.admin.reset_usage(who, "tokens", "fortnight", actor=ACTOR)


async def test_top_usage_orders_by_used_then_held(plane: Plane) -> None:
    big, middle, small, holder = subject(), subject(), subject(), subject()
    await spend(plane, big, 600)
    await spend(plane, middle, 250)
    await spend(plane, small, 40)
    await spend(plane, holder, 40, commit=False)
    top = await plane.admin.top_usage("tokens", "day", 3)
    assert [(r.subject, r.used, r.held) for r in top.entries] == [(big, 600, 0), (middle, 250, 0), (small, 40, 0)]
    assert top.window_start % 86_400 == 0
    everyone = await plane.admin.top_usage("tokens", "day")
    assert [(r.subject, r.used, r.held) for r in everyone.entries][2:] == [(small, 40, 0), (holder, 0, 40)]
    assert (await plane.admin.top_usage("images", "day")).entries == ()
    with pytest.raises(InvalidRequest):
        await plane.admin.top_usage("tokens", "day", 5000)


async def test_a_reload_is_audited(plane: Plane) -> None:
    changed, status = await plane.admin.reload_policies(actor=ACTOR, reason="deploy")
    assert changed is False and status.version == plane.quotas.policy.current.version
    (entry,) = await plane.admin.list_audit()
    assert entry.action == "ReloadPolicies" and json.loads(entry.after)["changed"] is False


async def test_a_failed_reload_is_audited_and_raises(plane: Plane, tmp_path: Path) -> None:
    path = tmp_path / "alpha.yaml"
    path.write_text(ALPHA.read_text())
    admin = Admin(quotas=Quotas(policy=LivePolicy(path), store=plane.counters), store=plane.store)
    path.write_text(ALPHA.read_text().replace("tokens: {day: 1000}", "tokens: {day: -1}", 1))
    with pytest.raises(PolicyError):
        await admin.reload_policies(actor=ACTOR)
    (entry,) = await admin.list_audit()
    assert "error" in json.loads(entry.after) and admin.policy_status().last_error
    assert await plane.raw.xlen(AUDIT_KEY) == 1


async def test_the_audit_log_never_holds_a_token_and_filters_by_subject(plane: Plane) -> None:
    who = subject()
    for i in range(7):
        await plane.admin.set_tier(subject(), "pro_alpha", actor=ACTOR, reason=f"bulk {i}")
    await plane.admin.set_tier(who, "pro_alpha", actor=ACTOR)
    for i in range(3):
        await plane.admin.set_tier(subject(), "pro_alpha", actor=ACTOR, reason=f"more {i}")
    (only,) = await plane.admin.list_audit(subject=who)
    assert only.subject == who
    assert len(await plane.admin.list_audit(limit=5)) == 5
    assert len(await plane.admin.list_audit()) == 11


async def test_damaged_stops_are_a_data_error_not_an_outage(plane: Plane) -> None:
    await plane.raw.set(STOPS_KEY, "not a hash")
    with pytest.raises(StoreDataError):
        await plane.admin.list_stops()
