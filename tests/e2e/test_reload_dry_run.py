"""``quotactl reload --dry-run`` against a real server: the diff against the policy in force
and the active subjects who would be WARN or DENY now, with nothing swapped; then a real
reload, after which GetPolicyStatus carries the change's summary."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import SHIPPED_POLICIES, ServerProcess
from test_quotactl import Console

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e

FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"  # free_alpha's limits in alpha.yaml


class Served:
    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.file = workdir / "policies" / "alpha.yaml"
        self.file.parent.mkdir()
        self.original = (SHIPPED_POLICIES / "alpha.yaml").read_text()
        assert self.original.count(FREE_TOKENS) == 1
        self.file.write_text(self.original)
        # --no-watch: the edit below must not be reloaded by the watcher behind the test's back.
        self.server = ServerProcess(
            redis_url=redis_url, workdir=workdir, policies=self.file, extra_args=("--no-watch",)
        )
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.target)
        self.quota = quota_pb2_grpc.QuotaServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.auth = [("authorization", f"Bearer {self.server.admin_token}")]

    def spend(self, who: str, tokens: int) -> None:
        answer = self.quota.CheckAndReserve(
            quota_pb2.CheckAndReserveRequest(
                subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
            ),
            timeout=5,
        )
        assert answer.decision != quota_pb2.DENY, answer
        self.quota.Commit(
            quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": tokens}), timeout=5
        )

    def status(self) -> admin_pb2.PolicyStatus:
        return self.admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), metadata=self.auth, timeout=5).status

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[Served]:
    it = Served(redis_url, tmp_path)
    try:
        yield it
    finally:
        it.close()


def test_dry_run_shows_the_diff_and_who_would_be_denied_then_a_reload_keeps_the_change(served: Served) -> None:
    tag = uuid.uuid4().hex[:6]
    heavy, warm, light = f"heavy-{tag}", f"warm-{tag}", f"light-{tag}"
    served.spend(heavy, 700)  # live cap 1000: ALLOW (warn line 800); at 500: past the block line (475)
    served.spend(warm, 420)  # at 500: at the warn line (400), under the block line: WARN
    served.spend(light, 100)  # at 500: ALLOW
    before = served.status()
    assert not before.HasField("last_change")

    served.file.write_text(served.original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "500")))
    ctl = Console(served.server)
    out = ctl.ok("reload", "--dry-run")
    assert f"dry run: nothing swapped; version {before.version} stays in force" in out
    assert "tier free_alpha:\n  cap tokens/day: 1,000 tokens -> 500 tokens" in out
    lines = out.splitlines()
    heavy_line = next(line for line in lines if line.startswith(heavy))
    warm_line = next(line for line in lines if line.startswith(warm))
    assert heavy_line.split()[1:5] == ["free_alpha", "ALLOW", "DENY", "BLOCK_THRESHOLD"], heavy_line
    assert warm_line.split()[1:5] == ["free_alpha", "ALLOW", "WARN", "WARN_THRESHOLD"], warm_line
    assert not any(line.startswith(light) for line in lines)
    assert lines.index(heavy_line) < lines.index(warm_line)  # DENY first

    reply = json.loads(ctl.ok("--json", "reload", "--dry-run"))
    assert reply["changed"] is True
    assert [(c["tier"], c["category"], c["key"], c["before"], c["after"]) for c in reply["diff"]["changes"]] == [
        ("free_alpha", "cap", "tokens/day", "1000", "500")
    ]
    risky = {e["subject"]: e for e in reply["at_risk"]}
    assert set(risky) >= {heavy, warm} and light not in risky
    assert risky[heavy]["decision"] == "DENY" and risky[heavy]["limit"]["max"] == 500
    assert reply["subjects_checked"] >= 3

    # Nothing swapped: the policy in force still has the 1000 cap, and the status is as it was.
    after_dry = served.status()
    assert after_dry.version == before.version
    assert not after_dry.HasField("last_change") and not after_dry.last_error
    usage = served.quota.GetUsage(quota_pb2.GetUsageRequest(subject=heavy), timeout=5)
    tier_caps = [lim.max for lim in usage.limits if lim.metric == "tokens" and lim.kind == quota_pb2.LIMIT_KIND_TIER]
    assert tier_caps == [1000]

    # A real reload: the status keeps what it changed, and when.
    out = ctl.ok("reload")
    assert "reloaded: version" in out and "cap tokens/day: 1,000 tokens -> 500 tokens" in out
    status = served.status()
    assert status.version != before.version
    change = status.last_change
    assert change.at >= before.loaded_at
    assert change.diff.old_version == before.version and change.diff.new_version == status.version
    assert change.diff.summary == "free_alpha: cap tokens/day: 1,000 tokens -> 500 tokens"
    assert "last change" in ctl.ok("status")


def test_dry_run_of_a_bad_file_is_refused_and_changes_nothing(served: Served) -> None:
    before = served.status()
    served.file.write_text(served.original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "-1")))
    done = Console(served.server).fails(1, "reload", "--dry-run")
    assert "FAILED_PRECONDITION" in done.stderr and "tokens" in done.stderr
    after = served.status()
    assert after.version == before.version and after.last_error == ""
