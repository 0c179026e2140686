"""``quotactl``: the operator's console for a running quota-service.

Every command is one RPC (AdminService, or QuotaService.GetUsage for ``usage``) with a
deadline of ``--timeout`` seconds; a command either prints its answer and exits 0, or
prints ``quotactl: <STATUS_CODE>: <message>`` on stderr and exits with a code that says
what went wrong (see ``quotactl --help``). An RPC error never ends in a Python traceback.

With ``--json`` the command prints the RPC's response message on stdout in the proto3
JSON mapping: field names exactly as in ``proto/quota/v1/*.proto`` (snake_case), enums
by name, every field present even when zero, keys sorted, int64 values as JSON numbers.

Free text from the server or the command line (reasons, subjects, targets, actors, names,
error messages) is shown through :func:`quota_service.escaping.visible` in every table cell and
sentence, on stdout and stderr: a newline, an ESC sequence or a bidi override in a reason
shows as ``\\n``, ``\\x1b``, ``\\u202e``, never as a forged row or a control code on the
operator's terminal. ``--json`` output is exact (and printable ASCII: JSON escapes the rest).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from quota.v1 import admin_pb2, admin_pb2_grpc, events_pb2, quota_pb2, quota_pb2_grpc
from quota_service import quotactl_format as fmt
from quota_service.escaping import visible

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4
EXIT_NOT_FOUND = 5

EXIT_CODE_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: EXIT_OK,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
}

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0
WINDOWS = ("minute", "hour", "day", "month")
SCOPES = {
    name.lower(): value for name, value in admin_pb2.StopScope.items() if value != admin_pb2.STOP_SCOPE_UNSPECIFIED
}
KIND_NAMES = {
    quota_pb2.LIMIT_KIND_TIER: "tier",
    quota_pb2.LIMIT_KIND_OVERRIDE: "override",
    quota_pb2.LIMIT_KIND_HARD_STOP: "hard stop",
    quota_pb2.LIMIT_KIND_GLOBAL: "global",
}

EPILOG = """\
exit codes:
  0  ok
  1  the server refused or failed the call (stderr: the gRPC status code and its message),
     e.g. INVALID_ARGUMENT, FAILED_PRECONDITION (a bad policy on reload), INTERNAL
  2  usage error: bad arguments, or an unreadable token or TLS file
  3  the server is unreachable: UNAVAILABLE (also a failed TLS handshake) or DEADLINE_EXCEEDED
  4  not allowed: UNAUTHENTICATED (no token) or PERMISSION_DENIED (wrong token)
  5  not found: NOT_FOUND, or nothing to delete / resume

environment:
  QUOTA_TARGET            server address, HOST:PORT (default 127.0.0.1:50051)
  QUOTA_ADMIN_TOKEN       the admin bearer token (--token-file takes precedence)
  QUOTA_TLS_CA            PEM CA bundle to verify the server with (turns TLS on)
  QUOTA_TLS_CLIENT_CERT   PEM client certificate for mutual TLS (with QUOTA_TLS_CLIENT_KEY)
  QUOTA_TLS_CLIENT_KEY    PEM private key of the client certificate
  QUOTA_TLS_SERVER_NAME   the name to verify the server certificate against

--json prints the RPC's response message in the proto3 JSON mapping: field names as in the
.proto, keys sorted, every field present, enums by name, int64 as numbers.
"""

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class UsageError(Exception):
    """The invocation cannot work: an unreadable file, an unusable token. Exit 2."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command produced: ``reply`` for ``--json``, ``text`` for people.

    ``exit_code`` other than 0 comes with ``problem``, printed on stderr (the RPC itself
    succeeded, e.g. ``DeleteOverride`` answered ``deleted: false``)."""

    reply: Message
    text: str
    exit_code: int = EXIT_OK
    problem: str = ""
    printed: bool = False  # the command printed its answer itself (events: as it arrives)


class Remote:
    """The two services behind one channel; every call carries the deadline and the token."""

    def __init__(self, channel: grpc.Channel, *, timeout: float, token: str) -> None:
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.quota = quota_pb2_grpc.QuotaServiceStub(channel)
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def call(self, method: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request) -> Response:
        return method(request, timeout=self.timeout, metadata=self.metadata)


Command = Callable[[Remote, argparse.Namespace], Outcome]


def exit_code_for(code: grpc.StatusCode) -> int:
    """The exit code for a failed RPC's status (1 for any code without a meaning of its own)."""
    return EXIT_CODE_OF.get(code, EXIT_FAILED)


# --- rendering --------------------------------------------------------------------------


def to_json(message: Message) -> str:
    """``message`` in the proto3 JSON mapping with the .proto's field names, every field
    present (zeros and empty lists included), keys sorted, enums by name, int64 as numbers."""
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=2,
        sort_keys=True,
        unquote_int64_if_possible=True,
        ensure_ascii=True,  # every control and non-ASCII character as \uXXXX: safe on any terminal
    )


def scope_name(scope: int) -> str:
    return admin_pb2.StopScope.Name(scope).lower() if scope in admin_pb2.StopScope.values() else str(scope)


def stop_label(scope: int, target: str) -> str:
    return f"{scope_name(scope)} {target}" if target else scope_name(scope)


def limits_table(limits: Sequence[quota_pb2.LimitStatus]) -> str:
    if not limits:
        return "no limits apply"
    rows = [
        [
            limit.metric,
            limit.window,
            KIND_NAMES.get(limit.kind, "-"),
            fmt.amount(limit.metric, limit.used),
            fmt.amount(limit.metric, limit.held),
            fmt.amount(limit.metric, limit.max),
            fmt.amount(limit.metric, limit.remaining),
            fmt.percent(limit.ratio),
            fmt.timestamp(limit.resets_at),
        ]
        for limit in limits
    ]
    headers = ["METRIC", "WINDOW", "KIND", "USED", "HELD", "MAX", "REMAINING", "USE", "RESETS (UTC)"]
    return fmt.table(headers, rows, right=(3, 4, 5, 6, 7))


