"""Prometheus metrics on --metrics-port: decisions by reason, RPC latency, reload failures."""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from support.server_process import SHIPPED_POLICIES, ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import free_port

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_decisions_latency_and_failed_reloads(redis_url: str, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies, ignore=shutil.ignore_patterns("*.json"))
    metrics_port = free_port()
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        policies=policies,
        extra_args=("--metrics-port", str(metrics_port), "--no-watch"),
    )
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            for feature in ("blog_writer", "blog_writer", "seo_analysis"):
                stub.CheckAndReserve(
                    quota_pb2.CheckAndReserveRequest(
                        subject="metered", feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": 5}
                    ),
                    timeout=5,
                )
            samples = scrape(metrics_port)
            assert samples['quota_decisions_total{decision="ALLOW",reason="WITHIN_LIMITS"}'] == 2
            assert samples['quota_decisions_total{decision="DENY",reason="FEATURE_NOT_ALLOWED"}'] == 1
            assert samples['quota_rpc_seconds_count{method="CheckAndReserve"}'] == 3
            assert samples.get("quota_policy_reload_failures_total", 0) == 0

            (policies / "alpha.yaml").write_text("version: 1\ntiers: [broken\n")
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                admin.ReloadPolicies(
                    admin_pb2.ReloadPoliciesRequest(), metadata=[("authorization", f"Bearer {server.admin_token}")]
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            deadline = time.monotonic() + 5
            while scrape(metrics_port).get("quota_policy_reload_failures_total", 0) < 1:
                assert time.monotonic() < deadline, "the failed reload never showed in the metric"
                time.sleep(0.05)
    finally:
        server.stop()
