"""The quota path without a transport: engine + real Redis + an injected clock.

Window rollover at local midnight and month end in a non-UTC timezone, and reservations
left past their TTL, driven by a ManualClock instead of waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota_service.clock import ManualClock
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
# Nov 30, 23:59:00 in Berlin (UTC+1): one minute before both the day and the month roll over.
BEFORE_MIDNIGHT = datetime(2026, 11, 30, 22, 59, 0, tzinfo=UTC)


@pytest.fixture
def berlin_policy(tmp_path: Path) -> Path:
    text = (ROOT / "policies" / "alpha.yaml").read_text()
    assert "timezone: UTC" in text
    path = tmp_path / "alpha.yaml"
    path.write_text(text.replace("timezone: UTC", "timezone: Europe/Berlin"))
    return path


@pytest.fixture
async def quotas(redis_url: str, berlin_policy: Path) -> AsyncIterator[tuple[Quotas, ManualClock]]:
    clock = ManualClock(BEFORE_MIDNIGHT)
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0, clock=lambda: clock.now().timestamp())
    try:
        yield Quotas(policy=LivePolicy(berlin_policy, clock=clock), store=store, clock=clock), clock
    finally:
        await store.close()


def tokens(subject: str, amount: float, **extra: object) -> object:
    return build_request(
        subject=subject,
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": amount},
        **extra,  # type: ignore[arg-type]
    )


async def spend(quotas: Quotas, subject: str, amount: int) -> None:
    answer = await quotas.check_and_reserve(tokens(subject, amount))  # type: ignore[arg-type]
    assert answer.outcome.decision is not Decision.DENY, answer.outcome
    await quotas.commit(answer.reservation_id, {"tokens": amount})


async def test_the_day_rolls_over_at_local_midnight(quotas: tuple[Quotas, ManualClock]) -> None:
    core, clock = quotas
    await spend(core, "carol", 950)
    blocked = await core.check_and_reserve(tokens("carol", 1))  # type: ignore[arg-type]
    assert (blocked.outcome.decision, blocked.outcome.reason) == (Decision.DENY, Reason.BLOCK_THRESHOLD)
    assert blocked.outcome.retry_after_seconds == 60  # until 00:00 in Berlin, not in UTC

    clock.advance(59)  # 23:59:59 Berlin: still the same day
    still = await core.check_and_reserve(tokens("carol", 1))  # type: ignore[arg-type]
    assert still.outcome.decision is Decision.DENY
    clock.advance(1)  # 00:00:00 Berlin, Dec 1 (23:00 UTC on Nov 30)
    fresh = await core.check_and_reserve(tokens("carol", 1))  # type: ignore[arg-type]
    assert (fresh.outcome.decision, fresh.outcome.reason) == (Decision.ALLOW, Reason.WITHIN_LIMITS)
    day = next(r for r in fresh.outcome.limits if r.limit.metric == "tokens" and r.limit.window.value == "day")
    assert (day.ref.window_id, day.used, day.held) == ("2026-12-01", 0, 1)


async def test_the_month_rolls_over_at_local_month_end(quotas: tuple[Quotas, ManualClock]) -> None:
    core, clock = quotas
    await spend(core, "dave", 500)
    usage = await core.usage("dave")
    month = next(r for r in usage.limits if r.limit.metric == "cost_usd" and r.limit.window.value == "month")
    assert (month.ref.window_id, month.used) == ("2026-11", 300)  # 500 tokens at $0.0000006 = 300 micro-dollars
    clock.advance(60)
    usage = await core.usage("dave")
    month = next(r for r in usage.limits if r.limit.metric == "cost_usd" and r.limit.window.value == "month")
    assert (month.ref.window_id, month.used) == ("2026-12", 0)


async def test_a_reservation_left_alone_is_settled_at_its_estimate_and_a_late_commit_corrects_it(
    quotas: tuple[Quotas, ManualClock],
) -> None:
    core, clock = quotas
    clock.set(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    answer = await core.check_and_reserve(tokens("erin", 200, ttl_seconds=60))  # type: ignore[arg-type]
    assert answer.expires_at == int(clock.now().timestamp()) + 60

    def day_tokens(report: object) -> tuple[int, int]:
        row = next(
            r
            for r in report.limits  # type: ignore[attr-defined]
            if r.limit.metric == "tokens" and r.limit.window.value == "day" and r.limit.kind.value == "tier"
        )
        return row.used, row.held

    clock.advance(59)
    assert day_tokens(await core.usage("erin")) == (0, 200)  # still open
    clock.advance(2)
    assert day_tokens(await core.usage("erin")) == (200, 0)  # expired: settled at its estimate
    late = await core.commit(answer.reservation_id, {"tokens": 80})
    assert not late.already_settled
    assert day_tokens(await core.usage("erin")) == (80, 0)  # the late commit corrects it
    again = await core.commit(answer.reservation_id, {"tokens": 80})
    assert again.already_settled and day_tokens(await core.usage("erin")) == (80, 0)


async def test_a_commit_after_the_window_rolled_over_reports_the_windows_it_settled(
    quotas: tuple[Quotas, ManualClock],
) -> None:
    """Issue 7 #9: reserved at 23:59 Berlin on Nov 30, committed after midnight: the commit lands
    on Nov 30 and November (the reservation's windows) and says they are no longer current."""
    core, clock = quotas
    answer = await core.check_and_reserve(tokens("frank", 100))  # type: ignore[arg-type]
    clock.advance(120)  # 00:01 on Dec 1 in Berlin: the day and the month rolled over
    settled = await core.commit(answer.reservation_id, {"tokens": 120})
    by_window = {(w.counter.scope, w.counter.metric, w.counter.window.value): w for w in settled.windows}
    day = by_window[("frank", "tokens", "day")]
    assert (day.counter.window_id, day.used_delta, day.held_delta, day.lost) == ("2026-11-30", 120, -100, False)
    assert day.counter.resets_at <= settled.now  # no longer the current window
    month = by_window[("frank", "cost_usd", "month")]
    assert month.counter.window_id == "2026-11"
    assert month.used_delta == 72  # 120 tokens at $0.0000006, at the reservation's own rates
    # Today's counters are untouched by yesterday's reservation.
    usage = await core.usage("frank")
    today = next(r for r in usage.limits if r.limit.metric == "tokens" and r.limit.window.value == "day")
    assert (today.ref.window_id, today.used, today.held) == ("2026-12-01", 0, 0)
