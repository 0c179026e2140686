"""Redis comes back empty while the service runs: detected by the store identity, the replica
fails closed (DENY, not ready, the last stops kept), and ``quota-service restore`` rebuilds the
counters, tiers, overrides and stops from the ledger; the replica then serves again by itself
and no capped subject gets its budget back."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.server_process import ROOT, ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import EmbeddedRedis

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

T = TypeVar("T")
POLICY = """\
version: 1
default_tier: tiny
prices:
  "openai/gpt-4o": {tokens: 0.00001}
tiers:
  tiny:
    features: [chat]
    limits:
      tokens: {day: 1000}
      cost_usd: {day: 1.00}
  big:
    features: [chat]
    limits:
      tokens: {day: 100000}
"""


def wait_until(what: Callable[[], T], seconds: float, message: str) -> T:
    deadline = time.monotonic() + seconds
    while True:
        found = what()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {message}")
        time.sleep(0.1)


@pytest.fixture
def served(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(POLICY)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    server = ServerProcess(
        redis_url=own_redis.url,
        workdir=tmp_path,
        policies=policies,
        extra_args=("--no-watch", "--ledger-url", ledger_url),
    )
    server.start(timeout=60)
    try:
        yield server, ledger_url
    finally:
        server.stop()


def ask(stub: quota_pb2_grpc.QuotaServiceStub, who: str, tokens: int = 100) -> quota_pb2.CheckAndReserveResponse:
    request = quota_pb2.CheckAndReserveRequest(
        subject=who, feature="chat", provider="openai", model="gpt-4o", usage={"tokens": tokens}
    )
    return stub.CheckAndReserve(request, timeout=5)


def restore(server: ServerProcess, ledger_url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quota_service.cli", "restore", "--policies", str(server.policies)]
    command += ["--redis-url", server.redis_url, "--ledger-url", ledger_url]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_an_empty_redis_is_detected_fails_closed_and_is_restored_from_the_ledger(
    served: tuple[ServerProcess, str],
) -> None:
    server, ledger_url = served
    run = uuid.uuid4().hex[:6]
    capped, stopped, vip = f"capped-{run}", f"stopped-{run}", f"vip-{run}"
    auth = (("authorization", f"Bearer {server.admin_token}"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(10):  # 1,000 tokens: at the block line (and the cap) of tiny's day
            answer = ask(stub, capped)
            assert answer.reservation_id
            stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 100}))
        assert ask(stub, capped).decision == quota_pb2.DENY
        admin.SetTier(admin_pb2.SetTierRequest(subject=vip, tier="big"), metadata=auth)
        admin.SetOverride(
            admin_pb2.SetOverrideRequest(subject=vip, metric="tokens", window="day", max=200000), metadata=auth
        )
        admin.EmergencyStop(
            admin_pb2.EmergencyStopRequest(scope=admin_pb2.SUBJECT, target=stopped, reason="runaway"), metadata=auth
        )
        assert ask(stub, stopped).reason == quota_pb2.EMERGENCY_STOP
        time.sleep(1.5)  # the relays' last passes: every record and admin change is in the ledger

        raw = redis.Redis.from_url(server.redis_url, decode_responses=True)
        try:
            used_before = {k: raw.hget(k, "used") for k in raw.scan_iter(f"q:{{{capped}}}:*")}
            raw.flushall()  # Redis comes back empty
        finally:
            raw.close()

        denied = wait_until(
            lambda: (a := ask(stub, capped)).reason == quota_pb2.STORE_ERROR and a, 5, "a lost store detected"
        )
        assert denied.decision == quota_pb2.DENY and "lost its data" in denied.message
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert ask(stub, stopped).decision == quota_pb2.DENY  # and nothing is granted to anyone meanwhile
        assert ask(stub, f"new-{run}").decision == quota_pb2.DENY
        assert "THE QUOTA STORE LOST ITS DATA" in server.log()

        done = restore(server, ledger_url)
        assert done.returncode == 0, done.stderr
        assert "emergency stops" in done.stdout

        wait_until(
            lambda: health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING,
            5,
            "serving again after the restore",
        )
        after = ask(stub, capped)
        assert after.decision == quota_pb2.DENY and after.reason == quota_pb2.BLOCK_THRESHOLD  # no budget back
        assert ask(stub, stopped).reason == quota_pb2.EMERGENCY_STOP  # the stop is back
        view = admin.GetSubject(admin_pb2.GetSubjectRequest(subject=vip), metadata=auth)
        assert view.tier == "big"
        assert [(o.metric, o.window, o.max) for o in view.overrides] == [("tokens", "day", 200000)]
        assert ask(stub, f"new-{run}").decision == quota_pb2.ALLOW
        raw = redis.Redis.from_url(server.redis_url, decode_responses=True)
        try:
            assert {k: raw.hget(k, "used") for k in raw.scan_iter(f"q:{{{capped}}}:*")} == used_before
        finally:
            raw.close()

    again = restore(server, ledger_url)  # onto a store that has its data: refused, nothing doubled
    assert again.returncode == 2 and "still has its identity" in again.stderr


def test_with_on_store_lost_restore_the_replica_restores_by_itself(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text("on_store_lost: restore\n" + POLICY)
    server = ServerProcess(
        redis_url=own_redis.url,
        workdir=tmp_path,
        policies=policies,
        extra_args=("--no-watch", "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}"),
    )
    server.start(timeout=60)
    try:
        capped = f"auto-{uuid.uuid4().hex[:6]}"
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            for _ in range(10):
                answer = ask(stub, capped)
                stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 100}))
            time.sleep(1.0)  # the records reach the ledger
            with redis.Redis.from_url(server.redis_url) as raw:
                raw.flushall()
            # detected within a second, restored from the ledger at once: still capped, then serving
            wait_until(lambda: ask(stub, capped).reason == quota_pb2.BLOCK_THRESHOLD, 10, "capped again after restore")
            assert ask(stub, f"fresh-{capped}").decision == quota_pb2.ALLOW
        assert "restored from the ledger automatically" in server.log()
    finally:
        server.stop()
