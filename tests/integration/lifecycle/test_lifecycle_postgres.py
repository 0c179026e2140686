"""The lifecycle reads on PostgreSQL: the same stories as on SQLite, through the same code
(the keyset pages, the JSON amounts read in the database), on a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.ledger_fixture import DAY_MS, HOUR_MS, RecordBuilder, estimates_story, recommend_story, write_ledger_url

from quota.v1 import admin_pb2
from quota_service.cli import main
from quota_service.ledger.events import EventKind
from quota_service.ledger.store import Ledger, ledger_from_url
from quota_service.policy.loader import load_policy
from quota_service.server.lifecycle_reads import estimates, recommendation

pytestmark = pytest.mark.postgres

POLICIES = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "lifecycle"
LIVE = POLICIES / "live.yaml"
DAY0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z
TODAY_MS = 1_766_102_400_000  # 2025-12-19T00:00:00Z


def test_simulate_a_tighter_cap_on_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The hand-worked story of test_lifecycle_simulate: the third request is denied at 12:00.
    builder = RecordBuilder(load_policy(LIVE))
    for hour, tokens in ((10, 300), (11, 150), (12, 100)):
        builder.request(EventKind.COMMITTED, "alice", "free", DAY0 + hour * HOUR_MS, {"tokens": tokens})
    builder.set_tier("bob", "pro", DAY0)
    builder.request(EventKind.COMMITTED, "bob", "pro", DAY0 + HOUR_MS, {"tokens": 900})
    url = asyncio.run(write_ledger_url(postgres_url, builder.events))
    code = main(
        ["simulate", "--live", str(LIVE), "--policy", str(POLICIES / "tighter.yaml"), "--ledger", url, "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 2, err
    report = json.loads(out)
    assert report["changes"] == {"ALLOW->DENY": 1, "ALLOW->WARN": 1}
    assert [(s["subject"], s["first_denied_ms"]) for s in report["subjects"]] == [("alice", DAY0 + 12 * HOUR_MS)]
    assert report["admin_changes"] == 1 and report["live_mismatches"] == 0


@pytest.fixture
async def pg_ledger(postgres_url: str) -> AsyncIterator[Ledger]:
    builder = RecordBuilder(load_policy(LIVE))
    recommend_story(builder, TODAY_MS)
    estimates_story(builder, TODAY_MS - 3 * DAY_MS)
    await write_ledger_url(postgres_url, builder.events)
    ledger = ledger_from_url(postgres_url)
    assert ledger is not None
    try:
        yield ledger
    finally:
        await ledger.close()


async def test_recommend_and_estimates_on_postgresql(pg_ledger: Ledger) -> None:
    policy = load_policy(LIVE)
    now = datetime.fromtimestamp((TODAY_MS + 15 * HOUR_MS) / 1000, UTC)
    reply = await recommendation(pg_ledger, policy, admin_pb2.RecommendRequest(), now=now)
    free = {(c.tier, c.metric): c for c in reply.caps}[("free", "tokens")]
    assert (free.subject_days, free.p50, free.at_percentile, free.max) == (20, 500, 950, 1000)
    assert [s.subject for s in reply.promotions] == ["climber"]
    assert {s.subject for s in reply.demotions} == {"idle", "whale", "e1", "e2"}
    found = await estimates(pg_ledger, policy, admin_pb2.GetEstimatesRequest(), now=now)
    summary = {(r.tier, r.feature, r.metric): r for r in found.ratios}[("pro", "summary", "tokens")]
    assert (summary.count, summary.p50, summary.p95) == (20, 0.5, 0.95)
