"""A simulation report for people: tables in ``quotactl``'s style (:mod:`quota_service.quotactl_format`).

Pure: no I/O. Money as exact dollars, times ISO-8601 UTC with milliseconds, every name
through the table's escaping. ``--json`` output is :meth:`SimulationReport.to_json_obj`.
"""

from __future__ import annotations

from quota_service import quotactl_format as fmt
from quota_service.lifecycle.simulate import SimulationReport
from quota_service.policy.messages import format_usd

__all__ = ["report_text"]


def _changes(changes: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(changes.items())) or "-"


def report_text(report: SimulationReport) -> str:
    since = fmt.timestamp_ms(report.since_ms, zero="the start")
    until = fmt.timestamp_ms(report.until_ms, zero="the end")
    head = fmt.fields(
        [
            ("live policy", report.live_version),
            ("candidate policy", report.candidate_version),
            ("period", f"{since} to {until}"),
            ("requests replayed", f"{report.requests:,} ({report.rows:,} rows read, {report.skipped:,} outside)"),
            ("admin changes", f"{report.admin_changes:,}"),
            ("live replay != recorded", f"{report.live_mismatches:,} answers"),
            ("answers that change", f"{report.changed:,}"),
            (
                "spend",
                f"recorded {format_usd(report.recorded_cost_micros)}, live {format_usd(report.live_cost_micros)}, "
                f"candidate {format_usd(report.candidate_cost_micros)} "
                f"({_delta(report.candidate_cost_micros - report.recorded_cost_micros)})",
            ),
        ]
    )
    tier_rows = [
        [
            t.tier,
            f"{t.requests:,}",
            f"{len(t.subjects):,}",
            f"{t.changed:,}",
            _changes(t.changes),
            format_usd(t.recorded_cost_micros),
            format_usd(t.live_cost_micros),
            format_usd(t.candidate_cost_micros),
            _delta(t.candidate_cost_micros - t.recorded_cost_micros),
        ]
        for _, t in sorted(report.tiers.items())
    ]
    # LIVE: the live policy replayed (it grants what was denied for reasons the replay does
    # not see, e.g. counters of open reservations at --since): the candidate's like-for-like.
    tiers = fmt.table(
        ["TIER", "REQUESTS", "SUBJECTS", "CHANGED", "CHANGES", "RECORDED", "LIVE", "CANDIDATE", "SAVED/ADDED"],
        tier_rows,
        right=(1, 2, 3, 5, 6, 7, 8),
    )
    changed = report.changed_subjects()
    if not changed:
        return f"{head}\n\n{tiers}\n\nno answer changes under the candidate policy"
    subject_rows = [
        [
            s.subject,
            s.tier,
            f"{s.changed:,}",
            _changes(s.changes),
            fmt.timestamp_ms(s.first_denied_ms, zero="never"),
            s.first_denied_reason or "-",
            format_usd(s.recorded_cost_micros),
            format_usd(s.candidate_cost_micros),
            _delta(s.candidate_cost_micros - s.recorded_cost_micros),
        ]
        for s in changed
    ]
    subjects = fmt.table(
        ["SUBJECT", "TIER", "CHANGED", "CHANGES", "FIRST DENIED", "REASON", "RECORDED", "CANDIDATE", "SAVED/ADDED"],
        subject_rows,
        right=(2, 6, 7, 8),
    )
    return f"{head}\n\n{tiers}\n\n{len(changed):,} subject(s) whose answers change:\n{subjects}"


def _delta(micros: int) -> str:
    if micros < 0:
        return f"saved {format_usd(-micros)}"
    if micros > 0:
        return f"added {format_usd(micros)}"
    return "no change"
