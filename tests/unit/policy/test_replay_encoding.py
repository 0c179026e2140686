"""The recorded plan (policy/replay.py): a round trip (with the request's recorded estimate
and rates) gives back every counter, ask and limit exactly, in order; the text is the same
for every request planned in the same windows, whatever it asks; it stays short; anything
damaged is refused whole. And the windows nest, which the text's ``since`` rests on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from quota_service.policy import replay
from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, Thresholds
from quota_service.policy.domain import CounterValue, OverrideRecord, SubjectConfig
from quota_service.policy.engine import CounterPlan, Plan, decide, plan
from quota_service.policy.loader import load_policy
from quota_service.policy.validation import build_request
from quota_service.policy.windows import WINDOW_ORDER, Window, window_span

pytestmark = pytest.mark.unit

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"
# Nov 30 2026, 23:59:30 in UTC: the minute, hour, day and month all end 30 s later.
NOW = datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def alpha() -> CompiledPolicy:
    return load_policy(ALPHA)


def plan_for(
    policy: CompiledPolicy,
    tier: str,
    usage: dict[str, float],
    *,
    overrides: tuple[OverrideRecord, ...] = (),
    now: datetime = NOW,
) -> Plan:
    request = build_request(
        subject="alice", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage=usage, request_id="r1"
    )
    return plan(policy, request, now=now, config=SubjectConfig(tier, overrides, "3"))


def rates_of(the_plan: Plan) -> dict[str, str]:
    """The rates as the store keeps them (ReserveCommand.rates)."""
    return {metric: str(rate) for metric, rate in the_plan.rates.items()}


def encode(policy: CompiledPolicy, the_plan: Plan) -> str:
    return replay.encode(the_plan, policy_version=policy.version, timezone=policy.timezone.key)


def round_trip(policy: CompiledPolicy, the_plan: Plan) -> replay.RecordedPlan:
    return replay.decode(
        encode(policy, the_plan), subject="alice", estimate=the_plan.estimate, rates=rates_of(the_plan)
    )


@pytest.mark.parametrize("tier", ["free_alpha", "basic_alpha", "pro_alpha"])
@pytest.mark.parametrize("usage", [{"tokens": 500}, {"tokens": 500, "images": 2}])
def test_every_shipped_tier_round_trips_exactly_and_fits_150_bytes(
    alpha: CompiledPolicy, tier: str, usage: dict[str, float]
) -> None:
    the_plan = plan_for(alpha, tier, usage)
    text = encode(alpha, the_plan)
    recorded = replay.decode(text, subject="alice", estimate=the_plan.estimate, rates=rates_of(the_plan))
    assert recorded.counters == the_plan.all_counters  # refs (window ids, resets), asks, limits, order
    shortest = min((c.ref.window for c in the_plan.all_counters), key=WINDOW_ORDER.index)
    since = window_span(shortest, NOW, alpha.timezone).start
    assert (recorded.tier, recorded.policy_version, recorded.since) == (tier, alpha.version, since)
    assert (recorded.estimate, recorded.rates) == (the_plan.estimate, the_plan.rates)
    assert len(text.encode()) <= 150, (len(text), text)


def test_the_text_is_the_same_for_every_request_in_the_same_windows(alpha: CompiledPolicy) -> None:
    """Nothing per request: not its time (any second of the same windows), not its asks."""
    texts = {
        encode(alpha, plan_for(alpha, "free_alpha", {"tokens": tokens}, now=NOW - timedelta(seconds=seconds)))
        for tokens, seconds in ((500, 0), (10, 1), (97, 3600), (106, 86_000))
    }
    assert len(texts) == 1, texts
    (text,) = texts
    assert "=" not in text and str(int(NOW.timestamp())) not in text  # no asks, not the time
    next_day = encode(alpha, plan_for(alpha, "free_alpha", {"tokens": 500}, now=NOW + timedelta(seconds=31)))
    assert next_day != text  # a new day window: a new plan


def test_the_asks_come_from_the_recorded_estimate_and_rates(alpha: CompiledPolicy) -> None:
    """Another request's text (same windows) with this request's estimate and the rates it
    was priced at gives this request's asks, whatever the prices are now."""
    first = plan_for(alpha, "free_alpha", {"tokens": 500})
    other = plan_for(alpha, "free_alpha", {"tokens": 7})
    recorded = replay.decode(encode(alpha, other), subject="alice", estimate={"tokens": 500}, rates={"tokens": "0.01"})
    asks = {c.ref.metric: c.ask for c in recorded.counters}
    assert asks == {"tokens": 500, "cost_usd": 5_000_000}  # 500 tokens at $0.01
    exact = replay.decode(encode(alpha, other), subject="alice", estimate=first.estimate, rates=rates_of(first))
    assert exact.counters == first.all_counters


