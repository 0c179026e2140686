"""``serve --shadow-policies``: a real server deciding a tighter shadow policy on every
request. Divergences are counted exactly (the metric, GetPolicyStatus), sampled into the
feed as SHADOW_DIVERGED events, and the live answers are the live policy's."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from support.server_process import SHIPPED_POLICIES, ServerProcess
from support.waiting import wait_for
from test_quotactl import Console

from quota.v1 import admin_pb2, admin_pb2_grpc, events_pb2, quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import free_port

pytestmark = pytest.mark.e2e

FREE = "    features: [blog_writer, basic_seo]\n    limits:\n      tokens: {day: 1000}\n"
# The shadow: free_alpha's tokens cap halved (warn line 400, block line 475) and one more feature.
SHADOW_FREE = "    features: [blog_writer, basic_seo, seo_analysis]\n    limits:\n      tokens: {day: 500}\n"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def divergences(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith("quota_shadow_divergences_total{")}


def test_shadow_divergences_are_counted_exactly_sampled_into_the_feed_and_never_enforced(
    redis_url: str, tmp_path: Path
) -> None:
    original = (SHIPPED_POLICIES / "alpha.yaml").read_text()
    assert original.count(FREE) == 1
    live_file = tmp_path / "live" / "alpha.yaml"
    shadow_file = tmp_path / "shadow" / "alpha.yaml"
    for path, text in ((live_file, original), (shadow_file, original.replace(FREE, SHADOW_FREE))):
        path.parent.mkdir()
        path.write_text(text)
    metrics_port = free_port()
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        policies=live_file,
        extra_args=("--shadow-policies", str(shadow_file), "--metrics-port", str(metrics_port), "--no-watch"),
    )
    server.start()
    tag = uuid.uuid4().hex[:6]
    heavy, light = f"heavy-{tag}", f"light-{tag}"
    auth = [("authorization", f"Bearer {server.admin_token}")]
    try:
        with grpc.insecure_channel(server.target) as channel:
            quota = quota_pb2_grpc.QuotaServiceStub(channel)
            admin = admin_pb2_grpc.AdminServiceStub(channel)

            def ask(who: str, feature: str = "blog_writer") -> quota_pb2.CheckAndReserveResponse:
                answer = quota.CheckAndReserve(
                    quota_pb2.CheckAndReserveRequest(
                        subject=who, feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": 100}
                    ),
                    timeout=5,
                )
                if answer.reservation_id:
                    quota.Commit(
                        quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 100}), timeout=5
                    )
                return answer

            # heavy: 7 x 100 tokens, committed one after the other (used before: 0, 100, ..., 600).
            # Live (cap 1000, warn line 800): ALLOW every time. Shadow (cap 500): ALLOW at 0-200,
            # WARN at 300 and 400 (projected >= 400), DENY at 500 and 600 (>= the 475 block line).
            answers = [ask(heavy) for _ in range(7)]
            # light: 2 x 100 (no divergence), then seo_analysis: live DENY (not in free_alpha),
            # the shadow has it and reads light's counters (200 used) off the path: ALLOW.
            answers += [ask(light), ask(light)]
            outside = ask(light, "seo_analysis")
            assert [a.decision for a in answers] == [quota_pb2.ALLOW] * 9  # the live policy's answers
            assert all(a.policy_version == answers[0].policy_version for a in answers)
            assert outside.decision == quota_pb2.DENY and outside.reason == quota_pb2.FEATURE_NOT_ALLOWED
            usage = quota.GetUsage(quota_pb2.GetUsageRequest(subject=heavy), timeout=5)
            tier_tokens = [
                (lim.max, lim.used)
                for lim in usage.limits
                if lim.metric == "tokens" and lim.kind == quota_pb2.LIMIT_KIND_TIER
            ]
            assert tier_tokens == [(1000, 700)]  # the live cap; the shadow reserved nothing

            expected = {
                'quota_shadow_divergences_total{reason="ALLOW->WARN",tier="free_alpha"}': 2.0,
                'quota_shadow_divergences_total{reason="ALLOW->DENY",tier="free_alpha"}': 2.0,
                'quota_shadow_divergences_total{reason="DENY->ALLOW",tier="free_alpha"}': 1.0,
            }
            wait_for(lambda: divergences(scrape(metrics_port)) == expected, time.monotonic(), 5.0, poll=0.05)
            time.sleep(0.3)  # nothing more arrives
            samples = scrape(metrics_port)
            assert divergences(samples) == expected
            assert samples["quota_shadow_decisions_total"] == 10

            status = admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), metadata=auth, timeout=5)
            assert status.HasField("shadow")
            assert status.shadow.version != status.status.version
            assert status.shadow.decided == 10 and status.shadow.dropped == 0
            assert {(d.tier, d.reason): d.count for d in status.shadow.divergences} == {
                ("free_alpha", "ALLOW->DENY"): 2,
                ("free_alpha", "ALLOW->WARN"): 2,
                ("free_alpha", "DENY->ALLOW"): 1,
            }
            assert status.shadow.sampled == 5  # 5 within the default 10 per second and tier
            shown = Console(server).ok("status")
            assert f"shadow version  {status.shadow.version}" in shown
            assert "free_alpha  ALLOW->DENY          2" in shown

            def shadow_events() -> list[events_pb2.Event]:
                found: list[events_pb2.Event] = []
                for who in (heavy, light):
                    reply = admin.ListEvents(
                        events_pb2.ListEventsRequest(subject=who, kinds=[events_pb2.SHADOW_DIVERGED]),
                        metadata=auth,
                        timeout=5,
                    )
                    found.extend(reply.events)
                return found

            wait_for(lambda: len(shadow_events()) == 5, time.monotonic(), 5.0, poll=0.05)
            events = shadow_events()
            pairs = sorted(json.loads(e.detail)["divergence"] for e in events)
            assert pairs == ["ALLOW->DENY", "ALLOW->DENY", "ALLOW->WARN", "ALLOW->WARN", "DENY->ALLOW"]
            denied = [e for e in events if e.decision == quota_pb2.DENY]
            assert {e.subject for e in denied} == {heavy}
            assert all(e.reason == quota_pb2.BLOCK_THRESHOLD and e.limit.max == 500 for e in denied)
            assert all(e.policy_version == status.shadow.version and e.tier == "free_alpha" for e in events)
    finally:
        server.stop()
