"""``quota-service simulate`` over real SQLite ledgers written through the real ledger store.

The small stories are worked out by hand in each test (policy: tests/fixtures/policies/
lifecycle: free 1,000 tokens a day, warn 80 %, block 95 %; openai/gpt-4o at $10 per 1M
tokens, so 100 tokens cost $0.001 = 1,000 micro-dollars).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.ledger_fixture import DAY_MS, HOUR_MS, RecordBuilder, generate_events, write_ledger

from quota_service.cli import main, parse_instant_ms
from quota_service.ledger.events import EventKind
from quota_service.policy.domain import Decision
from quota_service.policy.loader import load_policy

POLICIES = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "lifecycle"
LIVE = str(POLICIES / "live.yaml")
TIGHTER = str(POLICIES / "tighter.yaml")
LOOSER = str(POLICIES / "looser.yaml")
DAY0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def _builder() -> RecordBuilder:
    return RecordBuilder(load_policy(LIVE))


def _ledger(tmp_path: Path, builder: RecordBuilder) -> str:
    return asyncio.run(write_ledger(tmp_path / "ledger.db", builder.events))


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    code = main(["simulate", "--live", LIVE, "--json", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def _subject(report: dict[str, object], name: str) -> dict[str, object]:
    subjects = report["subjects"]
    assert isinstance(subjects, list)
    found = [s for s in subjects if s["subject"] == name]
    assert found, f"{name} not among the changed subjects: {[s['subject'] for s in subjects]}"
    return found[0]  # type: ignore[no-any-return]


def test_the_live_policy_against_itself_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = load_policy(LIVE)
    url = asyncio.run(write_ledger(tmp_path / "ledger.db", generate_events(policy, start_ms=DAY0, days=30, seed=11)))
    code, report, err = _simulate(capsys, "--policy", LIVE, "--ledger", url)
    assert code == 0, err
    assert report["changed"] == 0
    assert report["subjects"] == []
    assert report["requests"] == 30 * 3 * 4 * 6
    assert report["live_cost_micros"] == report["candidate_cost_micros"]
    tiers = {t["tier"]: t for t in report["tiers"]}  # type: ignore[union-attr]
    assert set(tiers) == {"free", "basic", "pro"}, "SetTier before the period puts subjects in their tiers"
    # The generated ledger was recorded without the policy's caps in mind: the live replay
    # (not the recorded answers) is what the candidate is compared with; the recorded
    # spend is the sum of the charging records.
    total = sum(t["recorded_cost_micros"] for t in tiers.values())
    assert report["recorded_cost_micros"] == total > 0


def test_a_tighter_cap_denies_the_third_request_at_its_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # alice (free, 1,000/day; candidate 500/day: warn 400, block 475):
    #   10:00  300 tokens: live 0+300 ALLOW      candidate 300 < 400 ALLOW
    #   11:00  150 tokens: live 450 ALLOW        candidate 450 >= 400 WARN
    #   12:00  100 tokens: live 550 ALLOW        candidate 450+100 > 500 DENY (LIMIT_EXCEEDED)
    # bob (free) asks 100 once: unchanged.
    b = _builder()
    for hour, tokens in ((10, 300), (11, 150), (12, 100)):
        at = DAY0 + hour * HOUR_MS
        b.request(EventKind.COMMITTED, "alice", "free", at + 2000, {"tokens": tokens}, reserved_at_ms=at)
    b.request(EventKind.COMMITTED, "bob", "free", DAY0 + 9 * HOUR_MS, {"tokens": 100})
    url = _ledger(tmp_path, b)
    code, report, err = _simulate(capsys, "--policy", TIGHTER, "--ledger", url)
    assert code == 2, err
    assert report["changes"] == {"ALLOW->DENY": 1, "ALLOW->WARN": 1}
    assert [s["subject"] for s in report["subjects"]] == ["alice"]  # type: ignore[union-attr]
    alice = _subject(report, "alice")
    assert alice["first_denied_ms"] == DAY0 + 12 * HOUR_MS
    assert alice["first_denied_reason"] == "LIMIT_EXCEEDED"
    assert alice["live_first_denied_ms"] == 0
    assert alice["recorded_cost_micros"] == 5500  # 550 tokens at $10 / 1M
    assert alice["candidate_cost_micros"] == 4500  # the 100 denied are not spent
    assert alice["delta_cost_micros"] == -1000
    # And the table for people names her and the time.
    code = main(["simulate", "--live", LIVE, "--policy", TIGHTER, "--ledger", url])
    out = capsys.readouterr().out
    assert code == 2
    assert "alice" in out and "2025-12-01T12:00:00.000Z" in out and "saved $0.001" in out
    assert "bob" not in out


def test_a_request_denied_in_reality_but_granted_consumes_its_ask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # carol (free; looser candidate 2,000/day: warn 1,600, block 1,900):
    #   10:00  900 committed     live ALLOW(900 >= 800: WARN)   candidate ALLOW
    #   11:00  200 DENIED        live 900+200 > 1000 DENY       candidate 1,100 ALLOW: consumes 200
    #   12:00  950 DENIED        live DENY                      candidate 1,100+950 > 2,000 DENY
    # Had the 11:00 grant consumed nothing, 12:00 would be 900+950 = 1,850: a WARN, a change.
    b = _builder()
    b.request(EventKind.COMMITTED, "carol", "free", DAY0 + 10 * HOUR_MS, {"tokens": 900}, decision=Decision.WARN)
    b.request(EventKind.DENIED, "carol", "free", DAY0 + 11 * HOUR_MS, {"tokens": 200})
    b.request(EventKind.DENIED, "carol", "free", DAY0 + 12 * HOUR_MS, {"tokens": 950})
    url = _ledger(tmp_path, b)
    code, report, err = _simulate(capsys, "--policy", LOOSER, "--ledger", url)
    assert code == 2, err
    carol = _subject(report, "carol")
    assert carol["changes"] == {"DENY->ALLOW": 1, "WARN->ALLOW": 1}
    assert carol["first_denied_ms"] == DAY0 + 12 * HOUR_MS
    assert carol["live_first_denied_ms"] == DAY0 + 11 * HOUR_MS
    assert carol["recorded_cost_micros"] == 9000
    assert carol["candidate_cost_micros"] == 11000  # 900 + the 200 asked
    assert carol["delta_cost_micros"] == 2000
    assert report["live_mismatches"] == 0


def test_a_tier_change_mid_stream_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # dave starts unassigned (free); SetTier pro at 12:00 (pro: 50,000/day, unchanged).
    #   10:00  800 tokens: live free WARN (800 >= 800)   candidate free 500: 800 > 500 DENY
    #   13:00  900 tokens: pro in both worlds: ALLOW     (were he still free: 900 > 500, a DENY)
    # erin gets the same requests, never moves: both are changes for her.
    b = _builder()
    for subject in ("dave", "erin"):
        b.request(EventKind.COMMITTED, subject, "free", DAY0 + 10 * HOUR_MS, {"tokens": 800}, decision=Decision.WARN)
    b.set_tier("dave", "pro", DAY0 + 12 * HOUR_MS)
    b.request(EventKind.COMMITTED, "dave", "pro", DAY0 + 13 * HOUR_MS, {"tokens": 900})
    b.request(EventKind.COMMITTED, "erin", "free", DAY0 + 13 * HOUR_MS, {"tokens": 100}, decision=Decision.WARN)
    url = _ledger(tmp_path, b)
    code, report, err = _simulate(capsys, "--policy", TIGHTER, "--ledger", url)
    assert code == 2, err
    dave = _subject(report, "dave")
    assert dave["changes"] == {"WARN->DENY": 1}
    assert dave["tier"] == "pro"
    assert dave["first_denied_ms"] == DAY0 + 10 * HOUR_MS
    erin = _subject(report, "erin")
    # erin at 13:00: live 800+100 = 900 WARN; candidate (nothing used) 100 ALLOW
    assert erin["changes"] == {"WARN->ALLOW": 1, "WARN->DENY": 1}
    assert report["admin_changes"] == 1


def test_an_override_set_mid_stream_applies_from_its_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # frank (free) gets a 3,000/day override at 09:00: 1,500 at 10:00 is ALLOW in both worlds
    # (1,500 < 2,400); without the override it would be denied (1,500 > 1,000).
    b = _builder()
    b.set_override("frank", "tokens", "day", 3000, DAY0 + 9 * HOUR_MS)
    b.request(EventKind.COMMITTED, "frank", "free", DAY0 + 10 * HOUR_MS, {"tokens": 1500})
    url = _ledger(tmp_path, b)
    code, report, err = _simulate(capsys, "--policy", TIGHTER, "--ledger", url)
    assert code == 0, err
    assert report["live_mismatches"] == 0


def test_windows_reset_at_the_day_boundary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 450 tokens at 23:00 and 450 at 01:00 the next day: under 500/day neither is denied
    # (each day's window starts empty); 450 >= 400 warns both times in the candidate.
    b = _builder()
    b.request(EventKind.COMMITTED, "gina", "free", DAY0 + 23 * HOUR_MS, {"tokens": 450})
    b.request(EventKind.COMMITTED, "gina", "free", DAY0 + DAY_MS + HOUR_MS, {"tokens": 450})
    url = _ledger(tmp_path, b)
    code, report, _ = _simulate(capsys, "--policy", TIGHTER, "--ledger", url)
    assert code == 2
    gina = _subject(report, "gina")
    assert gina["changes"] == {"ALLOW->WARN": 2}
    assert gina["first_denied_ms"] == 0


def test_since_and_until_bound_the_requests_replayed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = _builder()
    for hour, tokens in ((10, 300), (11, 150), (12, 100)):
        b.request(EventKind.COMMITTED, "alice", "free", DAY0 + hour * HOUR_MS, {"tokens": tokens})
    url = _ledger(tmp_path, b)
    # Until 11:30 (unix seconds): the third request is not replayed; only the WARN changes.
    until = str((DAY0 + 11 * HOUR_MS + HOUR_MS // 2) // 1000)
    code, report, _ = _simulate(capsys, "--policy", TIGHTER, "--ledger", url, "--until", until)
    assert code == 2
    assert report["changes"] == {"ALLOW->WARN": 1}
    assert report["requests"] == 2
    # From 11:30 (ISO-8601): only the 100 at 12:00, alone in its window: no change.
    code, report, _ = _simulate(capsys, "--policy", TIGHTER, "--ledger", url, "--since", "2025-12-01T11:30:00Z")
    assert code == 0
    assert report["requests"] == 1


def test_expired_and_corrected_records_charge_as_settled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # hana: 390 EXPIRED (charged 390; candidate 390 < 400: ALLOW), then a late Commit of 100
    # (CORRECTED -290): 100 used. Then 350: live 450 ALLOW; candidate (500: warn 400)
    # 100+350 = 450 WARN. Had the correction been lost: 390+350 = 740 > 500, a DENY.
    b = _builder()
    expired = b.request(
        EventKind.EXPIRED,
        "hana",
        "free",
        DAY0 + 10 * HOUR_MS + 300_000,
        {"tokens": 390},
        reserved_at_ms=DAY0 + 10 * HOUR_MS,
    )
    b.corrected(expired, DAY0 + 11 * HOUR_MS, {"tokens": 100})
    b.request(EventKind.COMMITTED, "hana", "free", DAY0 + 12 * HOUR_MS, {"tokens": 350})
    url = _ledger(tmp_path, b)
    code, report, _ = _simulate(capsys, "--policy", TIGHTER, "--ledger", url)
    assert code == 2
    hana = _subject(report, "hana")
    assert hana["changes"] == {"ALLOW->WARN": 1}
    assert hana["recorded_cost_micros"] == 4500  # 3,900 - 2,900 + 3,500
    assert hana["candidate_cost_micros"] == 4500


def test_a_bad_candidate_exits_1_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _ledger(tmp_path, _builder())
    code = main(["simulate", "--live", LIVE, "--policy", str(POLICIES / "broken.yaml"), "--ledger", url])
    captured = capsys.readouterr()
    assert code == 1
    assert "candidate policy" in captured.err and "default_tier" in captured.err
    assert captured.out == ""


def test_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    assert main(["simulate", "--live", LIVE, "--policy", LIVE, "--ledger", missing]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    assert main(["simulate", "--live", LIVE, "--policy", LIVE, "--ledger", unreachable]) == 1
    assert "cannot read the ledger" in capsys.readouterr().err
    url = _ledger(tmp_path, _builder())
    assert main(["simulate", "--live", LIVE, "--policy", LIVE, "--ledger", url, "--since", "yesterday-ish"]) == 1
    assert "--since 'yesterday-ish' is not a time" in capsys.readouterr().err


def test_time_arguments() -> None:
    assert parse_instant_ms("1764547200", "--since") == DAY0
    assert parse_instant_ms("1764547200.5", "--since") == DAY0 + 500
    assert parse_instant_ms("2025-12-01T00:00:00Z", "--since") == DAY0
    assert parse_instant_ms("2025-12-01T01:00:00+01:00", "--since") == DAY0
    assert parse_instant_ms("2025-12-01", "--since") == DAY0
    assert parse_instant_ms("", "--since") == 0
    with pytest.raises(ValueError, match="not a time"):
        parse_instant_ms("-5", "--until")


def test_a_usage_reset_mid_stream_zeroes_the_counters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # ivy (free) used 900 at 10:00 (WARN); an admin resets her usage at 11:00; 500 at 12:00
    # is then an ALLOW as recorded (0 + 500 < 800). Without the reset: 1,400 > 1,000, a DENY.
    b = _builder()
    b.request(EventKind.COMMITTED, "ivy", "free", DAY0 + 10 * HOUR_MS, {"tokens": 900}, decision=Decision.WARN)
    b.admin("ResetUsage", "ivy", DAY0 + 11 * HOUR_MS, after={"metric": None, "window": None, "counters_reset": 1})
    b.request(EventKind.COMMITTED, "ivy", "free", DAY0 + 12 * HOUR_MS, {"tokens": 500})
    url = _ledger(tmp_path, b)
    code, report, err = _simulate(capsys, "--policy", LIVE, "--ledger", url)
    assert code == 0, err
    assert (report["requests"], report["live_mismatches"], report["admin_changes"]) == (2, 0, 1)
    assert report["live_cost_micros"] == 14000