@pytest.mark.parametrize(
    ("estimate", "rates"),
    [({}, {"tokens": "0.0000006"}), ({"images": 2}, {}), ({"tokens": 5}, {"tokens": "x"}), ({"tokens": 5}, {})],
)
def test_an_estimate_that_gives_a_counter_no_ask_is_refused(
    alpha: CompiledPolicy, estimate: dict[str, int], rates: dict[str, str]
) -> None:
    text = encode(alpha, plan_for(alpha, "free_alpha", {"tokens": 5}))  # tokens and cost_usd counters
    with pytest.raises(replay.ReplayFormatError):
        replay.decode(text, subject="alice", estimate=estimate, rates=rates)


def test_a_replay_answers_retry_after_from_now_never_negative(alpha: CompiledPolicy) -> None:
    first = plan_for(alpha, "free_alpha", {"tokens": 100}, now=NOW - timedelta(seconds=20))
    values = {c.ref: CounterValue(used=990 if c.ref.metric == "tokens" else 0) for c in first.all_counters}
    denied = decide(first, values, reserved=False, store_denied=True)
    assert denied.retry_after_seconds == 50  # the day ends 30 s after NOW
    recorded = round_trip(alpha, first)
    for later, retry_after in ((NOW, 30), (NOW + timedelta(seconds=45), 0)):
        again = plan_for(alpha, "free_alpha", {"tokens": 100}, now=later)
        replayed = decide(recorded.plan_for(again), values, reserved=False, store_denied=True)
        assert replayed.limits == denied.limits and replayed.message == denied.message
        assert replayed.retry_after_seconds == retry_after


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
    kiritimati = dataclasses.replace(alpha, timezone=ZoneInfo("Pacific/Kiritimati"))  # UTC+14: already Dec 1
    the_plan = plan_for(kiritimati, "free_alpha", {"tokens": 5})
    recorded = round_trip(kiritimati, the_plan)
    assert recorded.counters == the_plan.all_counters
    (day, *_) = [c for c in recorded.counters if c.ref.window is Window.DAY]
    assert day.ref.window_id == "2026-12-01"


def test_windows_planned_in_another_zone_are_not_recorded(alpha: CompiledPolicy) -> None:
    with pytest.raises(ValueError, match="nest"):
        replay.encode(plan_for(alpha, "free_alpha", {"tokens": 5}), policy_version="v", timezone="Pacific/Kiritimati")


def _transitions(zone: ZoneInfo, year: int) -> Iterator[int]:
    """The unix seconds (to the hour) just after each offset change of ``zone`` in ``year``."""
    t = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    while t < end:
        t += 1800
        now = datetime.fromtimestamp(t, zone).utcoffset()
        if now != offset:
            offset = now
            yield t