def overrides_table(overrides: Sequence[admin_pb2.Override]) -> str:
    rows = [
        [
            o.subject,
            o.metric,
            o.window,
            fmt.amount(o.metric, o.max),
            fmt.timestamp(o.expires_at, zero="never"),
            fmt.timestamp(o.created_at),
            o.created_by or "-",
            o.reason or "-",
        ]
        for o in overrides
    ]
    headers = ["SUBJECT", "METRIC", "WINDOW", "MAX", "EXPIRES (UTC)", "SET (UTC)", "BY", "REASON"]
    return fmt.table(headers, rows, right=(3,))


def stops_table(stops: Sequence[admin_pb2.Stop]) -> str:
    rows = [
        [
            scope_name(s.scope),
            s.target or "*",
            fmt.timestamp(s.created_at),
            fmt.timestamp(s.expires_at) if s.expires_at else "until resumed",
            s.created_by or "-",
            s.reason or "-",
        ]
        for s in stops
    ]
    return fmt.table(["SCOPE", "TARGET", "SINCE (UTC)", "UNTIL (UTC)", "BY", "REASON"], rows)


def policy_status_text(status: admin_pb2.PolicyStatus) -> str:
    pairs: list[tuple[str, str | list[str]]] = [
        ("version", status.version),
        ("loaded at", fmt.timestamp(status.loaded_at)),
        ("files", list(status.files) or "-"),
        ("default tier", status.default_tier),
        ("tiers", ", ".join(status.tiers) or "-"),
    ]
    if status.last_error:
        pairs.append(
            ("last reload", f"FAILED at {fmt.timestamp(status.last_error_at)}; version {status.version} stays")
        )
        pairs.append(("error", status.last_error.split("\n")))  # one problem a line
    else:
        pairs.append(("last reload", "ok"))
    if status.HasField("last_change"):
        change = status.last_change
        pairs.append(("last change", f"at {fmt.timestamp(change.at)}: {change.diff.summary or 'no change'}"))
    return fmt.fields(pairs)


def diff_text(diff: admin_pb2.PolicyDiff) -> str:
    """A policy diff for people, grouped per tier (policy-wide first), one change a line."""
    if not diff.changes:
        return f"no change: the files hold version {diff.new_version}, which decides as {diff.old_version}"
    count = len(diff.changes)
    lines = [f"policy {diff.old_version} -> {diff.new_version}: {count} change{'s' if count != 1 else ''}"]
    sections: dict[str, list[admin_pb2.PolicyChangeEntry]] = {}
    for change in diff.changes:
        sections.setdefault(change.tier, []).append(change)
    for tier in sorted(sections, key=lambda t: (t != "", t)):
        heading = "policy-wide" if not tier else f"tier {tier}"
        if tier in diff.tiers_added:
            heading += " (added)"
        elif tier in diff.tiers_removed:
            heading += " (removed)"
        lines.append(f"{heading}:")
        for c in sections[tier]:
            if c.category == "feature":
                lines.append(f"  feature {c.key}: {'added' if c.change == 'added' else 'removed'}")
            else:
                lines.append(f"  {c.category} {c.key}: {c.shown_before} -> {c.shown_after}")
    return "\n".join(visible(line) for line in lines)


def at_risk_table(entries: Sequence[admin_pb2.SubjectAtRisk]) -> str:
    rows = [
        [
            e.subject,
            e.tier,
            quota_pb2.Decision.Name(e.live_decision),
            quota_pb2.Decision.Name(e.decision),
            quota_pb2.Reason.Name(e.reason),
            e.message,
        ]
        for e in entries
    ]
    return fmt.table(["SUBJECT", "TIER", "NOW", "UNDER THE FILES", "REASON", "WHY"], rows)


# --- commands ---------------------------------------------------------------------------


def cmd_status(remote: Remote, args: argparse.Namespace) -> Outcome:
    """The policy in force: version (content hash), when it was loaded, from which files,
    its tiers, and the error of the last failed reload (that policy was *not* loaded)."""
    reply = remote.call(remote.admin.GetPolicyStatus, admin_pb2.GetPolicyStatusRequest())
    text = policy_status_text(reply.status)
    if reply.HasField("shadow"):
        text += f"\n\n{shadow_text(reply.shadow)}"
    return Outcome(reply, text)


def shadow_text(shadow: admin_pb2.ShadowStatus) -> str:
    """The shadow policy (``serve --shadow-policies``) and its divergences on this replica."""
    pairs: list[tuple[str, str | list[str]]] = [
        ("shadow version", shadow.version),
        ("shadow files", list(shadow.files) or "-"),
        ("shadow decided", f"{shadow.decided:,} requests; {shadow.sampled:,} divergences sampled into the feed"),
    ]
    if shadow.dropped:
        pairs.append(("shadow dropped", f"{shadow.dropped:,} requests not shadowed (queue full or a read failed)"))
    if shadow.last_error:
        pairs.append(("shadow error", shadow.last_error.split("\n")))
    text = fmt.fields(pairs)
    if shadow.divergences:
        rows = [[d.tier, d.reason, f"{d.count:,}"] for d in shadow.divergences]
        text += "\n\n" + fmt.table(["TIER", "LIVE->SHADOW", "REQUESTS"], rows, right=(2,))
    return text


