"""The decision rule of DESIGN.md, table-driven, on a hand-built compiled policy."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest

from quota_service.errors import InvalidRequest
from quota_service.policy.compiled import (
    CompiledPolicy,
    Limit,
    LimitKind,
    PriceTable,
    StoreErrorMode,
    Thresholds,
    Tier,
    UnpricedMode,
)
from quota_service.policy.domain import GLOBAL_SCOPE, CounterValue, Decision, OverrideRecord, Reason, SubjectConfig
from quota_service.policy.engine import decide, judge, plan
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.validation import build_request
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEFAULT = Thresholds(Decimal("0.80"), Decimal("0.95"))
NO_CONFIG = SubjectConfig(tier=None, overrides=(), version="0")


def tier_limit(metric: str, window: Window, max_units: int, thresholds: Thresholds = DEFAULT) -> Limit:
    return Limit(metric, window, max_units, LimitKind.TIER, thresholds)


def hard(metric: str, window: Window, max_units: int) -> Limit:
    return Limit(metric, window, max_units, LimitKind.HARD_STOP, None)


def make_policy(
    limits: tuple[Limit, ...],
    hard_stops: tuple[Limit, ...] = (),
    global_limits: tuple[Limit, ...] = (),
    features: frozenset[str] = frozenset({"blog_writer"}),
    unpriced: UnpricedMode = UnpricedMode.DENY,
    prices: dict[str, dict[str, Decimal]] | None = None,
) -> CompiledPolicy:
    tier = Tier(
        name="free_alpha",
        display_name="Free Alpha",
        features=features,
        all_features=False,
        limits=limits,
        hard_stops=hard_stops,
        thresholds=DEFAULT,
        on_store_error=StoreErrorMode.DENY,
        reservation_ttl_seconds=300,
    )
    table = prices if prices is not None else {"*": {"tokens": Decimal("0.0001"), "images": Decimal("0.05")}}
    return CompiledPolicy(
        version="test",
        files=("test.yaml",),
        timezone=ZoneInfo("UTC"),
        default_tier="free_alpha",
        tiers=MappingProxyType({"free_alpha": tier}),
        prices=PriceTable(MappingProxyType({k: MappingProxyType(v) for k, v in table.items()})),
        unpriced=unpriced,
        global_limits=global_limits,
        reservation_ttl_seconds=300,
        on_store_error=StoreErrorMode.DENY,
        thresholds=DEFAULT,
    )


def run(policy: CompiledPolicy, used: dict[tuple[str, str], int], **usage: float):  # type: ignore[no-untyped-def]
    request = build_request(subject="u1", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage=usage)
    p = plan(policy, request, now=NOW, config=NO_CONFIG)
    values = {c.ref: CounterValue(used.get((c.ref.scope, c.ref.metric), 0), 0) for c in p.all_counters}
    return p, decide(p, values, reserved=False)


TOKENS_DAY = tier_limit("tokens", Window.DAY, 1000)


@pytest.mark.parametrize(
    ("used", "held", "ask", "decision", "reason"),
    [
        (0, 0, 10, Decision.ALLOW, Reason.WITHIN_LIMITS),
        (789, 0, 10, Decision.ALLOW, Reason.WITHIN_LIMITS),  # projected 799: just below 80 %
        (790, 0, 10, Decision.WARN, Reason.WARN_THRESHOLD),  # projected exactly 800 = 80 %
        (700, 100, 0 + 1, Decision.WARN, Reason.WARN_THRESHOLD),  # held counts like used
        (949, 0, 1, Decision.WARN, Reason.WARN_THRESHOLD),  # used+held just below 95 %
        (940, 9, 1, Decision.WARN, Reason.WARN_THRESHOLD),
        (950, 0, 1, Decision.DENY, Reason.BLOCK_THRESHOLD),  # exactly at 95 %: already blocked
        (900, 50, 1, Decision.DENY, Reason.BLOCK_THRESHOLD),
        (900, 0, 100, Decision.WARN, Reason.WARN_THRESHOLD),  # projected == max is not past the cap
        (900, 0, 101, Decision.DENY, Reason.LIMIT_EXCEEDED),  # projected > max
        (0, 0, 1001, Decision.DENY, Reason.LIMIT_EXCEEDED),
    ],
)
def test_rule_on_one_limit(used: int, held: int, ask: int, decision: Decision, reason: Reason) -> None:
    assert judge(TOKENS_DAY, used, held, ask) == (decision, reason)


def test_thresholds_are_exact_integers() -> None:
    assert (TOKENS_DAY.warn_units, TOKENS_DAY.block_units) == (800, 950)
    odd = tier_limit("tokens", Window.DAY, 7)
    # 0.8 * 7 = 5.6 -> a projected 6 warns, 5 does not; 0.95 * 7 = 6.65 -> 7 blocks.
    assert (odd.warn_units, odd.block_units) == (6, 7)
    assert judge(odd, 5, 0, 1) == (Decision.WARN, Reason.WARN_THRESHOLD)
    assert judge(odd, 4, 0, 1) == (Decision.ALLOW, Reason.WITHIN_LIMITS)
    assert judge(odd, 6, 0, 1) == (Decision.WARN, Reason.WARN_THRESHOLD)


@pytest.mark.parametrize(
    ("used", "ask", "decision"),
    [(990, 10, Decision.ALLOW), (999, 1, Decision.ALLOW), (990, 11, Decision.DENY), (1000, 1, Decision.DENY)],
)
def test_hard_stop_denies_only_past_100_percent(used: int, ask: int, decision: Decision) -> None:
    expected = Reason.HARD_STOP if decision is Decision.DENY else Reason.WITHIN_LIMITS
    assert judge(hard("tokens", Window.DAY, 1000), used, 0, ask) == (decision, expected)


def test_worst_over_several_limits_decides() -> None:
    policy = make_policy(
        limits=(tier_limit("tokens", Window.DAY, 1000), tier_limit("tokens", Window.MONTH, 100_000)),
        hard_stops=(hard("tokens", Window.DAY, 1200),),
    )
    # day counter at 85 % (warn), month nearly empty (allow): WARN from the day limit.
    p, outcome = run(policy, {("u1", "tokens"): 840}, tokens=10)
    assert outcome.decision is Decision.WARN
    assert outcome.deciding is not None and outcome.deciding.limit.window is Window.DAY
    # The day and month limits are separate counters, the hard stop shares the day counter.
    assert sorted((c.ref.window.value, len(c.limits)) for c in p.counters) == [("day", 2), ("month", 1)]
    _, outcome = run(policy, {("u1", "tokens"): 960}, tokens=10)
    assert (outcome.decision, outcome.reason) == (Decision.DENY, Reason.BLOCK_THRESHOLD)
    assert outcome.retry_after_seconds == 12 * 3600  # noon -> midnight UTC


def test_metric_the_request_does_not_use_plays_no_part() -> None:
    policy = make_policy(limits=(tier_limit("tokens", Window.DAY, 1000), tier_limit("images", Window.DAY, 5)))
    p, outcome = run(policy, {("u1", "images"): 5}, tokens=10)
    assert outcome.decision is Decision.ALLOW
    assert {c.ref.metric for c in p.counters} == {"tokens"}
    _, outcome = run(policy, {("u1", "images"): 5}, images=1)
    assert outcome.decision is Decision.DENY


def test_cost_is_exact_money() -> None:
    cap = Limit("cost_usd", Window.DAY, 1_000_000, LimitKind.TIER, Thresholds(Decimal("1"), Decimal("1")))
    policy = make_policy(limits=(cap,))
    # 19 images at $0.05 already committed; the 20th lands exactly on $1.00.
    p, outcome = run(policy, {("u1", "cost_usd"): 950_000}, images=1)
    assert p.cost == 50_000
    assert outcome.decision is Decision.WARN  # projected == max: allowed, at the (1.0) warn line
    _, outcome = run(policy, {("u1", "cost_usd"): 950_001}, images=1)
    assert outcome.decision is Decision.DENY


def test_fractional_amounts_round_up() -> None:
    policy = make_policy(limits=(TOKENS_DAY,))
    p, _ = run(policy, {}, tokens=10.2)
    assert p.estimate["tokens"] == 11
    # 11 tokens at $0.0001 = $0.0011 = 1100 micro-dollars
    assert p.cost == 1100


def test_global_caps_are_their_own_counters() -> None:
    policy = make_policy(
        limits=(TOKENS_DAY,),
        global_limits=(Limit("cost_usd", Window.DAY, 200_000_000, LimitKind.GLOBAL, None),),
    )
    p, outcome = run(policy, {(GLOBAL_SCOPE, "cost_usd"): 199_999_500}, tokens=10)
    assert [c.ref.scope for c in p.global_counters] == [GLOBAL_SCOPE]
    assert (outcome.decision, outcome.reason) == (Decision.DENY, Reason.GLOBAL_LIMIT)


def test_early_denials() -> None:
    policy = make_policy(limits=(TOKENS_DAY,), prices={"openai/gpt-4o": {"tokens": Decimal("0.00001")}})
    unpriced = build_request(subject="u", feature="blog_writer", provider="acme", model="x", usage={"tokens": 1})
    out = decide(plan(policy, unpriced, now=NOW, config=NO_CONFIG), {}, reserved=False)
    assert (out.decision, out.reason) == (Decision.DENY, Reason.UNPRICED_MODEL)
    assert "acme/x" in out.message

    free = make_policy(limits=(TOKENS_DAY,), prices={}, unpriced=UnpricedMode.FREE)
    assert plan(free, unpriced, now=NOW, config=NO_CONFIG).denial is None

    feature = build_request(subject="u", feature="seo_analysis", provider="openai", model="gpt-4o", usage={"tokens": 1})
    out = decide(plan(policy, feature, now=NOW, config=NO_CONFIG), {}, reserved=False)
    assert (out.decision, out.reason) == (Decision.DENY, Reason.FEATURE_NOT_ALLOWED)

    ok = build_request(subject="u", feature="blog_writer", provider="openai", model="gpt-4o", usage={"tokens": 1})
    stop = EmergencyStop(StopScope.PROVIDER, "openai", reason="runaway loop")
    out = decide(plan(policy, ok, now=NOW, config=NO_CONFIG, stops=[stop]), {}, reserved=False)
    assert (out.decision, out.reason) == (Decision.DENY, Reason.EMERGENCY_STOP)
    assert "runaway loop" in out.message
    other = EmergencyStop(StopScope.SUBJECT, "someone-else")
    assert plan(policy, ok, now=NOW, config=NO_CONFIG, stops=[other]).denial is None


def test_unknown_tier_falls_back_to_default_or_denies() -> None:
    policy = make_policy(limits=(TOKENS_DAY,))
    req = build_request(subject="u", feature="blog_writer", provider="openai", model="m", usage={"tokens": 1})
    gone = SubjectConfig(tier="deleted_tier", overrides=(), version="3")
    assert plan(policy, req, now=NOW, config=gone).tier is policy.tiers["free_alpha"]


def test_override_replaces_the_tier_cap_and_expires() -> None:
    policy = make_policy(limits=(TOKENS_DAY,))
    now_s = int(NOW.timestamp())
    override = OverrideRecord("u1", "tokens", Window.DAY, 5000, expires_at=now_s + 2)
    config = SubjectConfig(tier=None, overrides=(override,), version="1")
    req = build_request(subject="u1", feature="blog_writer", provider="openai", model="m", usage={"tokens": 10})
    p = plan(policy, req, now=NOW, config=config)
    (limit,) = p.counters[0].limits
    assert (limit.kind, limit.max_units, limit.block_units) == (LimitKind.OVERRIDE, 5000, 4750)
    later = datetime.fromtimestamp(now_s + 2, UTC)
    (limit,) = plan(policy, req, now=later, config=config).counters[0].limits
    assert (limit.kind, limit.max_units) == (LimitKind.TIER, 1000)


def test_reserved_outcome_reports_the_hold() -> None:
    policy = make_policy(limits=(TOKENS_DAY,))
    p, _ = run(policy, {}, tokens=10)
    out = decide(p, {p.counters[0].ref: CounterValue(100, 20)}, reserved=True)
    cost_report = next(r for r in out.limits if r.limit.metric == "tokens")
    assert (cost_report.used, cost_report.held, cost_report.remaining) == (100, 30, 870)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("subject", {"subject": ""}),
        ("subject", {"subject": "a b"}),
        ("subject", {"subject": "x{y}"}),
        ("feature", {"feature": ""}),
        ("usage", {"usage": {"tokens": -1.0}}),
        ("usage", {"usage": {"tokens": float("nan")}}),
        ("usage", {"usage": {"tokens": float("inf")}}),
        ("usage", {"usage": {"Tokens!": 1.0}}),
        ("usage", {"usage": {"cost_usd": 1.0}}),
        ("usage", {"usage": {}}),
        ("usage", {"usage": {"tokens": 0.0}}),
        ("usage", {"usage": {"tokens": 1e300}}),
        ("reservation_ttl_seconds", {"ttl_seconds": 10**9}),
    ],
)
def test_invalid_requests_are_refused(field: str, kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "subject": "u1",
        "feature": "blog_writer",
        "provider": "openai",
        "model": "m",
        "usage": {"tokens": 1.0},
    }
    base.update(kwargs)
    with pytest.raises(InvalidRequest):
        build_request(**base)  # type: ignore[arg-type]


def test_a_global_limit_denial_shows_the_exact_ask_not_cents() -> None:
    """Issue 12 #12: 1,000 tokens at $0.0000006 cost $0.0006; the message said "$0.00 more"."""
    cap = Limit("cost_usd", Window.DAY, 200_000_000, LimitKind.GLOBAL, None)
    policy = make_policy(limits=(TOKENS_DAY,), global_limits=(cap,), prices={"*": {"tokens": Decimal("0.0000006")}})
    _, outcome = run(policy, {(GLOBAL_SCOPE, "cost_usd"): 199_999_900}, tokens=1000)
    assert (outcome.decision, outcome.reason) == (Decision.DENY, Reason.GLOBAL_LIMIT)
    assert outcome.message == (
        "company-wide cost_usd per day: $199.9999 of $200.00 used; $0.0006 more would pass the cap"
    )


def test_an_ask_alone_above_the_cap_says_so_and_has_no_retry_after() -> None:
    """Issue 7 #9: waiting for the window to reset cannot help a request bigger than the cap."""
    policy = make_policy(limits=(TOKENS_DAY,))
    _, outcome = run(policy, {}, tokens=5000)
    assert (outcome.decision, outcome.reason) == (Decision.DENY, Reason.LIMIT_EXCEEDED)
    assert outcome.retry_after_seconds == 0
    assert "this request alone asks 5,000 tokens, more than the cap of 1,000 tokens" in outcome.message
    _, later = run(policy, {("u1", "tokens"): 990}, tokens=20)
    assert later.retry_after_seconds > 0  # this one can succeed once the window resets
