"""The admin plane on a real 3-master Redis Cluster: TopUsage scans every master, ResetUsage
the subject's node, the override index and the audit stream live in their own slots."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from admin_plane import ACTOR, ALPHA

from quota_service.admin import Admin
from quota_service.policy.domain import Decision
from quota_service.policy.stops import StopScope
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.cluster


@pytest.fixture
async def admin(redis_cluster_url: str) -> AsyncIterator[Admin]:
    counters = RedisCounterStore.from_url(redis_cluster_url, timeout_seconds=5.0)
    try:
        quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
        yield Admin(quotas=quotas, store=RedisAdminStore(counters=counters))
    finally:
        await counters.close()


async def spend(admin: Admin, who: str, tokens: int) -> None:
    request = build_request(
        subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
    )
    answer = await admin.quotas.check_and_reserve(request)
    assert answer.outcome.decision is not Decision.DENY
    await admin.quotas.commit(answer.reservation_id, {"tokens": tokens})


async def test_top_usage_covers_every_master_and_reset_finds_the_subjects_node(
    admin: Admin, redis_cluster_url: str
) -> None:
    # Forty subjects spread over the three masters' slots.
    subjects = [f"c-{uuid.uuid4().hex[:8]}-{i:02d}" for i in range(40)]
    for i, who in enumerate(subjects):
        await spend(admin, who, 10 * (i + 1))
    top = await admin.top_usage("tokens", "day", 5)
    assert [(r.subject, r.used) for r in top.entries] == [(subjects[39 - i], 10 * (40 - i)) for i in range(5)]
    everyone = await admin.top_usage("tokens", "day", 1000)
    assert len(everyone.entries) == 40

    assert await admin.reset_usage(subjects[-1], "tokens", actor=ACTOR) == 1
    top = await admin.top_usage("tokens", "day", 1)
    assert top.entries[0].subject == subjects[-2]


async def test_overrides_stops_and_audit_on_a_cluster(admin: Admin) -> None:
    names = [f"o-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    for who in names:
        await admin.set_override(who, "images", "day", 3, actor=ACTOR, reason="cluster")
    assert {o.subject for o in await admin.list_overrides("")} == set(names)
    await admin.emergency_stop(StopScope.SUBJECT, names[0], actor=ACTOR)
    assert [s.target for s in await admin.list_stops()] == [names[0]]
    entries = await admin.list_audit(limit=10)
    assert [e.action for e in entries] == ["EmergencyStop"] + ["SetOverride"] * 6
    assert entries[0].at_ms <= int(time.time() * 1000)
    assert [e.subject for e in await admin.list_audit(subject=names[3])] == [names[3]]
