"""``quotactl`` end to end: the real console (``python -m quota_service.quotactl``) against the
real server process, real Redis, the shipped policies. Every command is checked twice: its
human output on meaningful content, and its ``--json`` output parsed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.server_process import ROOT, SHIPPED_POLICIES, ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service import quotactl_format as fmt

pytestmark = pytest.mark.e2e


def subject() -> str:
    return f"ctl-{uuid.uuid4().hex[:8]}"


def quotactl(
    target: str, *args: str, token: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the console as an operator would: target and token from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    env["QUOTA_TARGET"] = target
    if token is not None:
        env["QUOTA_ADMIN_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "quota_service.quotactl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


class Console:
    """quotactl bound to one server, with its admin token."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return quotactl(self.server.target, *args, token=self.server.admin_token)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"quotactl {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        assert done.stderr == ""
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def fails(self, exit_code: int, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode == exit_code, f"quotactl {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        assert done.stderr.startswith("quotactl: "), done.stderr
        return done


@pytest.fixture
def ctl(quota_server: ServerProcess) -> Console:
    return Console(quota_server)


@pytest.fixture
def stub(channel: grpc.Channel) -> quota_pb2_grpc.QuotaServiceStub:
    return quota_pb2_grpc.QuotaServiceStub(channel)


def spend(stub: quota_pb2_grpc.QuotaServiceStub, who: str, tokens: int, *, model: str = "gpt-4o-mini") -> None:
    """Reserve and commit ``tokens`` for ``who`` (openai/``model``, blog_writer)."""
    answer = stub.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject=who, feature="blog_writer", provider="openai", model=model, usage={"tokens": tokens}
        ),
        timeout=5,
    )
    assert answer.decision in (quota_pb2.ALLOW, quota_pb2.WARN), answer
    stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": tokens}), timeout=5)


def ask(stub: quota_pb2_grpc.QuotaServiceStub, who: str) -> quota_pb2.CheckAndReserveResponse:
    return stub.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject=who,
            feature="blog_writer",
            provider="openai",
            model="gpt-4o-mini",
            usage={"tokens": 1},
            dry_run=True,
        ),
        timeout=5,
    )


def row(output: str, *cells: str) -> str:
    """The one line of a table that holds every cell (as whole words), in order."""
    matches = [line for line in output.splitlines() if _has_in_order(line.split(), cells)]
    assert len(matches) == 1, f"{cells} in\n{output}"
    return matches[0]


def _has_in_order(words: list[str], cells: tuple[str, ...]) -> bool:
    position = 0
    for cell in cells:
        wanted = cell.split()
        while position + len(wanted) <= len(words) and words[position : position + len(wanted)] != wanted:
            position += 1
        if position + len(wanted) > len(words):
            return False
        position += len(wanted)
    return True


# --- policy: status and reload ---------------------------------------------------------------


def test_status(ctl: Console) -> None:
    out = ctl.ok("status")
    assert "default tier  free_alpha" in out
    assert "tiers         basic_alpha, free_alpha, pro_alpha" in out
    assert "files         " in out and "alpha.yaml" in out
    assert "last reload   ok" in out
    status = ctl.json("status")["status"]
    assert status["default_tier"] == "free_alpha"
    assert sorted(status["tiers"]) == ["basic_alpha", "free_alpha", "pro_alpha"]
    assert status["last_error"] == "" and status["last_error_at"] == 0
    assert abs(status["loaded_at"] - time.time()) < 120
    assert f"version       {status['version']}" in out


