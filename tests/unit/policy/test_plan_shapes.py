"""The plan shapes cache (engine.plan_shape): what it shares between requests, when it
gives a new shape, that it is bounded, and that a plan from it is the plan computed
afresh; the engine's PlannedCharges and the store's check of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest

from quota_service.errors import InvalidRequest
from quota_service.policy import engine, replay
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
from quota_service.policy.domain import GLOBAL_SCOPE, CounterCharge, CounterRef, OverrideRecord, SubjectConfig
from quota_service.policy.engine import CounterPlan, Plan, PlannedCharges, plan, subject_limits
from quota_service.policy.validation import QuotaRequest, build_request
from quota_service.policy.windows import Window, current_span
from quota_service.store.base import check_charges

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEFAULT = Thresholds(Decimal("0.80"), Decimal("0.95"))
NO_CONFIG = SubjectConfig(tier=None, overrides=(), version="0")


def make_policy(day_tokens: int = 1000, *, version: str = "test", tz: str = "UTC") -> CompiledPolicy:
    def tier(name: str, tokens: int) -> Tier:
        return Tier(
            name=name,
            display_name=name,
            features=frozenset({"blog_writer"}),
            all_features=False,
            limits=(
                Limit("tokens", Window.DAY, tokens, LimitKind.TIER, DEFAULT),
                Limit("tokens", Window.MINUTE, tokens, LimitKind.TIER, DEFAULT),
                Limit("cost_usd", Window.MONTH, 10_000_000, LimitKind.TIER, DEFAULT),
                Limit("images", Window.DAY, 10, LimitKind.TIER, DEFAULT),
            ),
            hard_stops=(Limit("tokens", Window.DAY, tokens, LimitKind.HARD_STOP, None),),
            thresholds=DEFAULT,
            on_store_error=StoreErrorMode.DENY,
            reservation_ttl_seconds=300,
        )

    return CompiledPolicy(
        version=version,
        files=("test.yaml",),
        timezone=ZoneInfo(tz),
        default_tier="free",
        tiers=MappingProxyType({"free": tier("free", day_tokens), "pro": tier("pro", 10 * day_tokens)}),
        prices=PriceTable(MappingProxyType({"*": MappingProxyType({"tokens": Decimal("0.0001")})})),
        unpriced=UnpricedMode.FREE,
        global_limits=(Limit("cost_usd", Window.DAY, 200_000_000, LimitKind.GLOBAL, None),),
        reservation_ttl_seconds=300,
        on_store_error=StoreErrorMode.DENY,
        thresholds=DEFAULT,
    )


def ask(subject: str = "u1", **usage: float) -> QuotaRequest:
    return build_request(
        subject=subject, feature="blog_writer", provider="openai", model="m", usage=usage or {"tokens": 10}
    )


def fresh(policy: CompiledPolicy, request: QuotaRequest, config: SubjectConfig, now: datetime) -> Plan:
    """The plan as computed before the cache: engine._group over subject_limits, per call."""
    tier = policy.tier_for(config.tier)
    assert tier is not None
    cost, _, rates = policy.prices.cost_micros(request.provider, request.model, request.usage)
    asks = dict(request.usage)
    if cost:
        asks["cost_usd"] = cost
    now_s = int(now.timestamp())
    return Plan(
        request,
        tier,
        counters=engine._group(request.subject, subject_limits(tier, config, now_s), asks, policy, now),
        global_counters=engine._group(GLOBAL_SCOPE, policy.global_limits, asks, policy, now),
        ttl_seconds=request.ttl_seconds or tier.reservation_ttl_seconds,
        now=now_s,
        estimate=dict(request.usage),
        rates=rates,
        cost=cost,
    )


def text(policy: CompiledPolicy, p: Plan) -> str:
    return replay.encode(p, policy_version=policy.version, timezone=policy.timezone.key)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    engine._SHAPES.clear()
    engine._SHAPE_POLICIES.clear()


def test_a_plan_from_the_cache_is_the_plan_computed_afresh() -> None:
    policy = make_policy()
    override = OverrideRecord("u1", "tokens", Window.DAY, 5000, expires_at=0)
    configs = [NO_CONFIG, SubjectConfig("pro", (), "2"), SubjectConfig(None, (override,), "7")]
    for config in configs:
        for request in (ask(), ask(images=2), ask(tokens=3, images=1), ask("u2", tokens=7)):
            for now in (NOW, NOW + timedelta(seconds=61), NOW + timedelta(days=1)):
                for _ in range(2):  # a miss, then a hit
                    got = plan(policy, request, now=now, config=config)
                    want = fresh(policy, request, config, now)
                    assert got == want
                    assert got.subject_charges() == tuple(c.charge() for c in want.counters)
                    assert got.global_charges() == tuple(c.charge() for c in want.global_counters)
                    assert text(policy, got) == text(policy, want)


def test_subjects_share_a_shape_but_not_their_counters() -> None:
    policy = make_policy()
    first = plan(policy, ask("u1"), now=NOW, config=NO_CONFIG)
    second = plan(policy, ask("u2", tokens=99), now=NOW + timedelta(seconds=1), config=NO_CONFIG)
    assert first.shape is not None and second.shape is first.shape
    assert {c.ref.scope for c in first.counters} == {"u1"}
    assert {c.ref.scope for c in second.counters} == {"u2"}
    assert [(c.ref.metric, c.ask) for c in second.counters] == [("tokens", 99), ("tokens", 99), ("cost_usd", 9900)]
    assert second.global_counters[0].ref is first.global_counters[0].ref  # one company-wide ref


def test_a_new_policy_gives_a_new_shape_and_plan_even_under_the_same_version() -> None:
    old, new = make_policy(1000), make_policy(2000)  # both say version "test"
    before = plan(old, ask(), now=NOW, config=NO_CONFIG)
    after = plan(new, ask(), now=NOW, config=NO_CONFIG)
    assert after.shape is not before.shape
    assert after.counters[0].limits[0].max_units == 2000
    assert text(new, after) != text(old, before)
    renamed = make_policy(1000, version="v2")
    assert text(renamed, plan(renamed, ask(), now=NOW, config=NO_CONFIG)).split()[4] == "v2"


def test_tier_overrides_and_metrics_asked_each_give_their_own_shape() -> None:
    policy = make_policy()
    base = plan(policy, ask(), now=NOW, config=NO_CONFIG).shape
    pro = plan(policy, ask(), now=NOW, config=SubjectConfig("pro", (), "1")).shape
    images = plan(policy, ask(images=1), now=NOW, config=NO_CONFIG).shape
    override = OverrideRecord("u1", "tokens", Window.DAY, 5000, expires_at=int(NOW.timestamp()) + 30)
    overridden = plan(policy, ask(), now=NOW, config=SubjectConfig(None, (override,), "9"))
    assert len({id(s) for s in (base, pro, images, overridden.shape)}) == 4
    assert overridden.counters[0].limits[0].kind is LimitKind.OVERRIDE
    # the same override, expired (in the same minute): the tier's caps again, from the same shape
    expired = plan(policy, ask(), now=NOW + timedelta(seconds=30), config=SubjectConfig(None, (override,), "9"))
    assert expired.shape is base
    assert expired.counters[0].limits[0].kind is LimitKind.TIER


def test_a_config_version_alone_does_not_split_the_cache() -> None:
    """Versions are per subject; the shape depends only on the tier and overrides in force."""
    policy = make_policy()
    shapes = {id(plan(policy, ask(), now=NOW, config=SubjectConfig(None, (), str(v))).shape) for v in range(5)}
    assert len(shapes) == 1


def test_a_new_window_gives_new_window_ids_and_another_replay_text() -> None:
    policy = make_policy()
    first = plan(policy, ask(), now=NOW, config=NO_CONFIG)
    same_minute = plan(policy, ask(), now=NOW + timedelta(seconds=59), config=NO_CONFIG)
    next_minute = plan(policy, ask(), now=NOW + timedelta(seconds=60), config=NO_CONFIG)
    next_day = plan(policy, ask(), now=NOW + timedelta(days=1), config=NO_CONFIG)
    assert same_minute.shape is first.shape
    assert next_minute.shape is not first.shape
    ids = [{c.ref.window: c.ref.window_id for c in p.counters} for p in (first, next_minute, next_day)]
    assert ids[0][Window.MINUTE] != ids[1][Window.MINUTE] and ids[0][Window.DAY] == ids[1][Window.DAY]
    assert ids[2][Window.DAY] == "2026-11-25"
    texts = {text(policy, p) for p in (first, same_minute, next_minute, next_day)}
    assert len(texts) == 3
    # a clock that goes back gets the earlier windows again
    back = plan(policy, ask(), now=NOW, config=NO_CONFIG)
    assert [c.ref for c in back.counters] == [c.ref for c in first.counters]


def test_shape_validity_is_the_overlap_of_its_windows() -> None:
    policy = make_policy(tz="Europe/Berlin")
    shape = plan(policy, ask(), now=NOW, config=NO_CONFIG).shape
    assert shape is not None
    minute = current_span(Window.MINUTE, NOW, policy.timezone)
    assert (shape.valid_from, shape.valid_until) == (minute.start, minute.end)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "SHAPE_CACHE_SIZE", 3)
    policies = [make_policy(1000 + i) for i in range(10)]
    for policy in policies:
        plan(policy, ask(), now=NOW, config=NO_CONFIG)
        assert len(engine._SHAPES) <= 3
    # the newest are kept; an evicted one is rebuilt, right
    assert plan(policies[-1], ask(), now=NOW, config=NO_CONFIG).shape in engine._SHAPES.values()
    again = plan(policies[0], ask(), now=NOW, config=NO_CONFIG)
    assert again.counters[0].limits[0].max_units == 1000
    assert len(engine._SHAPES) == 3


def test_the_shapes_of_older_policies_are_dropped_with_them() -> None:
    policies = [make_policy(1000 + i) for i in range(engine.SHAPE_POLICIES + 2)]
    for policy in policies:
        plan(policy, ask(), now=NOW, config=NO_CONFIG)
        plan(policy, ask(images=1), now=NOW, config=NO_CONFIG)
    kept = policies[-engine.SHAPE_POLICIES :]
    assert [id(p) for p in engine._SHAPE_POLICIES] == [id(p) for p in kept]
    assert {id(s.policy) for s in engine._SHAPES.values()} == {id(p) for p in kept}
    assert len(engine._SHAPES) == 2 * engine.SHAPE_POLICIES
    again = plan(policies[0], ask(), now=NOW, config=NO_CONFIG)  # rebuilt, right
    assert again.counters[0].limits[0].max_units == 1000


def test_planned_charges_skip_the_full_check_but_not_the_scope() -> None:
    policy = make_policy()
    p = plan(policy, ask(), now=NOW, config=NO_CONFIG)
    assert type(p.subject_charges()) is PlannedCharges
    assert type(p.global_charges()) is PlannedCharges
    check_charges("u1", p.subject_charges())
    check_charges(GLOBAL_SCOPE, p.global_charges())
    with pytest.raises(InvalidRequest, match="in the 'u2' step"):
        check_charges("u2", p.subject_charges())
    with pytest.raises(InvalidRequest, match="in the 'u1' step"):
        check_charges("u1", p.global_charges())


def test_other_charges_are_checked_in_full() -> None:
    ref = CounterRef("u1", "tokens", Window.DAY, "2026-11-24", 0)
    with pytest.raises(InvalidRequest, match="charged twice"):
        check_charges("u1", (CounterCharge(ref, 1, 10, 9), CounterCharge(ref, 1, 10, 9)))
    with pytest.raises(InvalidRequest, match="whole number"):
        check_charges("u1", [CounterCharge(ref, -1, 10, 9)])
    bad_name = CounterRef("u1", "Tokens", Window.DAY, "2026-11-24", 0)
    with pytest.raises(InvalidRequest, match="metric name"):
        check_charges("u1", (CounterCharge(bad_name, 1, 10, 9),))


def test_an_ask_that_is_not_whole_units_gives_plain_charges() -> None:
    """A request built by hand (not through validation) is not vouched for: the store
    checks its charges in full, as before."""
    policy = make_policy()
    request = QuotaRequest(
        subject="u1",
        feature="blog_writer",
        provider="",
        model="",
        usage={"images": 2**60},
        request_id="",
        ttl_seconds=0,
        dry_run=False,
    )
    p = plan(policy, request, now=NOW, config=NO_CONFIG)
    assert type(p.subject_charges()) is tuple
    with pytest.raises(InvalidRequest, match="whole number of units"):
        check_charges("u1", p.subject_charges())


def test_a_shape_with_a_cap_the_store_refuses_gives_plain_charges() -> None:
    policy = make_policy(day_tokens=2**60)
    p = plan(policy, ask(), now=NOW, config=NO_CONFIG)
    assert p.shape is not None and not p.shape.checked
    assert type(p.subject_charges()) is tuple
    with pytest.raises(InvalidRequest, match="cap for tokens"):
        check_charges("u1", p.subject_charges())


def test_a_replaced_plan_does_not_keep_the_charges_of_the_original() -> None:
    import dataclasses

    policy = make_policy()
    p = plan(policy, ask(), now=NOW, config=NO_CONFIG)
    ref = CounterRef("u1", "images", Window.DAY, "2026-11-24", 0)
    other = dataclasses.replace(
        p, counters=(CounterPlan(ref, 1, (Limit("images", Window.DAY, 5, LimitKind.TIER, None),)),)
    )
    assert other.shape is None
    assert other.subject_charges() == (CounterCharge(ref, 1, 5, 5),)


def test_price_lookups_are_remembered_bounded_and_handed_out_as_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    from quota_service.policy import compiled

    table = make_policy().prices
    cost, unpriced, rates = table.cost_micros("openai", "m", {"tokens": 10})
    assert (cost, unpriced, rates) == (1000, [], {"tokens": Decimal("0.0001")})
    rates["tokens"] = Decimal(1)
    unpriced.append("x")
    assert table.cost_micros("openai", "m", {"tokens": 20}) == (2000, [], {"tokens": Decimal("0.0001")})
    monkeypatch.setattr(compiled, "PRICE_LOOKUPS", 2)
    for model in ("a", "b", "c", "d"):
        table.cost_micros("openai", model, {"tokens": 1})
        assert len(table._lookups) <= 2
