"""The recorded plan (policy/replay.py): a round trip gives back every counter, ask and
limit exactly, in order; the text stays short; anything damaged is refused whole."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from quota_service.policy import replay
from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, Thresholds
from quota_service.policy.domain import CounterValue, OverrideRecord, SubjectConfig
from quota_service.policy.engine import CounterPlan, Plan, decide, plan
from quota_service.policy.loader import load_policy
from quota_service.policy.validation import build_request
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"
# Nov 30 2026, 23:59:30 in UTC: the minute, hour, day and month all end 30 s later.
NOW = datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def alpha() -> CompiledPolicy:
    return load_policy(ALPHA)


def plan_for(
    policy: CompiledPolicy, tier: str, usage: dict[str, float], *, overrides: tuple[OverrideRecord, ...] = ()
) -> Plan:
    request = build_request(
        subject="alice", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage=usage, request_id="r1"
    )
    return plan(policy, request, now=NOW, config=SubjectConfig(tier, overrides, "3"))


def round_trip(policy: CompiledPolicy, the_plan: Plan) -> replay.RecordedPlan:
    text = replay.encode(the_plan, policy_version=policy.version, timezone=policy.timezone.key)
    return replay.decode(text, subject="alice")


@pytest.mark.parametrize("tier", ["free_alpha", "basic_alpha", "pro_alpha"])
@pytest.mark.parametrize("usage", [{"tokens": 500}, {"tokens": 500, "images": 2}])
def test_every_shipped_tier_round_trips_exactly_and_fits_150_bytes(
    alpha: CompiledPolicy, tier: str, usage: dict[str, float]
) -> None:
    the_plan = plan_for(alpha, tier, usage)
    text = replay.encode(the_plan, policy_version=alpha.version, timezone=alpha.timezone.key)
    recorded = replay.decode(text, subject="alice")
    assert recorded.counters == the_plan.all_counters  # refs (window ids, resets), asks, limits, order
    assert (recorded.tier, recorded.policy_version, recorded.now) == (tier, alpha.version, the_plan.now)
    assert len(text.encode()) <= 150, (len(text), text)


def test_the_rebuilt_plan_decides_exactly_as_the_first(alpha: CompiledPolicy) -> None:
    first = plan_for(alpha, "free_alpha", {"tokens": 100})
    values = {c.ref: CounterValue(used=700 if c.ref.metric == "tokens" else 0, held=20) for c in first.all_counters}
    rebuilt = round_trip(alpha, first).plan_for(first)
    for reserved, denied in ((True, False), (False, True), (False, False)):
        assert decide(rebuilt, values, reserved=reserved, store_denied=denied) == decide(
            first, values, reserved=reserved, store_denied=denied
        )


def test_overrides_and_their_kinds_survive(alpha: CompiledPolicy) -> None:
    overrides = (
        OverrideRecord("alice", "tokens", Window.DAY, 20, expires_at=0),
        OverrideRecord("alice", "tokens", Window.HOUR, 7, expires_at=0),
    )
    the_plan = plan_for(alpha, "free_alpha", {"tokens": 5}, overrides=overrides)
    recorded = round_trip(alpha, the_plan)
    assert recorded.counters == the_plan.all_counters
    kinds = {(limit.window, limit.kind, limit.max_units) for c in recorded.counters for limit in c.limits}
    assert (Window.DAY, LimitKind.OVERRIDE, 20) in kinds and (Window.HOUR, LimitKind.OVERRIDE, 7) in kinds


def test_a_non_utc_zone_gives_back_its_own_window_ids(alpha: CompiledPolicy) -> None:
    the_plan = plan_for(alpha, "free_alpha", {"tokens": 5})
    text = replay.encode(the_plan, policy_version="v", timezone="Pacific/Kiritimati")  # UTC+14: already Dec 1
    (day, *_) = [c for c in replay.decode(text, subject="alice").counters if c.ref.window is Window.DAY]
    assert day.ref.window_id == "2026-12-01"


def test_thresholds_of_their_own_and_none_are_kept() -> None:
    ref_plan = plan_for(load_policy(ALPHA), "free_alpha", {"tokens": 5})
    own = Thresholds(Decimal("0.5"), Decimal("0.75"))
    tokens = ref_plan.counters[0]
    odd = CounterPlan(
        tokens.ref,
        tokens.ask,
        (
            Limit("tokens", Window.DAY, 1000, LimitKind.TIER, own),
            Limit("tokens", Window.DAY, 900, LimitKind.OVERRIDE, None),
            Limit("tokens", Window.DAY, 800, LimitKind.HARD_STOP, Thresholds()),
        ),
    )
    custom = Plan(ref_plan.request, ref_plan.tier, counters=(odd,), now=ref_plan.now)
    text = replay.encode(custom, policy_version="v", timezone="UTC")
    assert replay.decode(text, subject="alice").counters == (odd,)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000",  # unknown version
        "1 soon UTC free_alpha v 0.8/0.95 tokens=5:Dt1000",
        "1 1764460740 Mars/Olympus free_alpha v 0.8/0.95 tokens=5:Dt1000",
        "1 1764460740 UTC free_alpha v 0.8 tokens=5:Dt1000",
        "1 1764460740 UTC free_alpha v 0.95/0.8 tokens=5:Dt1000",  # warn above block
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Xt1000",  # unknown window
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dz1000",  # unknown kind
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:D",  # no limit
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000g5",  # subject and company-wide mixed
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000,Dt2000",  # one counter twice
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000 tokens=6:Mt9",  # two asks of one metric
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dg1000 images=1:Dt5",  # subject after company-wide
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=-5:Dt1000",
        "1 1764460740 UTC free_alpha v 0.8/0.95 Tokens=5:Dt1000",
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000@x/y",
    ],
)
def test_damaged_text_is_refused_whole(text: str) -> None:
    with pytest.raises(replay.ReplayFormatError):
        replay.decode(text, subject="alice")


def test_only_plans_that_reach_the_store_are_recorded(alpha: CompiledPolicy) -> None:
    denied = build_request(
        subject="alice", feature="seo_analysis", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
    )
    the_plan = plan(alpha, denied, now=NOW, config=SubjectConfig(None, (), "0"))
    assert the_plan.denial is not None
    with pytest.raises(ValueError, match="only a plan"):
        replay.encode(the_plan, policy_version="v", timezone="UTC")