@pytest.fixture
def editable_server(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server over a copy of the shipped policies, without the file watcher: only
    ``quotactl reload`` reloads."""
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(SHIPPED_POLICIES / "alpha.yaml", policies / "alpha.yaml")
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, policies=policies, extra_args=("--no-watch",))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_reload_a_bad_edit_keeps_the_last_good_policy(editable_server: ServerProcess) -> None:
    ctl = Console(editable_server)
    policy_file = editable_server.policies / "alpha.yaml"
    good = policy_file.read_text()
    version = ctl.json("status")["status"]["version"]

    out = ctl.ok("reload")
    assert out.startswith(f"unchanged: the files still hold version {version}\n")
    assert ctl.json("reload") == {
        "changed": False,
        "status": ctl.json("status")["status"],
        "at_risk": [],  # reload --dry-run's fields: empty on a real reload
        "subjects_checked": 0,
    }

    policy_file.write_text(good + "surprise_key: 1\n")
    refused = ctl.fails(1, "reload")
    assert refused.stderr.startswith("quotactl: FAILED_PRECONDITION: ")
    assert "alpha.yaml" in refused.stderr and "surprise_key" in refused.stderr
    assert "the last good policy stays in force" in refused.stderr
    assert refused.stdout == ""

    out = ctl.ok("status")
    assert f"version       {version}" in out
    assert "FAILED at 20" in out and f"version {version} stays" in out
    assert "surprise_key" in out
    status = ctl.json("status")["status"]
    assert status["version"] == version and "surprise_key" in status["last_error"] and status["last_error_at"] > 0

    # Fixed: Free Alpha gets 2,000 tokens a day.
    policy_file.write_text(
        good.replace(
            "      tokens: {day: 1000}\n      images: {day: 5}", "      tokens: {day: 2000}\n      images: {day: 5}"
        )
    )
    reloaded = ctl.json("reload")
    assert reloaded["changed"] is True and reloaded["status"]["version"] != version
    assert reloaded["status"]["last_error"] == ""
    assert "last reload   ok" in ctl.ok("status")
    usage = ctl.ok("usage", subject())
    assert row(usage, "tokens", "day", "tier", "0", "0", "2,000")


# --- tiers --------------------------------------------------------------------------------


def test_tier_set_and_get(ctl: Console) -> None:
    who = subject()
    out = ctl.ok("tier", "get", who)
    assert f"subject  {who}" in out and "tier     free_alpha (policy default)" in out
    assert row(out, "tokens", "day", "tier", "0", "0", "1,000", "1,000", "0.0%")
    got = ctl.json("tier", "get", who)
    assert (got["subject"], got["tier"], got["tier_assigned"]) == (who, "free_alpha", False)
    assert got["overrides"] == [] and got["stops"] == []
    assert {(lim["metric"], lim["window"], lim["max"]) for lim in got["limits"]} >= {("tokens", "day", 1000.0)}

    out = ctl.ok("tier", "set", who, "basic_alpha", "--reason", "alpha tester")
    assert out.startswith(f"{who}: tier ") and out.rstrip().endswith("-> basic_alpha")
    out = ctl.ok("tier", "get", who)
    assert "tier     basic_alpha (assigned)" in out
    assert row(out, "tokens", "day", "tier", "0", "0", "10,000")
    assert row(out, "cost_usd", "month", "tier", "$0.00", "$0.00", "$100.00")

    moved = ctl.json("tier", "set", who, "pro_alpha")
    assert moved == {"subject": who, "tier": "pro_alpha", "previous_tier": "basic_alpha"}
    assert ctl.json("tier", "get", who)["tier_assigned"] is True

    unknown = ctl.fails(5, "tier", "set", who, "platinum")
    assert unknown.stderr.startswith("quotactl: NOT_FOUND: ") and "platinum" in unknown.stderr
    assert ctl.json("tier", "get", who)["tier"] == "pro_alpha"


# --- overrides ----------------------------------------------------------------------------


def test_override_set_list_delete(ctl: Console) -> None:
    who, other = subject(), subject()
    assert ctl.ok("override", "list", who) == f"no overrides for {who}\n"
    assert ctl.json("override", "list", who) == {"overrides": []}

    before = int(time.time())
    out = ctl.ok("override", "set", who, "tokens", "day", "5000", "--ttl", "1h", "--reason", "load test")
    assert out.startswith(f"{who}: tokens per day capped at 5,000 for 1h, until 20") and "(reason: load test)" in out
    made = ctl.json("override", "set", other, "cost_usd", "month", "25.5")["override"]
    assert (made["subject"], made["metric"], made["window"], made["max"], made["expires_at"]) == (
        other,
        "cost_usd",
        "month",
        25.5,
        0,
    )

    listed = ctl.json("override", "list", who)["overrides"]
    assert len(listed) == 1
    (override,) = listed
    assert (override["metric"], override["window"], override["max"], override["reason"]) == (
        "tokens",
        "day",
        5000.0,
        "load test",
    )
    assert before + 3600 - 5 <= override["expires_at"] <= int(time.time()) + 3600 + 5

    table = ctl.ok("override", "list")
    assert table.splitlines()[0].split() == [
        "SUBJECT",
        "METRIC",
        "WINDOW",
        "MAX",
        "EXPIRES",
        "(UTC)",
        "SET",
        "(UTC)",
        "BY",
        "REASON",
    ]
    assert row(table, who, "tokens", "day", "5,000", "load test")
    assert row(table, other, "cost_usd", "month", "$25.50", "never")
    assert {o["subject"] for o in ctl.json("override", "list")["overrides"]} == {who, other}

    # The override replaces the tier's cap in the subject's limits.
    usage = ctl.ok("usage", who)
    assert row(usage, "tokens", "day", "override", "0", "0", "5,000")
    assert row(ctl.ok("tier", "get", who), who, "tokens", "day", "5,000", "load test")

    assert "override deleted" in ctl.ok("override", "delete", who, "tokens", "day")
    missing = ctl.fails(5, "override", "delete", who, "tokens", "day")
    assert f"{who}" in missing.stderr and "tokens" in missing.stderr
    assert ctl.ok("override", "list", who) == f"no overrides for {who}\n"
    assert ctl.json("override", "delete", other, "cost_usd", "month") == {"deleted": True}
    assert ctl.json("override", "list") == {"overrides": []}


# --- emergency stops ------------------------------------------------------------------------


def wait_for(predicate: Any, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stop_resume_stops(ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub) -> None:
    who, bystander = subject(), subject()
    assert ctl.ok("stops") == "no emergency stops in force\n"
    assert ctl.json("stops") == {"stops": []}

    out = ctl.ok("stop", "SUBJECT", who, "--reason", "runaway loop")
    assert out == f"EMERGENCY STOP in force: subject {who} (reason: runaway loop)\n"
    assert wait_for(lambda: ask(stub, who).reason == quota_pb2.EMERGENCY_STOP), "the stop is not in force within 2 s"
    assert ask(stub, bystander).decision == quota_pb2.ALLOW

    pulled = ctl.json("stop", "provider", "openai", "--reason", "provider incident")["stop"]
    assert (pulled["scope"], pulled["target"], pulled["reason"]) == ("PROVIDER", "openai", "provider incident")
    assert pulled["created_at"] > 0
    assert wait_for(lambda: ask(stub, bystander).reason == quota_pb2.EMERGENCY_STOP)

    table = ctl.ok("stops")
    assert table.splitlines()[0].split() == ["SCOPE", "TARGET", "SINCE", "(UTC)", "UNTIL", "(UTC)", "BY", "REASON"]
    assert row(table, "subject", who, "runaway loop")
    assert row(table, "provider", "openai", "provider incident")
    stops = {(s["scope"], s["target"]) for s in ctl.json("stops")["stops"]}
    assert stops == {("SUBJECT", who), ("PROVIDER", "openai")}
    assert ctl.json("tier", "get", who)["stops"] != []

    assert ctl.ok("resume", "Provider", "openai") == "resumed: provider openai\n"
    assert wait_for(lambda: ask(stub, bystander).decision == quota_pb2.ALLOW)
    assert ask(stub, who).reason == quota_pb2.EMERGENCY_STOP
    assert ctl.json("resume", "subject", who) == {"resumed": True}
    assert wait_for(lambda: ask(stub, who).decision == quota_pb2.ALLOW)
    again = ctl.fails(5, "resume", "subject", who)
    assert f"no emergency stop on subject {who}" in again.stderr
    assert ctl.json("stops") == {"stops": []}


def test_a_global_stop_denies_everyone(ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub) -> None:
    assert ctl.ok("stop", "global", "--reason", "bleeding") == "EMERGENCY STOP in force: global (reason: bleeding)\n"
    assert wait_for(lambda: ask(stub, subject()).reason == quota_pb2.EMERGENCY_STOP)
    assert row(ctl.ok("stops"), "global", "*", "bleeding")
    assert ctl.ok("resume", "GLOBAL") == "resumed: global\n"
    assert wait_for(lambda: ask(stub, subject()).decision == quota_pb2.ALLOW)


# --- usage, top, reset ----------------------------------------------------------------------


def test_usage(ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub) -> None:
    who = subject()
    spend(stub, who, 300)
    out = ctl.ok("usage", who)
    assert f"subject  {who}" in out and "tier     free_alpha" in out
    assert row(out, "tokens", "day", "tier", "300", "0", "1,000", "700", "30.0%")
    assert row(out, "tokens", "day", "hard stop", "300", "0", "1,000", "700", "30.0%")
    # 300 tokens at $0.60 per million: $0.00018.
    assert row(out, "cost_usd", "month", "tier", "$0.00018", "$0.00", "$10.00")
    reply = ctl.json("usage", who)
    assert reply["tier"] == "free_alpha" and reply["policy_version"]
    tier_tokens = next(
        lim
        for lim in reply["limits"]
        if (lim["metric"], lim["window"], lim["kind"]) == ("tokens", "day", "LIMIT_KIND_TIER")
    )
    assert (tier_tokens["used"], tier_tokens["held"], tier_tokens["max"], tier_tokens["ratio"]) == (300, 0, 1000, 0.3)


def test_top(ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub) -> None:
    big, middle, small = subject(), subject(), subject()
    spend(stub, big, 600)
    spend(stub, middle, 250)
    spend(stub, small, 40)
    out = ctl.ok("top", "tokens", "day", "-n", "2")
    lines = out.splitlines()
    assert lines[0].startswith("top 2 by tokens per day (window from 20") and lines[0].endswith("T00:00:00Z)")
    assert lines[2].split() == ["#", "SUBJECT", "USED", "HELD", "TOTAL"]
    assert lines[3].split() == ["1", big, "600", "0", "600"]
    assert lines[4].split() == ["2", middle, "250", "0", "250"]
    assert len(lines) == 5

    reply = ctl.json("top", "tokens", "day")
    assert [(e["subject"], e["used"]) for e in reply["entries"]] == [(big, 600), (middle, 250), (small, 40)]
    assert reply["window_start"] % 86400 == 0  # UTC calendar day

    money = ctl.ok("top", "cost_usd", "day", "-n", "1")
    assert money.splitlines()[3].split() == ["1", big, "$0.00036", "$0.00", "$0.00036"]
    assert "no usage in this window" in ctl.ok("top", "images", "day")


def test_reset(ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub) -> None:
    who, keep = subject(), subject()
    spend(stub, who, 500)
    spend(stub, keep, 500)
    out = ctl.ok("reset", who, "--metric", "tokens", "--window", "day", "--reason", "support ticket 7")
    assert out.startswith(f"{who}: ") and "counter(s) reset (tokens, day)" in out
    assert int(out.split(": ")[1].split()[0]) >= 1
    assert row(ctl.ok("usage", who), "tokens", "day", "tier", "0", "0", "1,000")
    assert row(ctl.ok("usage", keep), "tokens", "day", "tier", "500", "0", "1,000")

    spend(stub, who, 100)
    reset = ctl.json("reset", who)
    assert reset["counters_reset"] >= 1
    usage = ctl.json("usage", who)
    assert all(lim["used"] == 0 for lim in usage["limits"] if lim["kind"] != "LIMIT_KIND_GLOBAL")


# --- audit --------------------------------------------------------------------------------


def test_audit(ctl: Console) -> None:
    who, other = subject(), subject()
    ctl.ok("tier", "set", who, "basic_alpha", "--reason", "moved to basic")
    ctl.ok("override", "set", who, "images", "day", "20", "--reason", "campaign")
    ctl.ok("tier", "set", other, "pro_alpha", "--reason", "vip")

    out = ctl.ok("audit", "--limit", "10")
    assert out.splitlines()[0].split() == ["AT", "(UTC)", "ACTOR", "ACTION", "TARGET", "REASON", "CHANGE"]
    set_tier = row(out, "SetTier", who, "moved to basic")
    assert "basic_alpha" in set_tier and "token:" in set_tier
    assert row(out, "SetOverride", who, "campaign")
    assert row(out, "SetTier", other, "vip")

    entries = ctl.json("audit", "--subject", who)["entries"]
    assert [e["action"] for e in entries] == ["SetOverride", "SetTier"]  # newest first
    assert all(who in e["target"] for e in entries)
    tier_change = entries[1]
    assert json.loads(tier_change["after"])["tier"] == "basic_alpha"
    assert tier_change["reason"] == "moved to basic" and tier_change["actor"].startswith("token:")
    assert tier_change["at"] > (time.time() - 120) * 1000
    assert len(ctl.json("audit", "--limit", "1")["entries"]) == 1


# --- failures: credentials, unreachable, usage ------------------------------------------------


def test_a_wrong_token_exits_4(quota_server: ServerProcess) -> None:
    wrong = quotactl(quota_server.target, "status", token="not-the-token")
    assert wrong.returncode == 4 and wrong.stdout == ""
    assert wrong.stderr.startswith("quotactl: PERMISSION_DENIED: ")
    missing = quotactl(quota_server.target, "stops", token="")
    assert missing.returncode == 4
    assert missing.stderr.startswith("quotactl: UNAUTHENTICATED: ") and "QUOTA_ADMIN_TOKEN" in missing.stderr


def test_a_server_that_is_down_exits_3_within_the_timeout(quota_server: ServerProcess) -> None:
    target = quota_server.target
    quota_server.stop()
    started = time.monotonic()
    down = quotactl(target, "--timeout", "2", "status", token=quota_server.admin_token)
    assert down.returncode == 3 and down.stdout == ""
    assert (
        down.stderr.startswith("quotactl: UNAVAILABLE: ") and f"cannot reach quota-service at {target}" in down.stderr
    )
    assert time.monotonic() - started < 2 + 8  # the timeout plus the interpreter's start-up


def test_a_server_that_never_answers_exits_3_at_the_deadline() -> None:
    # A socket that accepts connections (the kernel's backlog) but never speaks HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        hung = quotactl(target, "--timeout", "1", "stops", token="t")
        elapsed = time.monotonic() - started
    assert hung.returncode == 3, hung.stderr
    assert hung.stderr.split(":")[1].strip() in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
    assert elapsed < 1 + 8


def test_usage_errors_exit_2(quota_server: ServerProcess) -> None:
    for args in (["frobnicate"], ["stop", "subject", "u1"], ["stop", "galaxy", "--reason", "x"], []):
        done = quotactl(quota_server.target, *args, token=quota_server.admin_token)
        assert done.returncode == 2, (args, done.stderr)
        assert "usage: quotactl" in done.stderr and done.stdout == ""


# --- hostile text: escaped on the operator's screen, exact in --json ---------------------------

#: What an admin may write in a reason (newlines are allowed) that must not reach a terminal
#: raw: a forged table row, bidi overrides and isolates, invisible characters.
HOSTILE_REASON = "ok\nctl-forged  tokens  day  1  FORGED\u202eabc\u2066x\u2069\u200b\ufeffend"
HOSTILE_SHOWN = "ok\\nctl-forged  tokens  day  1  FORGED\\u202eabc\\u2066x\\u2069\\u200b\\ufeffend"


def assert_nothing_raw(text: str) -> None:
    raw = {ch for ch in text if ch != "\n" and fmt.visible(ch) != ch}
    assert not raw, f"raw characters {sorted(raw)!r} in\n{text}"
    assert not any(line.startswith("ctl-forged") for line in text.splitlines()), text


def test_hostile_reasons_are_escaped_in_tables_and_sentences(
    ctl: Console, stub: quota_pb2_grpc.QuotaServiceStub
) -> None:
    who = subject()
    spend(stub, who, 10)
    said = [
        ctl.ok("override", "set", who, "tokens", "day", "500", "--reason", HOSTILE_REASON),
        ctl.ok("stop", "subject", who, "--reason", HOSTILE_REASON),
        ctl.ok("tier", "set", who, "basic_alpha", "--reason", HOSTILE_REASON),
        ctl.ok("reset", who, "--reason", HOSTILE_REASON),
    ]
    assert said[0].endswith(f"(reason: {HOSTILE_SHOWN})\n") and said[0].count("\n") == 1
    assert said[1] == f"EMERGENCY STOP in force: subject {who} (reason: {HOSTILE_SHOWN})\n"
    shown = {
        "override list": ctl.ok("override", "list"),
        "stops": ctl.ok("stops"),
        "tier get": ctl.ok("tier", "get", who),
        "audit": ctl.ok("audit", "--subject", who),
    }
    for text in [*said, *shown.values()]:
        assert_nothing_raw(text)
    assert row(shown["override list"], who, "tokens", "day", "500", HOSTILE_SHOWN)
    assert row(shown["stops"], "subject", who, HOSTILE_SHOWN)
    assert row(shown["tier get"], who, "tokens", "day", "500", HOSTILE_SHOWN)
    audit = shown["audit"].splitlines()
    assert len(audit) == 1 + 4  # the header and one line per change, however many newlines the reasons hold
    assert all(HOSTILE_SHOWN in line for line in audit[1:])

    # --json stays exact: the reason as written, in printable-ASCII JSON.
    for args in (["override", "list", who], ["stops"], ["audit", "--subject", who]):
        out = ctl.ok("--json", *args)
        assert all(ch == "\n" or " " <= ch <= "~" for ch in out), out
    assert ctl.json("override", "list", who)["overrides"][0]["reason"] == HOSTILE_REASON
    assert ctl.json("stops")["stops"][0]["reason"] == HOSTILE_REASON
    assert {e["reason"] for e in ctl.json("audit", "--subject", who)["entries"]} == {HOSTILE_REASON}


def test_a_policy_error_with_control_characters_is_escaped(editable_server: ServerProcess) -> None:
    ctl = Console(editable_server)
    policy_file = editable_server.policies / "alpha.yaml"
    # A YAML key may hold any character through an escape: ESC [2J clears the screen.
    policy_file.write_text(policy_file.read_text() + '"evil\\e[2J\\u202ekey": 1\n')
    refused = ctl.fails(1, "reload")
    assert_nothing_raw(refused.stderr)
    assert "evil\\x1b[2J\\u202ekey" in refused.stderr
    status = ctl.ok("status")
    assert_nothing_raw(status)
    assert "evil\\x1b[2J\\u202ekey" in status
    assert "evil\x1b[2J\u202ekey" in ctl.json("status")["status"]["last_error"]  # exact in JSON
