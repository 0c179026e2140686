"""``quotactl events``: argument forms and the three output formats, no server."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, datetime

import pytest

from quota.v1 import events_pb2, quota_pb2
from quota_service import quotactl


def test_kinds_any_case_with_or_without_the_prefix_and_comma_separated() -> None:
    args = quotactl.parse_args(["events", "--kind", "stop_changed,EVENT_KIND_ADMIN_CHANGE", "--kind", "denied"])
    assert args.kinds == [events_pb2.STOP_CHANGED, events_pb2.ADMIN_CHANGE, events_pb2.DENIED]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown event kind 'THRESHOLDS'; one of: COMMITTED"):
        quotactl.parse_kind("THRESHOLDS")
    with pytest.raises(argparse.ArgumentTypeError):
        quotactl.parse_kind("EVENT_KIND_UNSPECIFIED")


def test_times_iso_dates_and_durations_ago() -> None:
    assert quotactl.parse_time("2026-11-24T18:00:00Z") == int(datetime(2026, 11, 24, 18, tzinfo=UTC).timestamp() * 1000)
    assert quotactl.parse_time("2026-11-24") == int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)
    assert quotactl.parse_time("2026-11-24T19:00:00+01:00") == quotactl.parse_time("2026-11-24T18:00:00Z")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert abs(quotactl.parse_time("2h") - (now_ms - 7_200_000)) < 5_000
    with pytest.raises(argparse.ArgumentTypeError, match="not a time: 'yesterday'"):
        quotactl.parse_time("yesterday")


def test_since_must_be_before_until(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        quotactl.parse_args(["events", "--since", "2026-11-25", "--until", "2026-11-24"])
    assert exited.value.code == 2
    assert "--since must be before --until" in capsys.readouterr().err


def sample() -> list[events_pb2.Event]:
    change = events_pb2.Event(
        id="adm_1-0",
        kind=events_pb2.ADMIN_CHANGE,
        at_ms=1_764_000_000_000,
        subject="alice",
        tier="pro_alpha",
        actor="token:0123456789ab",
        detail=json.dumps(
            {
                "action": "SetTier",
                "target": "alice",
                "before": {"tier": None},
                "after": {"tier": "pro_alpha"},
                "reason": "line one\nline two\x1b[31m",
            }
        ),
    )
    record = events_pb2.Event(
        id="den_01",
        kind=events_pb2.DENIED,
        at_ms=1_764_000_000_500,
        subject="bob",
        feature="chat",
        provider="openai",
        model="gpt-4o-mini",
        estimate={"tokens": 500.0},
        reason=quota_pb2.LIMIT_EXCEEDED,
        limit=quota_pb2.LimitStatus(metric="tokens", window="day"),
        cost_usd=0.25,
    )
    return [change, record]


def test_table_jsonl_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    for form in quotactl.EVENT_FORMATS:
        out = io.StringIO()
        printer = quotactl.EventPrinter(form, follow=False, out=out)
        for event in [*sample(), sample()[0]]:  # a repeat is printed once
            printer.add(event)
        printer.finish()
        text = out.getvalue()
        lines = text.splitlines()
        if form == "table":
            assert lines[0].split()[:3] == ["AT", "(UTC)", "KIND"] and len(lines) == 3
            assert "SetTier alice: tier: null -> pro_alpha (line one\\nline two\\x1b[31m)" in lines[1]
            assert "chat openai/gpt-4o-mini" in lines[2] and "$0.25" in lines[2]
            assert "LIMIT_EXCEEDED tokens/day" in lines[2]
        elif form == "jsonl":
            assert [json.loads(line)["id"] for line in lines] == ["adm_1-0", "den_01"]
            assert json.loads(lines[1])["estimate"] == {"tokens": 500.0}
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [r["id"] for r in rows] == ["adm_1-0", "den_01"]
            assert rows[1]["estimate"] == '{"tokens":500.0}' and rows[1]["kind"] == "DENIED"
            assert "\x1b" not in text  # free text escaped, as in tables
    assert printer.last_id == "den_01" and printer.count == 2


def test_a_followed_table_prints_each_row_as_it_comes() -> None:
    out = io.StringIO()
    printer = quotactl.EventPrinter("table", follow=True, out=out)
    assert out.getvalue().startswith("AT (UTC)")
    printer.add(sample()[0])
    assert len(out.getvalue().splitlines()) == 2
    printer.finish()
    assert len(out.getvalue().splitlines()) == 2
