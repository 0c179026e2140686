"""Hot reload end to end: a real server watching a policy file that the test edits in place.

Good edits apply within 2 seconds (measured); broken ones (YAML syntax, then a schema error)
keep the last good caps and are reported in GetPolicyStatus.last_error (file, line, key)
and the log; fixing the file recovers without a restart; counters survive every reload;
SIGHUP reloads a server that does not watch; the ReloadPolicies RPC refuses a bad file
with FAILED_PRECONDITION; hostile edits (a NUL byte, deep nesting) are reported the same way
and never stop the watcher."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import SHIPPED_POLICIES, ServerProcess
from support.waiting import wait_for

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e

FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"  # free_alpha's limits in alpha.yaml


def free_tokens(day: str) -> str:
    return FREE_TOKENS.replace("1000", day)


class Editable:
    """A server on a private copy of alpha.yaml, with stubs and the file to edit."""

    def __init__(self, redis_url: str, workdir: Path, *extra: str) -> None:
        self.policy_dir = workdir / "policies"
        self.policy_dir.mkdir()
        self.file = self.policy_dir / "alpha.yaml"
        self.original = (SHIPPED_POLICIES / "alpha.yaml").read_text()
        assert self.original.count(FREE_TOKENS) == 1
        self.file.write_text(self.original)
        self.server = ServerProcess(redis_url=redis_url, workdir=workdir, policies=self.file, extra_args=extra)
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.target)
        self.quota = quota_pb2_grpc.QuotaServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.auth = [("authorization", f"Bearer {self.server.admin_token}")]

    def edit(self, text: str) -> float:
        """Write the file in place (as `echo > file` would); returns when (monotonic)."""
        self.file.write_text(text)
        return time.monotonic()

    def status(self) -> admin_pb2.PolicyStatus:
        return self.admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), metadata=self.auth, timeout=5).status

    def tokens_cap(self, who: str) -> tuple[float, float]:
        """(max, used) of the subject's tier tokens/day limit."""
        usage = self.quota.GetUsage(quota_pb2.GetUsageRequest(subject=who), timeout=5)
        limit = next(lim for lim in usage.limits if lim.metric == "tokens" and lim.kind == quota_pb2.LIMIT_KIND_TIER)
        return limit.max, limit.used

    def spend(self, who: str, tokens: int) -> None:
        answer = self.quota.CheckAndReserve(
            quota_pb2.CheckAndReserveRequest(
                subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
            ),
            timeout=5,
        )
        assert answer.decision != quota_pb2.DENY, answer
        self.quota.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": tokens}))

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def editable(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Editable]]:
    made: list[Editable] = []

    def make(*extra: str) -> Editable:
        workdir = tmp_path / f"server-{len(made)}"
        workdir.mkdir()
        made.append(Editable(redis_url, workdir, *extra))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.close()


def test_edits_apply_within_2_seconds_bad_ones_are_refused_and_fixing_recovers(
    editable: Callable[..., Editable],
) -> None:
    live = editable()
    who = f"user-{uuid.uuid4().hex[:8]}"
    live.spend(who, 300)
    first = live.status()
    assert live.tokens_cap(who) == (1000, 300) and not first.last_error

    written = live.edit(live.original.replace(FREE_TOKENS, free_tokens("2000")))
    delay = wait_for(lambda: live.tokens_cap(who)[0] == 2000, written, 2.0)
    print(f"\nhot reload: new caps in force {delay * 1000:.0f} ms after the write")
    assert live.tokens_cap(who) == (2000, 300)  # counters survive a reload
    second = live.status()
    assert second.version != first.version and not second.last_error and second.loaded_at >= first.loaded_at

    # A YAML syntax error: the last good policy stays; the status names file and line.
    written = live.edit(live.original.replace(FREE_TOKENS, free_tokens("2000")) + "\ntiers: [unclosed\n")
    wait_for(lambda: bool(live.status().last_error), written, 2.0)
    broken = live.status()
    assert broken.version == second.version and broken.last_error_at > 0
    assert f"{live.file}:" in broken.last_error and "invalid YAML" in broken.last_error, broken.last_error
    assert live.tokens_cap(who) == (2000, 300)

    # A schema error: file, line and key.
    written = live.edit(live.original.replace(FREE_TOKENS, free_tokens("-5")))
    wait_for(lambda: "must not be negative" in live.status().last_error, written, 2.0)
    error = live.status().last_error
    line = live.original[: live.original.index(FREE_TOKENS)].count("\n") + 1
    assert error.startswith(f"{live.file}:{line}: tiers.free_alpha.limits.tokens.day: "), error
    assert live.status().version == second.version and live.tokens_cap(who) == (2000, 300)
    assert "policy reload failed, keeping version" in live.server.log()

    # Fixed: recovers without a restart, error cleared, counters intact.
    written = live.edit(live.original.replace(FREE_TOKENS, free_tokens("3000")))
    delay = wait_for(lambda: live.tokens_cap(who)[0] == 3000, written, 2.0)
    print(f"hot reload after a fix: {delay * 1000:.0f} ms")
    fixed = live.status()
    assert not fixed.last_error and fixed.last_error_at == 0 and fixed.version not in (first.version, second.version)
    assert live.tokens_cap(who) == (3000, 300)