def cmd_reload(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Reload the policy files now. A bad file is refused (exit 1, FAILED_PRECONDITION,
    the errors on stderr) and the running policy stays; counters are never touched.
    With --dry-run the server loads and validates the files and swaps nothing: it prints
    every change against the policy in force and the active subjects who would be WARN or
    DENY now under the files' policy (evaluated on their counters, nothing reserved)."""
    dry_run = bool(getattr(args, "dry_run", False))
    reply = remote.call(remote.admin.ReloadPolicies, admin_pb2.ReloadPoliciesRequest(dry_run=dry_run))
    if dry_run:
        parts = [
            visible(f"dry run: nothing swapped; version {reply.status.version} stays in force"),
            diff_text(reply.diff),
        ]
        if reply.at_risk:
            parts.append(
                f"would be WARN or DENY now under the files' policy ({len(reply.at_risk)} of "
                f"{reply.subjects_checked} active subjects):\n{at_risk_table(reply.at_risk)}"
            )
        else:
            parts.append(f"nobody would be WARN or DENY now ({reply.subjects_checked} active subjects checked)")
        return Outcome(reply, "\n\n".join(parts))
    headline = (
        f"reloaded: version {reply.status.version} is in force"
        if reply.changed
        else f"unchanged: the files still hold version {reply.status.version}"
    )
    text = f"{visible(headline)}\n\n{policy_status_text(reply.status)}"
    if reply.changed and reply.diff.changes:
        text += f"\n\n{diff_text(reply.diff)}"
    return Outcome(reply, text)


def cmd_tier_set(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Move SUBJECT to TIER (\"\" returns it to the policy's default tier); in force for its
    next request on every replica. Audited with --reason."""
    reply = remote.call(
        remote.admin.SetTier, admin_pb2.SetTierRequest(subject=args.subject, tier=args.tier, reason=args.reason)
    )
    previous = reply.previous_tier or "(policy default)"
    return Outcome(reply, visible(f"{reply.subject}: tier {previous} -> {reply.tier or '(policy default)'}"))


def cmd_tier_get(remote: Remote, args: argparse.Namespace) -> Outcome:
    """SUBJECT's tier (assigned, or the policy's default), its overrides, the emergency
    stops that cover it and its limits in their current windows."""
    reply = remote.call(remote.admin.GetSubject, admin_pb2.GetSubjectRequest(subject=args.subject))
    origin = "assigned" if reply.tier_assigned else "policy default"
    parts = [fmt.fields([("subject", reply.subject), ("tier", f"{reply.tier} ({origin})")])]
    if reply.overrides:
        parts.append("overrides\n" + overrides_table(reply.overrides))
    if reply.stops:
        parts.append("EMERGENCY STOPS covering this subject\n" + stops_table(reply.stops))
    parts.append("limits\n" + limits_table(reply.limits))
    return Outcome(reply, "\n\n".join(parts))


def cmd_override_set(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Cap SUBJECT's METRIC per WINDOW at MAX (replacing its tier's cap), until deleted or
    for --ttl. Setting the same SUBJECT/METRIC/WINDOW again replaces it."""
    request = admin_pb2.SetOverrideRequest(
        subject=args.subject,
        metric=args.metric,
        window=args.window,
        max=args.max,
        ttl_seconds=args.ttl,
        reason=args.reason,
    )
    reply = remote.call(remote.admin.SetOverride, request)
    o = reply.override
    lifetime = o.expires_at - o.created_at if o.created_at else args.ttl
    until = f"for {fmt.duration(lifetime)}, until {fmt.timestamp(o.expires_at)}" if o.expires_at else "until deleted"
    text = f"{o.subject}: {o.metric} per {o.window} capped at {fmt.amount(o.metric, o.max)} {until}"
    if o.reason:
        text += f" (reason: {o.reason})"
    return Outcome(reply, visible(text))


def cmd_override_list(remote: Remote, args: argparse.Namespace) -> Outcome:
    """The overrides in force, of SUBJECT or of every subject."""
    reply = remote.call(remote.admin.ListOverrides, admin_pb2.ListOverridesRequest(subject=args.subject))
    if not reply.overrides:
        return Outcome(reply, visible(f"no overrides for {args.subject}") if args.subject else "no overrides")
    return Outcome(reply, overrides_table(reply.overrides))


def cmd_override_delete(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Remove SUBJECT's override of METRIC per WINDOW: the tier's cap applies again.
    Exit 5 when there was no such override."""
    request = admin_pb2.DeleteOverrideRequest(subject=args.subject, metric=args.metric, window=args.window)
    reply = remote.call(remote.admin.DeleteOverride, request)
    what = f"{args.subject}: {args.metric} per {args.window}"
    if not reply.deleted:
        return Outcome(reply, "", EXIT_NOT_FOUND, f"no override of {what}")
    return Outcome(reply, visible(f"{what}: override deleted; the tier's cap applies again"))


def cmd_stop(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Pull an emergency stop: every request it covers is denied (EMERGENCY_STOP) on every
    replica within 1 s, and it stays in force across restarts until ``resume``."""
    request = admin_pb2.EmergencyStopRequest(scope=args.scope, target=args.stop_target, reason=args.reason)
    reply = remote.call(remote.admin.EmergencyStop, request)
    stop = reply.stop
    return Outcome(
        reply,
        visible(f"EMERGENCY STOP in force: {stop_label(stop.scope, stop.target)} (reason: {stop.reason or '-'})"),
    )


def cmd_resume(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Lift an emergency stop. Exit 5 when no such stop was in force."""
    request = admin_pb2.ResumeStopRequest(scope=args.scope, target=args.stop_target, reason=args.reason)
    reply = remote.call(remote.admin.ResumeStop, request)
    label = stop_label(args.scope, args.stop_target)
    if not reply.resumed:
        return Outcome(reply, "", EXIT_NOT_FOUND, f"no emergency stop on {label}")
    return Outcome(reply, visible(f"resumed: {label}"))


def cmd_stops(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Every emergency stop in force."""
    reply = remote.call(remote.admin.ListStops, admin_pb2.ListStopsRequest())
    if not reply.stops:
        return Outcome(reply, "no emergency stops in force")
    return Outcome(reply, stops_table(reply.stops))


def cmd_usage(remote: Remote, args: argparse.Namespace) -> Outcome:
    """SUBJECT's tier and every limit in its current window: used, held, cap, use."""
    reply = remote.call(remote.quota.GetUsage, quota_pb2.GetUsageRequest(subject=args.subject))
    head = fmt.fields([("subject", args.subject), ("tier", reply.tier), ("policy", reply.policy_version)])
    return Outcome(reply, f"{head}\n\n{limits_table(reply.limits)}")


def cmd_top(remote: Remote, args: argparse.Namespace) -> Outcome:
    """The N subjects using the most of METRIC in the current WINDOW (used + held)."""
    request = admin_pb2.TopUsageRequest(metric=args.metric, window=args.window, n=args.n)
    reply = remote.call(remote.admin.TopUsage, request)
    since = fmt.timestamp(reply.window_start)
    head = visible(f"top {args.n} by {args.metric} per {args.window} (window from {since})")
    if not reply.entries:
        return Outcome(reply, f"{head}\n\nno usage in this window")
    rows = [
        [
            str(rank),
            entry.subject,
            fmt.amount(args.metric, entry.used),
            fmt.amount(args.metric, entry.held),
            fmt.amount(args.metric, entry.used + entry.held),
        ]
        for rank, entry in enumerate(reply.entries, start=1)
    ]
    return Outcome(
        reply, f"{head}\n\n" + fmt.table(["#", "SUBJECT", "USED", "HELD", "TOTAL"], rows, right=(0, 2, 3, 4))
    )


def _period(since: int, until: int) -> str:
    return f"{fmt.timestamp(since)} to {fmt.timestamp(until)}"


def cmd_recommend(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Caps suggested from the recorded daily usage per subject (the PERCENTILE of the
    subject-days with usage, per tier and metric, beside the cap now), promotion candidates
    (at WARN or BLOCK on at least --promote-min-days of the last DAYS days) and demotion
    candidates (below --demote-below of every daily cap on every day). Nothing is applied:
    quotactl tier set, or a policy edit, does that."""
    request = admin_pb2.RecommendRequest(
        tier=args.tier,
        percentile=args.percentile,
        days=args.days,
        promote_min_days=args.promote_min_days,
        demote_below=args.demote_below,
    )
    reply = remote.call(remote.admin.Recommend, request)
    head = visible(
        f"recommendations from {_period(reply.since, reply.until)} ({reply.days} days, "
        f"p{fmt.count(reply.percentile)} of daily usage per subject); nothing applied"
    )
    parts = [head]
    if reply.caps:
        rows = [
            [
                c.tier,
                c.metric,
                f"{c.active_subjects:,}",
                f"{c.subject_days:,}",
                fmt.amount(c.metric, c.p50),
                fmt.amount(c.metric, c.at_percentile),
                fmt.amount(c.metric, c.max),
                fmt.amount(c.metric, c.current_cap) if c.current_cap else "none",
                fmt.amount(c.metric, c.suggested_cap),
                f"{c.change:+.0%}" if c.current_cap else "-",
            ]
            for c in reply.caps
        ]
        headers = ["TIER", "METRIC", "SUBJECTS", "DAYS", "P50", f"P{fmt.count(reply.percentile)}", "MAX"]
        parts.append(
            "daily caps:\n"
            + fmt.table([*headers, "CAP NOW", "SUGGESTED", "CHANGE"], rows, right=(2, 3, 4, 5, 6, 7, 8, 9))
        )
    else:
        parts.append("daily caps: no usage recorded in the period")
    for title, found in (("promotion candidates", reply.promotions), ("demotion candidates", reply.demotions)):
        if not found:
            parts.append(f"{title}: none")
            continue
        rows = [
            [
                s.subject,
                s.tier,
                s.suggested_tier or "-",
                f"{s.days}",
                f"{s.active_days}",
                f"{s.denied}",
                fmt.percent(s.peak_ratio),
                s.rule,
            ]
            for s in found
        ]
        parts.append(
            f"{title}:\n"
            + fmt.table(
                ["SUBJECT", "TIER", "SUGGESTED", "DAYS", "ACTIVE", "DENIED", "PEAK", "WHY"], rows, right=(3, 4, 5, 6)
            )
        )
    return Outcome(reply, "\n\n".join(parts))


def cmd_estimates(remote: Remote, args: argparse.Namespace) -> Outcome:
    """How close estimates are to actual usage: per tier, feature, provider/model and
    metric, the p50 and p95 of actual / estimate over the COMMITTED records of the last
    DAYS days (below 1: reservations hold more than is used; above 1: usage overshoots)."""
    reply = remote.call(remote.admin.GetEstimates, admin_pb2.GetEstimatesRequest(tier=args.tier, days=args.days))
    head = visible(f"actual / estimated usage from {_period(reply.since, reply.until)} ({reply.days} days)")
    if not reply.ratios:
        return Outcome(reply, f"{head}\n\nno COMMITTED records in the period")
    rows = [
        [
            r.tier,
            r.feature,
            f"{r.provider}/{r.model}" if r.provider else "-",
            r.metric,
            f"{r.count:,}",
            f"{r.p50:.3f}",
            f"{r.p95:.3f}",
            f"{r.mean:.3f}",
            f"{r.over:,}",
        ]
        for r in reply.ratios
    ]
    table = fmt.table(
        ["TIER", "FEATURE", "MODEL", "METRIC", "RECORDS", "P50", "P95", "MEAN", "OVER"], rows, right=(4, 5, 6, 7, 8)
    )
    return Outcome(reply, f"{head}\n\n{table}")


def cmd_reset(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Zero SUBJECT's counters in their current windows (all metrics and windows unless
    --metric / --window narrow it). Audited with --reason."""
    request = admin_pb2.ResetUsageRequest(
        subject=args.subject, metric=args.metric, window=args.window, reason=args.reason
    )
    reply = remote.call(remote.admin.ResetUsage, request)
    scope = f"{args.metric or 'every metric'}, {args.window or 'every window'}"
    return Outcome(reply, visible(f"{args.subject}: {reply.counters_reset} counter(s) reset ({scope})"))


def cmd_audit(remote: Remote, args: argparse.Namespace) -> Outcome:
    """The latest admin changes, newest first: who, what, before and after, why."""
    reply = remote.call(remote.admin.ListAudit, admin_pb2.ListAuditRequest(limit=args.limit, subject=args.subject))
    if not reply.entries:
        return Outcome(reply, "no audit entries")
    rows = [
        [
            fmt.timestamp_ms(e.at),
            e.actor or "-",
            e.action,
            e.target or "-",
            e.reason or "-",
            fmt.describe_change(e.before, e.after),
        ]
        for e in reply.entries
    ]
    return Outcome(reply, fmt.table(["AT (UTC)", "ACTOR", "ACTION", "TARGET", "REASON", "CHANGE"], rows))


def cmd_webhooks(remote: Remote, args: argparse.Namespace) -> Outcome:
    """Webhook delivery state: each webhook with its pending, delivered and dead (given up)
    deliveries, then the latest deliveries (newest first; --state pending|delivered|dead,
    --webhook NAME), with their attempts, next attempt and last error."""
    request = events_pb2.ListWebhooksRequest(webhook=args.webhook, state=args.state, limit=args.limit)
    reply = remote.call(remote.admin.ListWebhooks, request)
    if not reply.webhooks:
        return Outcome(reply, "no webhooks (the policy's notifications.webhooks is empty)")
    names = {w.id: w.name or w.id for w in reply.webhooks}
    hooks = [
        [
            w.name or "-",
            w.id,
            w.url or "(no longer in the policy)",
            ",".join(events_pb2.EventKind.Name(k) for k in w.kinds) or "every kind",
            ",".join(w.tiers) or "every tier",
            fmt.count(w.pending),
            fmt.count(w.delivered),
            fmt.count(w.dead),
        ]
        for w in reply.webhooks
    ]
    text = fmt.table(["NAME", "ID", "URL", "KINDS", "TIERS", "PENDING", "DELIVERED", "DEAD"], hooks, right=(5, 6, 7))
    if reply.deliveries:
        rows = [
            [
                fmt.timestamp_ms(d.updated_at_ms),
                names.get(d.webhook_id, d.webhook_id),
                d.event_id,
                d.state,
                str(d.attempts),
                fmt.timestamp_ms(d.next_attempt_at_ms) if d.state == "pending" else "-",
                str(d.last_status) if d.last_status else "-",
                d.last_error or "-",
            ]
            for d in reply.deliveries
        ]
        headers = ["UPDATED (UTC)", "WEBHOOK", "EVENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "STATUS", "LAST ERROR"]
        text += "\n\n" + fmt.table(headers, rows, right=(4,))
    else:
        text += "\n\nno deliveries" + (f" in state {args.state}" if args.state else "")
    return Outcome(reply, text)


EVENT_FORMATS = ("table", "jsonl", "csv")
#: Waits between reconnects of ``events --follow`` (seconds), the last one repeated.
FOLLOW_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
#: Event ids remembered by ``events --follow`` to drop the overlap of a resumed stream.
FOLLOW_SEEN = 100_000
#: A dropped stream is resumed on these codes; any other ends the command.
FOLLOW_RETRY_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


def event_json(event: events_pb2.Event) -> str:
    """One event as one line of compact proto3 JSON (field names as in the .proto, keys sorted)."""
    data = json_format.MessageToDict(event, preserving_proto_field_name=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_cells(event: events_pb2.Event) -> list[str]:
    return [
        fmt.timestamp_ms(event.at_ms),
        events_pb2.EventKind.Name(event.kind) if event.kind in events_pb2.EventKind.values() else str(event.kind),
        event.subject or "-",
        event.tier or "-",
        fmt.event_what(event.feature, event.provider, event.model),
        fmt.money(event.cost_usd) if event.cost_usd else "-",
        event.actor or "-",
        fmt.event_detail(
            events_pb2.EventKind.Name(event.kind) if event.kind in events_pb2.EventKind.values() else "",
            event.detail,
            quota_pb2.Reason.Name(event.reason) if event.reason in quota_pb2.Reason.values() else "",
            event.limit.metric if event.HasField("limit") else "",
            event.limit.window if event.HasField("limit") else "",
            threshold=events_pb2.Threshold.Name(event.threshold)
            if event.threshold in events_pb2.Threshold.values()
            else "",
            decision=quota_pb2.Decision.Name(event.decision) if event.decision else "",
            actual=dict(event.actual),
            limit_used=event.limit.used + event.limit.held if event.HasField("limit") else 0.0,
            limit_max=event.limit.max if event.HasField("limit") else 0.0,
            limit_kind=_enum_name(quota_pb2.LimitKind, event.limit.kind) if event.HasField("limit") else "",
        ),
    ]


def _enum_name(enum: Any, value: int) -> str:
    return str(enum.Name(value)) if value and value in enum.values() else ""


def _amounts(values: Mapping[str, float]) -> str:
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":")) if values else ""


def event_csv_row(event: events_pb2.Event) -> list[str]:
    def name(enum: Any, value: int) -> str:
        return str(enum.Name(value)) if value and value in enum.values() else ""

    return [
        event.id,
        name(events_pb2.EventKind, event.kind),
        fmt.timestamp_ms(event.at_ms, zero=""),
        str(event.at_ms),
        event.subject,
        event.tier,
        event.feature,
        event.provider,
        event.model,
        event.request_id,
        event.reservation_id,
        _amounts(event.estimate),
        _amounts(event.actual),
        repr(event.cost_usd) if event.cost_usd else "0",
        name(quota_pb2.Decision, event.decision),
        name(quota_pb2.Reason, event.reason),
        name(events_pb2.Threshold, event.threshold),
        event.policy_version,
        event.actor,
        event.detail,
    ]


class EventPrinter:
    """Prints events as they come, in one of :data:`EVENT_FORMATS`; remembers what it printed
    (the last :data:`FOLLOW_SEEN` ids) so a resumed stream's overlap is not printed twice."""

    def __init__(self, form: str, *, follow: bool, out: TextIO | None = None) -> None:
        self.form = form
        self.follow = follow
        self.out = out or sys.stdout
        self.count = 0
        self.last_id = ""
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._rows: list[list[str]] = []
        self._csv = csv.writer(self.out, lineterminator="\n") if form == "csv" else None
        if self._csv is not None:
            self._csv.writerow(fmt.EVENT_CSV_HEADERS)
        elif form == "table" and follow:
            self._line(fmt.follow_row(fmt.EVENT_TABLE_HEADERS))

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def seen(self, event_id: str) -> bool:
        return event_id in self._seen

    def add(self, event: events_pb2.Event) -> None:
        if event.id in self._seen:
            return
        self._seen[event.id] = None
        if len(self._seen) > FOLLOW_SEEN:
            self._seen.popitem(last=False)
        self.count += 1
        self.last_id = event.id
        if self.form == "jsonl":
            self._line(event_json(event))
        elif self._csv is not None:
            self._csv.writerow([visible(cell) for cell in event_csv_row(event)])
            self.out.flush()
        elif self.follow:
            self._line(fmt.follow_row(event_cells(event)))
        else:
            self._rows.append(event_cells(event))

    def finish(self) -> None:
        """A table without --follow is printed at the end, aligned."""
        if self.form == "table" and not self.follow:
            if self._rows:
                self._line(fmt.table(list(fmt.EVENT_TABLE_HEADERS), self._rows, right=(5,)))
            else:
                self._line("no events")


def _event_filters(args: argparse.Namespace) -> tuple[str, list[int]]:
    return args.subject, sorted(set(args.kinds or ()))


def _list_events(remote: Remote, args: argparse.Namespace, printer: EventPrinter, *, since_ms: int = -1) -> None:
    subject, kinds = _event_filters(args)
    token = ""
    while True:
        request = events_pb2.ListEventsRequest(
            subject=subject,
            kinds=kinds,  # type: ignore[arg-type]
            since_ms=args.since if since_ms < 0 else since_ms,
            until_ms=args.until,
            page_size=1000,
            page_token=token,
        )
        reply = remote.call(remote.admin.ListEvents, request)
        for event in reply.events:
            printer.add(event)
        token = reply.next_page_token
        if not token:
            return


def _watch(remote: Remote, args: argparse.Namespace, after_id: str) -> Any:
    subject, kinds = _event_filters(args)
    request = events_pb2.WatchEventsRequest(subject=subject, kinds=kinds, after_id=after_id)  # type: ignore[arg-type]
    return remote.admin.WatchEvents(request, metadata=remote.metadata)


def _wait_started(stream: Any, timeout: float) -> None:
    """Until the server says the tail's starting point is fixed (initial metadata)."""
    waiter = threading.Thread(target=stream.initial_metadata, daemon=True)
    waiter.start()
    waiter.join(timeout)
    if waiter.is_alive():
        stream.cancel()
        raise_deadline()


def raise_deadline() -> None:
    raise FollowFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "the event stream did not start in time")


class FollowFailed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def cmd_events(remote: Remote, args: argparse.Namespace) -> Outcome:
    """The event feed (usage records, threshold crossings, stops, admin changes), oldest
    first, filtered by --subject, --kind (repeatable), --since and --until (ISO-8601 UTC, a
    date, or a duration ago such as 90m, 2h, 7d). --follow: then every new event as it is
    stored, resuming after the last event seen when the stream drops (no gap, no duplicate),
    until interrupted. --format table (default), jsonl (one proto3 JSON object per line) or csv."""
    form = "jsonl" if args.json else args.format
    printer = EventPrinter(form, follow=args.follow)
    if not args.follow:
        _list_events(remote, args, printer)
        printer.finish()
        return Outcome(events_pb2.ListEventsResponse(), "", printed=True)
    # The tail first, then the history: whatever is stored meanwhile is in one or the other
    # (or both: printed once), so nothing falls between them.
    started_ms = int(time.time() * 1000)
    stream = _watch(remote, args, "")
    _wait_started(stream, remote.timeout)
    if not args.until:
        _list_events(remote, args, printer)
    failures = 0
    while True:
        try:
            if stream is None:
                if printer.last_id:  # resume right after the last event printed
                    stream = _watch(remote, args, printer.last_id)
                else:  # nothing printed yet: tail from now, and list what came since the start
                    stream = _watch(remote, args, "")
                    _wait_started(stream, remote.timeout)
                    if not args.until:
                        _list_events(remote, args, printer, since_ms=max(args.since, started_ms - 1000))
            for event in stream:
                failures = 0
                if args.until and event.at_ms >= args.until:
                    continue
                printer.add(event)
            return Outcome(events_pb2.ListEventsResponse(), "", printed=True)  # the server ended the stream
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code not in FOLLOW_RETRY_CODES and code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            delay = FOLLOW_BACKOFF[min(failures, len(FOLLOW_BACKOFF) - 1)]
            failures += 1
            print(
                visible(f"quotactl: the event stream dropped ({code.name}); resuming after {printer.last_id or 'now'}"),
                file=sys.stderr,
            )
            time.sleep(delay)
            stream = None


def parse_time(text: str) -> int:
    """``--since`` / ``--until``: unix ms of ``2026-11-24T18:00:00Z`` (ISO-8601, UTC unless it
    says otherwise), ``2026-11-24`` (midnight UTC), or a duration ago (``90m``, ``2h``, ``7d``)."""
    value = text.strip()
    try:
        seconds = fmt.parse_duration(value)
    except ValueError:
        pass
    else:
        return max(0, int(time.time() * 1000) - seconds * 1000)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {value!r} (ISO-8601 such as 2026-11-24T18:00:00Z, a date, or a duration ago: 90m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000))


def parse_kind(text: str) -> list[int]:
    """``--kind``: EventKind names (any case, with or without EVENT_KIND_), comma-separated."""
    kinds = []
    for part in text.split(","):
        name = part.strip().upper().removeprefix("EVENT_KIND_")
        known = [k for k, v in events_pb2.EventKind.items() if v]
        if name not in known:
            choices = ", ".join(known)
            raise argparse.ArgumentTypeError(f"unknown event kind {part.strip()!r}; one of: {choices}")
        kinds.append(events_pb2.EventKind.Value(name))
    return kinds


# --- arguments --------------------------------------------------------------------------


def parse_scope(text: str) -> int:
    """``global`` / ``PROVIDER`` / ... (any case) -> the StopScope value."""
    try:
        return SCOPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid scope {text!r} (choose from {', '.join(SCOPES)})") from None


def parse_ttl(text: str) -> int:
    try:
        return fmt.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The global options, on the top-level parser (with defaults) and on every command
    (without defaults, so ``quotactl status --json`` and ``quotactl --json status`` agree)."""
    env = os.environ

    def default(value: object) -> object:
        return value if top_level else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        default=default(env.get("QUOTA_TARGET", DEFAULT_TARGET)),
        help=f"server HOST:PORT (env QUOTA_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token-file",
        default=default(""),
        help="read the admin token from this file (else env QUOTA_ADMIN_TOKEN)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print the response as JSON")
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS with the system's trusted CAs (implied by --tls-ca / --tls-cert)",
    )
    group.add_argument(
        "--tls-ca",
        default=default(env.get("QUOTA_TLS_CA", "")),
        help="PEM CA bundle to verify the server (env QUOTA_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        default=default(env.get("QUOTA_TLS_CLIENT_CERT", "")),
        help="PEM client certificate for mTLS (env QUOTA_TLS_CLIENT_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=default(env.get("QUOTA_TLS_CLIENT_KEY", "")),
        help="PEM private key of --tls-cert (env QUOTA_TLS_CLIENT_KEY)",
    )
    group.add_argument(
        "--tls-server-name",
        default=default(env.get("QUOTA_TLS_SERVER_NAME", "")),
        help="verify the server certificate against this name instead of the target's host",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quotactl",
        description="Operate a running quota-service: tiers, overrides, emergency stops, policies, usage, audit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Command, summary: str
    ) -> argparse.ArgumentParser:
        contract = " ".join((handler.__doc__ or "").replace("``", "").split())
        sub = parent.add_parser(name, help=summary, description=contract)
        _add_connection_options(sub, top_level=False)
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")

    tier = group("tier", "a subject's tier: set, get")
    p = command(tier, "set", cmd_tier_set, "move a subject to a tier")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("tier", metavar="TIER", help="a tier of the policy, e.g. basic_alpha ('' for the default tier)")
    p.add_argument("--reason", default="", help="why (kept in the audit log)")
    p = command(tier, "get", cmd_tier_get, "a subject's tier, overrides, stops and limits")
    p.add_argument("subject", metavar="SUBJECT")

    override = group("override", "per-subject caps that replace the tier's: set, list, delete")
    p = command(override, "set", cmd_override_set, "cap a subject's metric per window")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("metric", metavar="METRIC", help="tokens, images, cost_usd, ...")
    p.add_argument("window", metavar="WINDOW", choices=WINDOWS, help="minute | hour | day | month")
    p.add_argument("max", metavar="MAX", type=float, help="the cap (cost_usd in USD)")
    p.add_argument(
        "--ttl", type=parse_ttl, default=0, help="expire after this long: 3600, 90m, 12h, 7d (default: never)"
    )
    p.add_argument("--reason", default="", help="why (kept in the audit log)")
    p = command(override, "list", cmd_override_list, "the overrides in force")
    p.add_argument(
        "subject", metavar="SUBJECT", nargs="?", default="", help="only this subject's (default: every subject's)"
    )
    p = command(override, "delete", cmd_override_delete, "remove an override")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("metric", metavar="METRIC")
    p.add_argument("window", metavar="WINDOW", choices=WINDOWS, help="minute | hour | day | month")

    scope_help = "global | provider | feature | tier | subject (any case)"
    p = command(commands, "stop", cmd_stop, "pull an emergency stop (deny everything it covers)")
    p.add_argument("scope", metavar="SCOPE", type=parse_scope, help=scope_help)
    p.add_argument(
        "stop_target",
        metavar="TARGET",
        nargs="?",
        default="",
        help="provider, feature, tier or subject (none for global)",
    )
    p.add_argument("--reason", required=True, help="why (required; shown to operators and kept in the audit log)")
    p = command(commands, "resume", cmd_resume, "lift an emergency stop")
    p.add_argument("scope", metavar="SCOPE", type=parse_scope, help=scope_help)
    p.add_argument("stop_target", metavar="TARGET", nargs="?", default="", help="as given to stop")
    p.add_argument("--reason", default="", help="why (kept in the audit log)")
    command(commands, "stops", cmd_stops, "the emergency stops in force")

    p = command(commands, "reload", cmd_reload, "reload the policy files now (--dry-run: show what would change)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="load and validate the files, swap nothing: the changes and who would be WARN or DENY now",
    )
    command(commands, "status", cmd_status, "the policy in force and the last reload error")

    p = command(commands, "usage", cmd_usage, "a subject's limits in their current windows")
    p.add_argument("subject", metavar="SUBJECT")
    p = command(commands, "top", cmd_top, "who is spending: the top subjects of a metric")
    p.add_argument("metric", metavar="METRIC", help="tokens, images, cost_usd, ...")
    p.add_argument("window", metavar="WINDOW", choices=WINDOWS, help="minute | hour | day | month")
    p.add_argument("-n", type=positive_int, default=10, help="how many subjects (default 10)")
    p = command(commands, "recommend", cmd_recommend, "caps, promotions and demotions suggested from recorded usage")
    p.add_argument("--tier", default="", help="only this tier (default: every tier)")
    p.add_argument("--percentile", type=positive_float, default=95.0, help="of daily usage per subject (default 95)")
    p.add_argument("--days", type=positive_int, default=14, help="the last DAYS days (default 14)")
    p.add_argument(
        "--promote-min-days",
        type=positive_int,
        default=3,
        help="promote subjects at WARN or BLOCK on at least this many days (default 3)",
    )
    p.add_argument(
        "--demote-below",
        type=positive_float,
        default=0.2,
        help="demote subjects below this fraction of every daily cap on every day (default 0.2)",
    )
    p = command(commands, "estimates", cmd_estimates, "actual / estimated usage per tier, feature and model")
    p.add_argument("--tier", default="", help="only this tier (default: every tier)")
    p.add_argument("--days", type=positive_int, default=14, help="the last DAYS days (default 14)")
    p = command(commands, "reset", cmd_reset, "zero a subject's counters")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("--metric", default="", help="only this metric (default: every metric)")
    p.add_argument(
        "--window",
        metavar="WINDOW",
        choices=WINDOWS,
        default="",
        help="only this window: minute | hour | day | month (default: every window)",
    )
    p.add_argument("--reason", default="", help="why (kept in the audit log)")
    p = command(commands, "audit", cmd_audit, "the latest admin changes")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many entries (default 20)")
    p.add_argument("--subject", default="", help="only changes to this subject")
    p = command(commands, "events", cmd_events, "the event feed: records, thresholds, stops, admin changes")
    p.add_argument("--subject", default="", help="only this subject's events")
    p.add_argument(
        "--kind",
        dest="kind_lists",
        type=parse_kind,
        action="append",
        default=[],
        help="only these kinds: COMMITTED, DENIED, THRESHOLD_CROSSED, STOP_CHANGED, ADMIN_CHANGE, ... "
        "(repeatable, or comma-separated)",
    )
    p.add_argument("--since", type=parse_time, default=0, help="from this time: ISO-8601, a date, or 2h (ago)")
    p.add_argument("--until", type=parse_time, default=0, help="before this time (same forms)")
    p.add_argument("--follow", "-f", action="store_true", help="then keep printing new events as they are stored")
    p.add_argument("--format", choices=EVENT_FORMATS, default="table", help="table (default), jsonl or csv")
    p = command(commands, "webhooks", cmd_webhooks, "webhook delivery state: pending, delivered, dead")
    p.add_argument("--webhook", default="", help="only this webhook (its name or id)")
    p.add_argument(
        "--state", choices=("pending", "delivered", "dead"), default="", help="only deliveries in this state"
    )
    p.add_argument("--limit", type=positive_int, default=20, help="deliveries listed, newest first (default 20)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the arguments; a usage error exits 2 (argparse's convention)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler in (cmd_stop, cmd_resume):
        if args.scope == admin_pb2.GLOBAL and args.stop_target:
            parser.error("a global stop takes no TARGET")
        if args.scope != admin_pb2.GLOBAL and not args.stop_target:
            parser.error(f"a {scope_name(args.scope)} stop needs a TARGET")
    if args.handler is cmd_events:
        args.kinds = [kind for kinds in args.kind_lists for kind in kinds]
        if args.since and args.until and args.since >= args.until:
            parser.error("--since must be before --until")
    if not args.target.strip():
        parser.error("--target is empty (HOST:PORT, or env QUOTA_TARGET)")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together (mutual TLS)")
    return args


# --- connection -------------------------------------------------------------------------


def read_token(args: argparse.Namespace) -> str:
    """The admin token: the first line of --token-file, else env QUOTA_ADMIN_TOKEN, else ``""``
    (no credentials sent; only a server with --insecure-admin accepts that)."""
    if args.token_file:
        token = _read(args.token_file, "token file").decode("utf-8", errors="replace").strip()
    else:
        token = os.environ.get("QUOTA_ADMIN_TOKEN", "").strip()
    if any(not (0x21 <= ord(ch) <= 0x7E) for ch in token):
        raise UsageError("the admin token must be printable ASCII without spaces")
    return token


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A plaintext channel, or TLS when any TLS option is given (mutual TLS with a client
    certificate). Reads the PEM files now: an unreadable one is a :class:`UsageError`."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "CA file") if args.tls_ca else None,
        private_key=_read(args.tls_key, "client key") if args.tls_key else None,
        certificate_chain=_read(args.tls_cert, "client certificate") if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def describe_rpc_error(exc: grpc.RpcError, args: argparse.Namespace) -> tuple[int, str]:
    """The exit code and the stderr text for a failed RPC."""
    if isinstance(exc, grpc.Call):
        code, details = exc.code(), exc.details() or ""
    else:  # not raised by the stubs in practice; never let it escape as a traceback
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    exit_code = exit_code_for(code)
    message = visible(f"quotactl: {code.name}: {details}")
    if exit_code == EXIT_UNREACHABLE:
        target = visible(args.target)
        message += f"\nquotactl: cannot reach quota-service at {target} (timeout {args.timeout:g}s)"
        if args.tls or args.tls_ca or args.tls_cert:
            message += " (check the TLS options: CA, client certificate, server name)"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message += "\nquotactl: set QUOTA_ADMIN_TOKEN or --token-file"
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        message += "\nquotactl: the admin token was refused"
    elif code == grpc.StatusCode.FAILED_PRECONDITION and args.handler is cmd_reload:
        message += "\nquotactl: nothing was reloaded; the last good policy stays in force"
    return exit_code, message


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; print its answer or its error. Returns the exit code."""
    handler: Command = args.handler
    try:
        token = read_token(args)
        with open_channel(args) as channel:
            outcome = handler(Remote(channel, timeout=args.timeout, token=token), args)
    except UsageError as exc:
        print(visible(f"quotactl: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        exit_code, message = describe_rpc_error(exc, args)
        print(message, file=sys.stderr)
        return exit_code
    if outcome.printed:
        pass
    elif args.json:
        print(to_json(outcome.reply))
    elif outcome.text:
        print(outcome.text)
    if outcome.problem:
        print(visible(f"quotactl: {outcome.problem}"), file=sys.stderr)
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quotactl`` console script; returns the exit code."""
    args = parse_args(argv)
    try:
        code = run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # ``quotactl audit | head``: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("quotactl: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
