"""``quotactl recommend`` and ``quotactl estimates`` against a real server over a recorded ledger.

The server serves tests/fixtures/policies/lifecycle/live.yaml on a SQLite ledger into which
the recorded history is then written through the real ledger store (tests/support/
ledger_fixture.py: the known distributions, relative to today; written once the server runs,
as a ledger shared with other replicas fills: records in a ledger before an empty Redis
would mean the store lost its data); quotactl runs as an operator would, with the viewer
token (both are reads) and with the admin token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.http_server import VIEWER_TOKEN, HttpServerProcess, call
from support.ledger_fixture import DAY_MS, RecordBuilder, estimates_story, recommend_story, write_ledger
from support.server_process import ROOT, ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.cli import main
from quota_service.policy.loader import load_policy

pytestmark = pytest.mark.e2e

LIVE = ROOT / "tests" / "fixtures" / "policies" / "lifecycle" / "live.yaml"
VIEWER = "lifecycle-viewer-token"


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    today_ms = int(time.time() * 1000) // DAY_MS * DAY_MS
    builder = RecordBuilder(load_policy(LIVE))
    recommend_story(builder, today_ms)
    estimates_story(builder, today_ms - 3 * DAY_MS)
    ledger = tmp_path / "recorded.db"
    process = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        policies=LIVE,
        extra_args=("--ledger-url", f"sqlite:///{ledger}", "--viewer-token", VIEWER),
    )
    process.start()
    try:
        asyncio.run(write_ledger(ledger, builder.events))
        yield process
    finally:
        process.stop()


def quotactl(server: ServerProcess, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    env["QUOTA_TARGET"] = server.target
    env["QUOTA_ADMIN_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "quota_service.quotactl", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_recommend_as_a_viewer(server: ServerProcess) -> None:
    done = quotactl(server, "--json", "recommend", token=VIEWER)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    caps = {(c["tier"], c["metric"]): c for c in reply["caps"]}
    free = caps[("free", "tokens")]
    assert (free["subject_days"], free["p50"], free["at_percentile"], free["max"]) == (20, 500, 950, 1000)
    assert (free["current_cap"], free["suggested_cap"]) == (1000, 950)
    assert [(p["subject"], p["suggested_tier"], p["days"]) for p in reply["promotions"]] == [("climber", "basic", 4)]
    assert {d["subject"] for d in reply["demotions"]} >= {"idle", "whale"}
    assert "busy" not in {d["subject"] for d in reply["demotions"]}

    table = quotactl(server, "recommend", "--percentile", "90", "--tier", "free", token=VIEWER)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "nothing applied" in out
    free_row = next(line for line in out.splitlines() if line.startswith("free") and "tokens" in line)
    assert "900" in free_row and "1,000" in free_row and "-10%" in free_row
    assert "climber" in out and "at WARN or BLOCK on 4 of the last 14 days" in out


def test_estimates_as_a_viewer_and_an_admin(server: ServerProcess) -> None:
    done = quotactl(server, "--json", "estimates", "--days", "7", token=VIEWER)
    assert done.returncode == 0, done.stderr
    ratios = {(r["tier"], r["feature"], r["metric"]): r for r in json.loads(done.stdout)["ratios"]}
    summary = ratios[("pro", "summary", "tokens")]
    assert (summary["count"], summary["p50"], summary["p95"]) == (20, 0.5, 0.95)
    assert ratios[("basic", "seo", "tokens")]["p95"] == 1.2
    table = quotactl(server, "estimates", "--tier", "basic", token=server.admin_token)
    assert table.returncode == 0, table.stderr
    assert "seo" in table.stdout and "1.200" in table.stdout and "summary" not in table.stdout


def test_a_viewer_still_cannot_write(server: ServerProcess) -> None:
    done = quotactl(server, "tier", "set", "idle", "free", token=VIEWER)
    assert done.returncode != 0
    assert "PERMISSION_DENIED" in done.stderr or "permission" in done.stderr.lower()


def test_a_bad_option_is_invalid_argument(server: ServerProcess) -> None:
    done = quotactl(server, "recommend", "--tier", "gold", token=VIEWER)
    assert done.returncode != 0
    assert "tier 'gold' does not exist" in done.stderr


def test_recommend_and_estimates_on_the_json_api(redis_url: str, tmp_path: Path) -> None:
    server = HttpServerProcess(redis_url=redis_url, workdir=tmp_path, policies=LIVE)
    server.start()
    try:
        today_ms = int(time.time() * 1000) // DAY_MS * DAY_MS
        builder = RecordBuilder(load_policy(LIVE))
        recommend_story(builder, today_ms)
        estimates_story(builder, today_ms - 3 * DAY_MS)
        asyncio.run(write_ledger(tmp_path / "data" / "ledger.db", builder.events))
        status, reply = call(server, "AdminService", "Recommend", {"tier": "free"}, token=VIEWER_TOKEN)
        assert status == 200, reply
        free = {(c["tier"], c["metric"]): c for c in reply["caps"]}[("free", "tokens")]
        assert (free["atPercentile"], free["currentCap"]) == (950, 1000)
        status, reply = call(server, "AdminService", "GetEstimates", {"days": 7}, token=VIEWER_TOKEN)
        assert status == 200, reply
        assert {r["feature"] for r in reply["ratios"]} >= {"summary", "seo"}
        status, reply = call(server, "AdminService", "Recommend", {"percentile": 150}, token=VIEWER_TOKEN)
        assert (status, reply["code"]) == (400, "invalid_argument")
    finally:
        server.stop()


def test_simulate_replays_what_a_real_server_recorded(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records written by the service itself (outbox -> relay -> ledger): the live policy
    replayed gives every recorded answer again; a tighter candidate denies earlier."""
    ledger = tmp_path / "served.db"
    process = ServerProcess(
        redis_url=redis_url, workdir=tmp_path, policies=LIVE, extra_args=("--ledger-url", f"sqlite:///{ledger}")
    )
    process.start()
    answers = []
    try:
        with grpc.insecure_channel(process.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            # free: 1,000 tokens a day, warn 800, block 950: 300 ALLOW, 600 ALLOW, 900 WARN, then DENY
            for n in range(4):
                answer = stub.CheckAndReserve(
                    quota_pb2.CheckAndReserveRequest(
                        subject="served", feature="chat", provider="openai", model="gpt-4o",
                        usage={"tokens": 300}, request_id=f"r{n}",
                    ),
                    timeout=5,
                )  # fmt: skip
                answers.append(quota_pb2.Decision.Name(answer.decision))
                if answer.decision != quota_pb2.DENY:
                    stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 300}))
        deadline = time.monotonic() + 10
        while True:  # the relay moves the records from Redis to the ledger within a moment
            code = main(
                ["simulate", "--live", str(LIVE), "--policy", str(LIVE), "--ledger", f"sqlite:///{ledger}", "--json"]
            )
            report = json.loads(capsys.readouterr().out)
            if report["requests"] == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        process.stop()
    assert answers == ["ALLOW", "ALLOW", "WARN", "DENY"]
    assert code == 0
    assert (report["requests"], report["live_mismatches"], report["changed"]) == (4, 0, 0)
    assert report["recorded_cost_micros"] == report["live_cost_micros"] == 9000  # 900 tokens at $10 / 1M
    code = main(
        [
            "simulate",
            "--live",
            str(LIVE),
            "--policy",
            str(LIVE.parent / "tighter.yaml"),
            "--ledger",
            f"sqlite:///{ledger}",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 2
    # 500 a day (warn 400, block 475): 300 ALLOW, 600 > 500 DENY, 600 DENY, 600 DENY
    assert report["changes"] == {"ALLOW->DENY": 1, "WARN->DENY": 1}
    assert report["candidate_cost_micros"] == 3000