@pytest.mark.parametrize(
    ("zone", "year"),
    [
        ("Australia/Lord_Howe", 2026),  # the offset changes by 30 minutes
        ("America/New_York", 2026),
        ("America/Sao_Paulo", 2018),  # the change at local midnight: 2018-11-04 has no 00:00
        ("Asia/Kolkata", 2026),  # +05:30, no change: only the year's ends
        ("Pacific/Chatham", 2026),  # +12:45 / +13:45
    ],
)
def test_windows_nest_so_the_shortest_windows_start_gives_every_window(zone: str, year: int) -> None:
    """For any instant and any window kind, the start of its window lies in the same
    window of every longer kind: what ``since`` in the text rests on (DST included)."""
    tz = ZoneInfo(zone)
    year_start = int(datetime(year, 1, 1, tzinfo=tz).timestamp())
    centres = [*_transitions(tz, year), year_start, int(datetime(year, 3, 1, tzinfo=tz).timestamp())]
    checked = 0
    for centre in centres:
        for t in range(centre - 26 * 3600, centre + 26 * 3600, 7 * 60 + 13):
            instant = datetime.fromtimestamp(t, UTC)
            spans = {window: window_span(window, instant, tz) for window in WINDOW_ORDER}
            for i, shortest in enumerate(WINDOW_ORDER):
                since = datetime.fromtimestamp(spans[shortest].start, UTC)
                for longer in WINDOW_ORDER[i:]:
                    assert window_span(longer, since, tz) == spans[longer], (zone, t, shortest, longer)
                    checked += 1
    assert checked > 1000


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
    assert replay.decode(text, subject="alice", estimate={"tokens": 5}, rates={}).counters == (odd,)


DAY_START = "1796083200"  # 2026-12-01T00:00Z: the start of the day (and month) after NOW


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1 1764460740 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000",  # version 1 (asks and now in it)
        "3 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dt1000",  # unknown version
        "2 soon UTC free_alpha v 0.8/0.95 tokens:Dt1000",
        "2 1796083260 UTC free_alpha v 0.8/0.95 tokens:Dt1000",  # not the start of its day
        "2 - UTC free_alpha v 0.8/0.95 tokens:Dt1000",  # counters but no start
        "2 1796083200 UTC free_alpha v 0.8/0.95",  # a start but no counters
        "2 1796083200 Mars/Olympus free_alpha v 0.8/0.95 tokens:Dt1000",
        "2 1796083200 UTC free_alpha v 0.8 tokens:Dt1000",
        "2 1796083200 UTC free_alpha v 0.95/0.8 tokens:Dt1000",  # warn above block
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Xt1000",  # unknown window
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dz1000",  # unknown kind
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:D",  # no limit
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dt1000g5",  # subject and company-wide mixed
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dt1000,Dt2000",  # one counter twice
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens=5:Dt1000",  # an ask in the text
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dg1000 tokens:Dt5",  # subject after company-wide
        "2 1796083200 UTC free_alpha v 0.8/0.95 Tokens:Dt1000",
        "2 1796083200 UTC free_alpha v 0.8/0.95 tokens:Dt1000@x/y",
        "2 1796083200 UTC free_alpha v 0.8/0.95 images:Dt5",  # nothing estimated for it
    ],
)
def test_damaged_text_is_refused_whole(text: str) -> None:
    with pytest.raises(replay.ReplayFormatError):
        replay.decode(text, subject="alice", estimate={"tokens": 5, "Tokens": 5}, rates={})


def test_a_well_formed_text_of_the_damaged_family_decodes() -> None:
    """The texts above fail for the reason named, not for something they share."""
    recorded = replay.decode(
        f"2 {DAY_START} UTC free_alpha v 0.8/0.95 tokens:Dt1000", subject="alice", estimate={"tokens": 5}, rates={}
    )
    assert [(c.ref.window_id, c.ask) for c in recorded.counters] == [("2026-12-01", 5)]


def test_only_plans_that_reach_the_store_are_recorded(alpha: CompiledPolicy) -> None:
    denied = build_request(
        subject="alice", feature="seo_analysis", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
    )
    the_plan = plan(alpha, denied, now=NOW, config=SubjectConfig(None, (), "0"))
    assert the_plan.denial is not None
    with pytest.raises(ValueError, match="only a plan"):
        replay.encode(the_plan, policy_version="v", timezone="UTC")
