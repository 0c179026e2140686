"""The dashboard in a real browser (system Chromium via Playwright) against the real server.

Each test logs in through the page, acts through the page, and checks the effect through
the real gRPC API (or the reverse): a spend made over gRPC shows on the open overview
without a reload, Stop all denies CheckAndReserve with EMERGENCY_STOP and Resume lifts it,
an override set on the subject page shows as the new cap, a viewer sees no stop button and
the server refuses the call anyway. The tests save a screenshot of every view in
docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.http_server import HttpServerProcess, screenshot
from support.server_process import SHIPPED_POLICIES

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.ledger import ledger_from_url
from quota_service.ledger.events import Event, EventKind, LimitSnapshot, Threshold, new_event_id, record_id
from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.windows import Window

pytestmark = pytest.mark.e2e

SPEND_VISIBLE_SECONDS = 2.0


def login(page: Any, server: HttpServerProcess, token: str) -> None:
    page.goto(server.http_url + "/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    page.wait_for_selector("#live.on", timeout=5000)


def reserve(
    stub: quota_pb2_grpc.QuotaServiceStub, subject: str, tokens: int, model: str = "gpt-4o"
) -> quota_pb2.CheckAndReserveResponse:
    return stub.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject=subject,
            feature="blog_writer",
            provider="openai",
            model=model,
            usage={"tokens": tokens},
            request_id=uuid.uuid4().hex,
        ),
        timeout=5,
    )


def spend(stub: quota_pb2_grpc.QuotaServiceStub, subject: str, tokens: int, model: str = "gpt-4o") -> None:
    answer = reserve(stub, subject, tokens, model)
    assert answer.decision in (quota_pb2.ALLOW, quota_pb2.WARN), answer
    stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": tokens}), timeout=5)


def seed_ledger(server: HttpServerProcess, subjects: tuple[str, ...] = tuple(f"user-{i}" for i in range(7))) -> None:
    """Usage records and a threshold event in the server's ledger, through the Ledger API
    (the service itself writes usage records once the Redis outbox relay lands)."""

    async def insert() -> None:
        ledger = ledger_from_url(server.ledger_url, timeout_seconds=5.0)
        assert ledger is not None
        now = int(time.time() * 1000)
        rows: list[Event] = []
        plan = [
            ("free_alpha", "blog_writer", "openai", "gpt-4o-mini", 600, 360),
            ("basic_alpha", "seo_analysis", "openai", "gpt-4o", 4_000, 40_000),
            ("pro_alpha", "content_planning", "anthropic", "claude-sonnet", 20_000, 300_000),
        ]
        for i in range(90):
            tier, feature, provider, model, tokens, cost = plan[i % 3]
            at = now - (i % 45) * 60_000 - 1_000
            rows.append(
                Event(
                    id=record_id(EventKind.COMMITTED, f"seed{i}"),
                    kind=EventKind.COMMITTED,
                    at_ms=at,
                    subject=subjects[i % len(subjects)],
                    tier=tier,
                    feature=feature,
                    provider=provider,
                    model=model,
                    reservation_id=f"seed{i}",
                    estimate={"tokens": tokens},
                    actual={"tokens": tokens - i},
                    cost_micros=cost,
                    decision=Decision.WARN if i % 10 == 0 else Decision.ALLOW,
                )
            )
            if i % 6 == 0:
                rows.append(
                    Event(
                        id=new_event_id(EventKind.DENIED, at),
                        kind=EventKind.DENIED,
                        at_ms=at,
                        subject=subjects[i % len(subjects)],
                        tier=tier,
                        feature=feature,
                        provider=provider,
                        model=model,
                        estimate={"tokens": tokens},
                        decision=Decision.DENY,
                        reason=Reason.BLOCK_THRESHOLD,
                    )
                )
        rows.append(
            Event(
                id=new_event_id(EventKind.THRESHOLD_CROSSED, now),
                kind=EventKind.THRESHOLD_CROSSED,
                at_ms=now,
                subject="user-3",
                tier="free_alpha",
                threshold=Threshold.WARN,
                limit=LimitSnapshot(
                    metric="tokens",
                    window=Window.DAY,
                    used=820,
                    held=0,
                    max_units=1000,
                    resets_at=now // 1000 + 3600,
                    kind=LimitKind.TIER,
                ),
            )
        )
        try:
            await ledger.insert(rows)
        finally:
            await ledger.close()

    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, insert()).result()


def wait_for_columns(page: Any, selector: str, *, more_than: int, timeout: float = 8.0) -> None:
    """Until the chart draws more than ``more_than`` columns (the ledger's seeded minutes)."""
    deadline = time.monotonic() + timeout
    while page.locator(selector).count() <= more_than:
        assert time.monotonic() < deadline, f"{selector}: {page.locator(selector).count()} columns"
        page.wait_for_timeout(200)


def test_spend_made_over_grpc_shows_on_the_open_overview(http_server: HttpServerProcess, page: Any) -> None:
    login(page, http_server, http_server.admin_token)
    page.wait_for_selector("#top-day")
    with grpc.insecure_channel(http_server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        started = time.monotonic()
        spend(stub, "alice", 850)  # $0.0085 at gpt-4o's $10 per 1M tokens; 85 % of the daily 1,000
        page.wait_for_selector('#top-day tr[data-subject="alice"]', timeout=SPEND_VISIBLE_SECONDS * 1000)
        assert time.monotonic() - started < SPEND_VISIBLE_SECONDS + 0.5
        row = page.inner_text('#top-day tr[data-subject="alice"]')
        assert "$0.0085" in row
        spend(stub, "bob", 300)
        page.wait_for_selector('#top-day tr[data-subject="bob"]', timeout=SPEND_VISIBLE_SECONDS * 1000)
    # The company-wide cap reflects it too, and alice is past her warn line.
    page.wait_for_selector("#spend-today:has-text('$0.0115')", timeout=3000)
    page.wait_for_selector("#hot td:has-text('alice')", timeout=6000)
    # The service's own records: alice's warn-line crossing reaches the live feed over SSE.
    page.wait_for_selector("#feed li:has-text('alice')", timeout=5000)
    seed_ledger(http_server)
    page.wait_for_selector("#feed li:has-text('user-3')", timeout=3000)
    wait_for_columns(page, "#answers-chart svg rect", more_than=20)
    screenshot(page, "overview")
    phone = page.context.browser.new_context(viewport={"width": 390, "height": 844}, locale="en-US")
    try:
        mobile = phone.new_page()
        login(mobile, http_server, http_server.admin_token)
        mobile.wait_for_selector('#top-day tr[data-subject="alice"]')
        wait_for_columns(mobile, "#answers-chart svg rect", more_than=20)
        screenshot(mobile, "overview-phone")
    finally:
        phone.close()


def test_stop_all_denies_and_resume_lifts_it(http_server: HttpServerProcess, page: Any) -> None:
    login(page, http_server, http_server.admin_token)
    with grpc.insecure_channel(http_server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        assert reserve(stub, "carol", 10).decision == quota_pb2.ALLOW
        page.click("#stop-all")
        page.fill("#confirm-reason", "runaway agent loop")
        page.click("#confirm-ok")
        page.wait_for_selector(".banner:has-text('EMERGENCY STOP')", timeout=3000)
        answer = reserve(stub, "carol", 10)
        assert answer.decision == quota_pb2.DENY
        assert answer.reason == quota_pb2.EMERGENCY_STOP
        screenshot(page, "overview-stopped")
        page.click("#stops button.resume")
        page.fill("#confirm-reason", "loop fixed")
        page.click("#confirm-ok")
        page.wait_for_selector("#no-stops", timeout=3000)
        deadline = time.monotonic() + 2
        while reserve(stub, "carol", 10).decision == quota_pb2.DENY:
            assert time.monotonic() < deadline, "Resume did not lift the stop"
            time.sleep(0.05)
    page.goto(http_server.http_url + "/#/audit")
    page.wait_for_selector("#audit tr[data-action='ResumeStop']")
    assert "loop fixed" in page.inner_text("#audit")
    screenshot(page, "audit")


def test_override_set_on_the_subject_page_shows_the_new_cap(http_server: HttpServerProcess, page: Any) -> None:
    login(page, http_server, http_server.admin_token)
    with grpc.insecure_channel(http_server.target) as channel:
        spend(quota_pb2_grpc.QuotaServiceStub(channel), "dave", 700)
    page.goto(http_server.http_url + "/#/subject/dave")
    page.wait_for_selector(".limit[data-metric='tokens'][data-window='day']")
    page.select_option("#ov-metric", "tokens")
    page.select_option("#ov-window", "day")
    page.fill("#ov-max", "5000")
    page.fill("#ov-ttl", "2")
    page.fill("#ov-reason", "launch week")
    page.click("#ov-submit")
    page.wait_for_selector(".limit[data-kind='override'] .cap:has-text('5,000')", timeout=3000)
    assert "launch week" in page.inner_text("#subject-overrides")
    # dave's own usage record, written by the service (relayed from Redis to the ledger).
    page.wait_for_selector("#subject-records td:has-text('COMMITTED')", timeout=8000)
    with grpc.insecure_channel(http_server.target) as channel:
        # 700 used + 3,000 asked passes the tier's 1,000 but not the override's 5,000 (the
        # per-subject hard stop of 1,000 tokens a day still applies: it denies).
        answer = reserve(quota_pb2_grpc.QuotaServiceStub(channel), "dave", 100)
        assert any(limit.max == 5000 and limit.kind == quota_pb2.LIMIT_KIND_OVERRIDE for limit in answer.limits)
    screenshot(page, "subject")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    # on a phone nothing of the page lies off screen: the records are labelled blocks, not a
    # table wider than the card
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.getElementById('subject-records').scrollWidth,"
        " document.getElementById('subject-records').clientWidth]"
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths
    record = page.locator("#subject-records tbody tr", has_text="COMMITTED").first
    model = record.locator("td[data-label='Model']")
    assert "openai/" in model.inner_text()
    assert model.evaluate("td => getComputedStyle(td, '::before').content") == '"Model"'  # labelled
    box = model.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390, box
    screenshot(page, "subject-phone")


def test_policy_and_analytics_views(http_server: HttpServerProcess, page: Any) -> None:
    seed_ledger(http_server)
    login(page, http_server, http_server.viewer_token)
    page.goto(http_server.http_url + "/#/policy")
    page.wait_for_selector("#policy-version")
    assert page.inner_text("#policy-error") == "none"
    assert "Free Alpha" in page.inner_text("#policy-tiers")
    assert "openai/gpt-4o-mini" in page.inner_text("#policy-prices")
    screenshot(page, "policy")
    page.goto(http_server.http_url + "/#/analytics")
    page.wait_for_selector("#by-tier td:has-text('pro_alpha')")
    page.wait_for_selector("#daily td:has-text('free_alpha')")
    # free_alpha's cost_usd per day is capped by its hard stop ($5.00 a day in the shipped policy)
    cost_row = page.locator("#daily tr", has_text="free_alpha").filter(has_text="cost_usd").first
    assert "$5.00" in cost_row.inner_text(), cost_row.inner_text()
    screenshot(page, "analytics")


def test_a_viewer_sees_no_stop_button_and_is_refused(http_server: HttpServerProcess, page: Any) -> None:
    login(page, http_server, http_server.viewer_token)
    page.wait_for_selector("#stops")
    assert page.inner_text("#role").lower() == "viewer"
    assert page.query_selector("#stop-all") is None
    page.goto(http_server.http_url + "/#/subject/erin")
    page.wait_for_selector(".limit")
    assert page.query_selector("#override-form") is None
    status = page.evaluate(
        """async (token) => {
            const reply = await fetch('/quota.v1.AdminService/EmergencyStop', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', Authorization: 'Bearer ' + token},
                body: JSON.stringify({scope: 'GLOBAL', reason: 'viewer tries'}),
            });
            return [reply.status, await reply.json()];
        }""",
        http_server.viewer_token,
    )
    assert status[0] == 403
    assert status[1]["code"] == "permission_denied"
    with grpc.insecure_channel(http_server.target) as channel:
        assert reserve(quota_pb2_grpc.QuotaServiceStub(channel), "erin", 10).decision == quota_pb2.ALLOW


def test_the_page_reconnects_after_a_server_restart(http_server: HttpServerProcess, page: Any) -> None:
    login(page, http_server, http_server.admin_token)
    http_server.stop()
    page.wait_for_selector("#live.off", timeout=8000)
    http_server.start()
    page.wait_for_selector("#live.on", timeout=15000)  # backoff doubles from 0.5 s, at most 10 s
    with grpc.insecure_channel(http_server.target) as channel:
        spend(quota_pb2_grpc.QuotaServiceStub(channel), "frank", 100)
    page.wait_for_selector('#top-day tr[data-subject="frank"]', timeout=SPEND_VISIBLE_SECONDS * 1000)


def test_a_failed_reload_shows_its_file_and_line(redis_url: str, tmp_path: Path, page: Any) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    server = HttpServerProcess(redis_url=redis_url, workdir=tmp_path, policies=policies, extra_args=("--no-watch",))
    server.start()
    try:
        login(page, server, server.admin_token)
        page.goto(server.http_url + "/#/policy")
        page.wait_for_selector("#policy-version")
        version = page.inner_text("#policy-version")
        text = (policies / "alpha.yaml").read_text()
        (policies / "alpha.yaml").write_text(text.replace("warn_at: 0.80", "warn_at: 1.80", 1))
        page.click("#policy-reload")
        page.wait_for_selector("#policy-error .badge.deny", timeout=5000)
        error = page.inner_text("#policy-error")
        assert "alpha.yaml:" in error
        assert "warn_at" in error
        assert page.inner_text("#policy-version") == version  # the last good policy stays
        screenshot(page, "policy-reload-error")
    finally:
        server.stop()


FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"  # free_alpha's limits in alpha.yaml


def test_the_policy_view_shows_the_last_change_and_the_shadow_divergences(
    redis_url: str, tmp_path: Path, page: Any
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    live_file = policies / "alpha.yaml"
    original = live_file.read_text()
    assert original.count(FREE_TOKENS) == 1
    shadow_file = tmp_path / "shadow" / "alpha.yaml"
    shadow_file.parent.mkdir()
    shadow_file.write_text(original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "100")))
    server = HttpServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        policies=policies,
        extra_args=("--no-watch", "--shadow-policies", str(shadow_file)),
    )
    server.start()
    try:
        # Live (cap 1000): ALLOW twice. Shadow (cap 100): WARN at 100, then DENY at the block line.
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            spend(stub, "gina", 100, model="gpt-4o-mini")
            spend(stub, "gina", 100, model="gpt-4o-mini")
        login(page, server, server.admin_token)
        page.goto(server.http_url + "/#/policy")
        page.wait_for_selector("#policy-no-change")
        page.wait_for_selector('#shadow-divergences tr[data-divergence="free_alpha ALLOW->DENY"]', timeout=5000)
        divergences = page.inner_text("#shadow-divergences")
        assert "ALLOW → WARN" in divergences and "ALLOW → DENY" in divergences
        assert page.inner_text("#shadow-decided").startswith("2 requests")

        live_file.write_text(original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "500")))
        page.click("#policy-reload")
        page.wait_for_selector("#policy-change-summary", timeout=5000)
        assert "1 change" in page.inner_text("#policy-change-summary")
        row = page.inner_text("#policy-last-change tbody tr")
        assert row.split("\t") == ["free_alpha", "cap tokens/day", "1,000 tokens", "500 tokens"], row
        page.wait_for_selector("#toast:not(.show)", state="attached", timeout=6000)  # out of the picture
        screenshot(page, "policy-change")
    finally:
        server.stop()
