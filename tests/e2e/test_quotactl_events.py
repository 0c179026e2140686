"""Admin changes in the event feed, ``quotactl events`` and ``quotactl webhooks``, end to end:
the real server (audit relay, webhook deliverer, SQLite ledger), the real console, real Redis."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.server_process import ROOT, SHIPPED_POLICIES, ServerProcess

pytestmark = pytest.mark.e2e

VIEWER = "viewer-" + uuid.uuid4().hex
SECRET = "whsec_" + base64.b64encode(b"an e2e webhook key of 32 bytes!!").decode()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console_env(server: ServerProcess, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    env.update(QUOTA_TARGET=server.target, QUOTA_ADMIN_TOKEN=token)
    return env


def quotactl(server: ServerProcess, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "quota_service.quotactl", *args],
        capture_output=True,
        text=True,
        env=console_env(server, token or server.admin_token),
        cwd=ROOT,
        timeout=30,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(server: ServerProcess, *args: str, token: str = "") -> str:
    done = quotactl(server, *args, token=token)
    assert done.returncode == 0, f"quotactl {' '.join(args)} -> {done.returncode}\n{done.stderr}"
    return done.stdout


def events(server: ServerProcess, *args: str, token: str = "") -> list[dict[str, Any]]:
    lines = ok(server, "events", "--format", "jsonl", *args, token=token).splitlines()
    return [json.loads(line) for line in lines]


def until(predicate: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.05)


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    policies = tmp_path / "policies"
    policies.mkdir()
    alpha = (SHIPPED_POLICIES / "alpha.yaml").read_text()
    webhook = f"http://127.0.0.1:{closed_port()}/hooks/quota"  # nobody listens: deliveries stay pending
    (policies / "alpha.yaml").write_text(
        alpha
        + "\nnotifications:\n  webhooks:\n"
        + f"    - {{name: backend, url: '{webhook}', secret_env: E2E_HOOK_SECRET, kinds: [STOP_CHANGED]}}\n"
    )
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        policies=policies,
        extra_args=("--viewer-token", VIEWER, "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}"),
        env={"E2E_HOOK_SECRET": SECRET},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_admin_changes_are_events_shown_as_table_jsonl_and_csv(served: ServerProcess) -> None:
    ok(served, "tier", "set", "alice", "pro_alpha", "--reason", "paying customer")
    ok(served, "stop", "subject", "mallory", "--reason", "card testing")
    until(lambda: len(events(served)) == 2)
    tier, stop = events(served)
    assert (tier["kind"], tier["subject"], tier["tier"]) == ("ADMIN_CHANGE", "alice", "pro_alpha")
    assert (stop["kind"], stop["subject"]) == ("STOP_CHANGED", "mallory")
    assert tier["actor"].startswith("token:") and tier["id"].startswith("adm_") and stop["id"].startswith("stp_")
    assert json.loads(stop["detail"])["reason"] == "card testing"
    # the same records as the audit log
    audit = json.loads(ok(served, "--json", "audit"))["entries"]
    assert {"adm_" + a["id"] for a in audit if a["action"] == "SetTier"} == {tier["id"]}

    table = ok(served, "events").splitlines()
    assert table[0].split() == ["AT", "(UTC)", "KIND", "SUBJECT", "TIER", "WHAT", "COST", "ACTOR", "DETAIL"]
    assert "SetTier alice: tier: null -> pro_alpha (paying customer)" in table[1]
    assert "pulled SUBJECT:mallory (card testing)" in table[2]

    rows = list(csv.DictReader(io.StringIO(ok(served, "events", "--format", "csv"))))
    assert [(r["id"], r["kind"], r["subject"]) for r in rows] == [
        (tier["id"], "ADMIN_CHANGE", "alice"),
        (stop["id"], "STOP_CHANGED", "mallory"),
    ]
    assert [e["id"] for e in events(served, "--kind", "STOP_CHANGED")] == [stop["id"]]
    assert [e["id"] for e in events(served, "--subject", "alice")] == [tier["id"]]
    assert len(events(served, "--since", "2h")) == 2
    assert events(served, "--until", "2000-01-01") == []
    assert events(served, "--since", "2000-01-01T00:00:00Z", "--kind", "committed,denied") == []

    # a viewer reads the feed and the webhooks, and cannot write
    assert [e["id"] for e in events(served, token=VIEWER)] == [tier["id"], stop["id"]]
    refused = quotactl(served, "tier", "set", "bob", "pro_alpha", token=VIEWER)
    assert refused.returncode == 4 and "viewer token may only read" in refused.stderr

    # the webhook (STOP_CHANGED only) has the stop pending: its endpoint does not answer
    def pending() -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(ok(served, "--json", "webhooks", token=VIEWER))
        return reply

    until(lambda: pending()["webhooks"][0]["pending"] == 1 and pending()["deliveries"][0]["attempts"] >= 1)
    reply = pending()
    (hook,) = reply["webhooks"]
    assert (hook["name"], hook["kinds"], hook["configured"]) == ("backend", ["STOP_CHANGED"], True)
    (delivery,) = reply["deliveries"]
    assert delivery["event_id"] == stop["id"] and delivery["state"] == "pending"
    assert delivery["last_status"] == 0 and delivery["last_error"]
    text = ok(served, "webhooks")
    assert "backend" in text and "STOP_CHANGED" in text and stop["id"] in text


class Follower:
    """``quotactl events --follow --format jsonl`` in the background, its lines collected."""

    def __init__(self, server: ServerProcess) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quota_service.quotactl", "events", "--follow", "--format", "jsonl"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=console_env(server, server.admin_token),
            cwd=ROOT,
        )
        self.lines: list[dict[str, Any]] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def stop(self) -> None:
        self.process.terminate()
        _, self.stderr = self.process.communicate(timeout=10)


def test_follow_prints_history_then_new_events_and_resumes_after_a_dropped_stream(served: ServerProcess) -> None:
    ok(served, "tier", "set", "alice", "pro_alpha")
    until(lambda: len(events(served)) == 1)
    follower = Follower(served)
    try:
        until(lambda: len(follower.lines) == 1)
        ok(served, "reset", "alice", "--reason", "live")
        until(lambda: len(follower.lines) == 2)
        served.restart()  # the stream drops; the follower resumes after the last event it printed
        ok(served, "tier", "set", "bob", "basic_alpha")
        ok(served, "stop", "global", "--reason", "after the restart")
        until(lambda: len(follower.lines) == 4)
        time.sleep(0.5)  # nothing else arrives: no duplicate of the overlap
    finally:
        follower.stop()
    assert "resuming after" in follower.stderr
    kinds = [(e["kind"], e.get("subject", "")) for e in follower.lines]
    assert kinds == [
        ("ADMIN_CHANGE", "alice"),
        ("ADMIN_CHANGE", "alice"),
        ("ADMIN_CHANGE", "bob"),
        ("STOP_CHANGED", ""),
    ]
    assert len({e["id"] for e in follower.lines}) == 4
    assert [e["id"] for e in follower.lines] == [e["id"] for e in events(served)]