def test_sighup_reloads_a_server_that_does_not_watch(editable: Callable[..., Editable]) -> None:
    live = editable("--no-watch")
    who = f"user-{uuid.uuid4().hex[:8]}"
    live.edit(live.original.replace(FREE_TOKENS, free_tokens("4000")))
    time.sleep(1.0)
    assert live.tokens_cap(who)[0] == 1000  # not watching: nothing happened
    assert live.server.process is not None
    sent = time.monotonic()
    live.server.process.send_signal(signal.SIGHUP)
    delay = wait_for(lambda: live.tokens_cap(who)[0] == 4000, sent, 2.0)
    print(f"\nSIGHUP reload: {delay * 1000:.0f} ms")


def test_the_reload_rpc_refuses_a_bad_file_with_failed_precondition(editable: Callable[..., Editable]) -> None:
    live = editable("--no-watch")
    before = live.status()
    unchanged = live.admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), metadata=live.auth, timeout=5)
    assert not unchanged.changed and unchanged.status.version == before.version

    live.edit(live.original.replace(FREE_TOKENS, free_tokens("-5")))
    with pytest.raises(grpc.RpcError) as info:
        live.admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), metadata=live.auth, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tiers.free_alpha.limits.tokens.day" in (info.value.details() or "")
    status = live.status()
    assert "tiers.free_alpha.limits.tokens.day" in status.last_error and status.version == before.version

    live.edit(live.original.replace(FREE_TOKENS, free_tokens("5000")))
    reloaded = live.admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), metadata=live.auth, timeout=5)
    assert reloaded.changed and not reloaded.status.last_error and reloaded.status.version != before.version
    assert live.tokens_cap("anyone")[0] == 5000


def test_hostile_edits_are_reported_and_the_watcher_picks_up_the_next_good_edit(
    editable: Callable[..., Editable],
) -> None:
    """A NUL byte (or 1,000 nested lists, or an alias bomb) once killed the watcher task:
    GetPolicyStatus said nothing, ReloadPolicies answered INTERNAL and later good edits were
    ignored. Now each is a policy error with file and line, and watching goes on.
    (The 20 s waits are hang guards, not claims about speed.)"""
    live = editable()
    who = f"user-{uuid.uuid4().hex[:8]}"
    good = live.status()
    nul_line = live.original[: live.original.index("free_alpha:")].count("\n") + 1

    written = live.edit(live.original.replace("free_alpha:", "free_alpha:\x00", 1))
    wait_for(lambda: "NUL byte" in live.status().last_error, written, 20.0)
    status = live.status()
    assert status.last_error == f"{live.file}:{nul_line}: the file contains a NUL byte; a policy file is UTF-8 text"
    assert status.version == good.version and status.last_error_at > 0
    with pytest.raises(grpc.RpcError) as info:
        live.admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), metadata=live.auth, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{live.file}:{nul_line}: the file contains a NUL byte" in (info.value.details() or "")

    written = live.edit("version: " + "[" * 1000 + "\n")
    wait_for(lambda: "nested more than 64 levels deep" in live.status().last_error, written, 20.0)
    assert live.status().last_error == f"{live.file}:1: nested more than 64 levels deep"

    written = live.edit(live.original.replace(FREE_TOKENS, free_tokens("2500")))
    wait_for(lambda: live.tokens_cap(who)[0] == 2500, written, 20.0)
    fixed = live.status()
    assert not fixed.last_error and fixed.version != good.version
    assert "Traceback" not in live.server.log()
