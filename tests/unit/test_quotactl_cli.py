"""quotactl without a network: arguments, exit codes, output and error reporting, against a
fake channel that answers the generated stubs with canned messages."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from quota.v1 import admin_pb2, quota_pb2
from quota_service import quotactl
from quota_service.escaping import visible

pytestmark = pytest.mark.unit


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a sync stub raises: an RpcError that is also the Call with its status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class FakeChannel:
    """Answers ``/quota.v1.<Service>/<Method>`` with ``answers[Method]`` (a message, or an
    exception to raise) and records every call."""

    def __init__(self, answers: dict[str, Message | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Message, dict[str, Any]]] = []

    def unary_unary(self, method: str, **_: object) -> Callable[..., Message]:
        name = method.rsplit("/", 1)[1]

        def call(request: Message, **kwargs: Any) -> Message:
            self.calls.append((name, request, kwargs))
            answer = self.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    def unary_stream(self, method: str, **_: object) -> Callable[..., Iterator[Message]]:
        """Server-streaming methods (``WatchEvents``): streams ``answers[Method]`` once."""
        unary = self.unary_unary(method)

        def call(request: Message, **kwargs: Any) -> Iterator[Message]:
            yield unary(request, **kwargs)

        return call

    def __enter__(self) -> FakeChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "QUOTA_TARGET",
        "QUOTA_ADMIN_TOKEN",
        "QUOTA_TLS_CA",
        "QUOTA_TLS_CLIENT_CERT",
        "QUOTA_TLS_CLIENT_KEY",
        "QUOTA_TLS_SERVER_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUOTA_ADMIN_TOKEN", "sekret")


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChannel]:
    fake = FakeChannel({})
    monkeypatch.setattr(quotactl, "open_channel", lambda args: fake)
    yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = quotactl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["tier"],
        ["tier", "set", "only-subject"],
        ["stop", "subject", "u1"],  # --reason is required
        ["stop", "everywhere", "--reason", "r"],
        ["stop", "global", "extra-target", "--reason", "r"],
        ["stop", "provider", "--reason", "r"],  # needs a target
        ["resume", "tier"],
        ["override", "set", "u1", "tokens", "fortnight", "10"],
        ["override", "set", "u1", "tokens", "day", "ten"],
        ["override", "set", "u1", "tokens", "day", "10", "--ttl", "soon"],
        ["top", "tokens", "day", "-n", "0"],
        ["audit", "--limit", "-1"],
        ["--timeout", "0", "status"],
        ["--tls-cert", "c.pem", "status"],  # without --tls-key
        ["--target", "", "status"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        quotactl.main(argv)
    assert exited.value.code == 2
    assert "usage: quotactl" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        quotactl.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for line in ("0  ok", "1  the server refused", "2  usage error", "3  the server is unreachable", "4  not allowed"):
        assert line in out
    assert "5  not found" in out and "QUOTA_ADMIN_TOKEN" in out


@pytest.mark.parametrize("spelling", ["subject", "SUBJECT", "Subject"])
def test_scopes_are_case_insensitive(spelling: str) -> None:
    args = quotactl.parse_args(["stop", spelling, "u1", "--reason", "r"])
    assert args.scope == admin_pb2.SUBJECT


def test_global_options_go_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA_TARGET", "quota.internal:443")
    before = quotactl.parse_args(["--json", "--timeout", "2", "status"])
    after = quotactl.parse_args(["status", "--json", "--timeout", "2"])
    default = quotactl.parse_args(["status"])
    assert (before.json, before.timeout, before.target) == (True, 2.0, "quota.internal:443")
    assert (after.json, after.timeout, after.target) == (True, 2.0, "quota.internal:443")
    assert (default.json, default.timeout, default.target) == (False, quotactl.DEFAULT_TIMEOUT, "quota.internal:443")


def test_a_stop_target_is_not_the_server_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA_TARGET", "quota.internal:443")
    args = quotactl.parse_args(["stop", "provider", "openai", "--reason", "r"])
    assert (args.target, args.stop_target) == ("quota.internal:443", "openai")
    assert quotactl.parse_args(["resume", "global"]).target == "quota.internal:443"


def test_ttl_takes_seconds_or_units() -> None:
    assert quotactl.parse_args(["override", "set", "u", "tokens", "day", "5", "--ttl", "90m"]).ttl == 5400
    assert quotactl.parse_args(["override", "set", "u", "tokens", "day", "5", "--ttl", "3600"]).ttl == 3600
    assert quotactl.parse_args(["override", "set", "u", "tokens", "day", "5"]).ttl == 0


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (grpc.StatusCode.UNAVAILABLE, 3),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 3),
        (grpc.StatusCode.UNAUTHENTICATED, 4),
        (grpc.StatusCode.PERMISSION_DENIED, 4),
        (grpc.StatusCode.NOT_FOUND, 5),
        (grpc.StatusCode.INVALID_ARGUMENT, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.INTERNAL, 1),
        (grpc.StatusCode.UNIMPLEMENTED, 1),
        (grpc.StatusCode.UNKNOWN, 1),
    ],
)
def test_exit_code_of_each_status(status: grpc.StatusCode, exit_code: int) -> None:
    assert quotactl.exit_code_for(status) == exit_code


# --- calls, output, errors ------------------------------------------------------------------


def test_every_call_carries_the_token_and_the_deadline(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    channel.answers["GetPolicyStatus"] = admin_pb2.GetPolicyStatusResponse(status=admin_pb2.PolicyStatus(version="v1"))
    code, out, _ = run(capsys, "--timeout", "1.5", "status")
    assert code == 0 and "version       v1" in out
    (name, _, kwargs) = channel.calls[0]
    assert name == "GetPolicyStatus"
    assert kwargs == {"timeout": 1.5, "metadata": (("authorization", "Bearer sekret"),)}


def test_the_token_file_wins_over_the_environment(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    channel.answers["ListStops"] = admin_pb2.ListStopsResponse()
    code, out, _ = run(capsys, "--token-file", str(token_file), "stops")
    assert code == 0 and out == "no emergency stops in force\n"
    assert channel.calls[0][2]["metadata"] == (("authorization", "Bearer from-file"),)


def test_no_token_sends_no_credentials(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUOTA_ADMIN_TOKEN")
    channel.answers["ListStops"] = admin_pb2.ListStopsResponse()
    assert run(capsys, "stops")[0] == 0
    assert channel.calls[0][2]["metadata"] == ()


def test_an_unreadable_token_file_is_a_usage_error(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "--token-file", str(tmp_path / "nope"), "status")
    assert (code, out) == (2, "")
    assert "cannot read the token file" in err and not channel.calls


@pytest.mark.parametrize(
    ("status", "exit_code", "hint"),
    [
        (grpc.StatusCode.UNAVAILABLE, 3, "cannot reach quota-service at 127.0.0.1:50051 (timeout 5s)"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 3, "cannot reach quota-service"),
        (grpc.StatusCode.UNAUTHENTICATED, 4, "set QUOTA_ADMIN_TOKEN or --token-file"),
        (grpc.StatusCode.PERMISSION_DENIED, 4, "the admin token was refused"),
        (grpc.StatusCode.NOT_FOUND, 5, ""),
        (grpc.StatusCode.INVALID_ARGUMENT, 1, ""),
    ],
)
def test_rpc_errors_become_exit_codes_and_one_line_on_stderr(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], status: grpc.StatusCode, exit_code: int, hint: str
) -> None:
    channel.answers["SetTier"] = FakeRpcError(status, "what the server said")
    code, out, err = run(capsys, "tier", "set", "u1", "basic_alpha")
    assert (code, out) == (exit_code, "")
    assert err.startswith(f"quotactl: {status.name}: what the server said\n")
    assert hint in err and "Traceback" not in err


def test_a_refused_reload_says_the_last_good_policy_stays(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    channel.answers["ReloadPolicies"] = FakeRpcError(
        grpc.StatusCode.FAILED_PRECONDITION, "policies/alpha.yaml:12: tiers.free_alpha.limits: bad"
    )
    code, _, err = run(capsys, "reload")
    assert code == 1
    assert "FAILED_PRECONDITION: policies/alpha.yaml:12" in err and "last good policy stays in force" in err


def test_delete_of_a_missing_override_exits_5(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["DeleteOverride"] = admin_pb2.DeleteOverrideResponse(deleted=False)
    code, out, err = run(capsys, "override", "delete", "u1", "tokens", "day")
    assert (code, out) == (5, "")
    assert err == "quotactl: no override of u1: tokens per day\n"
    code, out, _ = run(capsys, "--json", "override", "delete", "u1", "tokens", "day")
    assert code == 5 and json.loads(out) == {"deleted": False}


def test_resume_of_a_stop_not_in_force_exits_5(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["ResumeStop"] = admin_pb2.ResumeStopResponse(resumed=False)
    code, _, err = run(capsys, "resume", "PROVIDER", "openai")
    assert code == 5 and err == "quotactl: no emergency stop on provider openai\n"
    request = channel.calls[0][1]
    assert isinstance(request, admin_pb2.ResumeStopRequest)
    assert (request.scope, request.target) == (admin_pb2.PROVIDER, "openai")


def test_json_output_has_every_field_with_the_proto_names(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    channel.answers["GetUsage"] = quota_pb2.GetUsageResponse(
        tier="free_alpha",
        policy_version="v1",
        limits=[quota_pb2.LimitStatus(metric="tokens", window="day", used=300, max=1000, resets_at=1795564800)],
    )
    code, out, _ = run(capsys, "usage", "u1", "--json")
    assert code == 0
    reply = json.loads(out)
    assert reply["tier"] == "free_alpha"
    limit = reply["limits"][0]
    assert limit["resets_at"] == 1795564800  # int64 as a number
    assert limit["held"] == 0.0 and limit["kind"] == "LIMIT_KIND_UNSPECIFIED"  # zero fields present
    assert list(limit) == sorted(limit)


def test_usage_table(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["GetUsage"] = quota_pb2.GetUsageResponse(
        tier="free_alpha",
        policy_version="v1",
        limits=[
            quota_pb2.LimitStatus(
                metric="tokens",
                window="day",
                used=900,
                held=40,
                max=1000,
                remaining=60,
                ratio=0.94,
                resets_at=1795564800,
                kind=quota_pb2.LIMIT_KIND_TIER,
            ),
            quota_pb2.LimitStatus(
                metric="cost_usd",
                window="month",
                used=1.5,
                max=10,
                remaining=8.5,
                ratio=0.15,
                resets_at=1796083200,
                kind=quota_pb2.LIMIT_KIND_TIER,
            ),
        ],
    )
    code, out, _ = run(capsys, "usage", "u1")
    assert code == 0
    assert out.splitlines() == [
        "subject  u1",
        "tier     free_alpha",
        "policy   v1",
        "",
        "METRIC    WINDOW  KIND   USED   HELD     MAX  REMAINING    USE  RESETS (UTC)",
        "tokens    day     tier    900     40   1,000         60  94.0%  2026-11-25T00:00:00Z",
        "cost_usd  month   tier  $1.50  $0.00  $10.00      $8.50  15.0%  2026-12-01T00:00:00Z",
    ]


def test_status_shows_the_last_reload_error(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["GetPolicyStatus"] = admin_pb2.GetPolicyStatusResponse(
        status=admin_pb2.PolicyStatus(
            version="abc",
            loaded_at=1795564800,
            files=["policies/alpha.yaml"],
            last_error="policies/alpha.yaml:3: x: bad\npolicies/alpha.yaml:9: y: bad",
            last_error_at=1795564860,
            tiers=["free_alpha"],
            default_tier="free_alpha",
        )
    )
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert "last reload   FAILED at 2026-11-25T00:01:00Z; version abc stays" in out
    assert "error         policies/alpha.yaml:3: x: bad\n              policies/alpha.yaml:9: y: bad" in out


def test_top_ranks_and_totals(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["TopUsage"] = admin_pb2.TopUsageResponse(
        window_start=1795478400,
        entries=[
            admin_pb2.UsageEntry(subject="big", used=4.5, held=0.5),
            admin_pb2.UsageEntry(subject="small", used=1),
        ],
    )
    code, out, _ = run(capsys, "top", "cost_usd", "day", "-n", "2")
    assert code == 0
    assert out.splitlines() == [
        "top 2 by cost_usd per day (window from 2026-11-24T00:00:00Z)",
        "",
        "#  SUBJECT   USED   HELD  TOTAL",
        "1  big      $4.50  $0.50  $5.00",
        "2  small    $1.00  $0.00  $1.00",
    ]
    request = channel.calls[0][1]
    assert isinstance(request, admin_pb2.TopUsageRequest) and request.n == 2


def test_override_set_sends_the_ttl_and_says_until_when(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    channel.answers["SetOverride"] = admin_pb2.SetOverrideResponse(
        override=admin_pb2.Override(
            subject="u1", metric="cost_usd", window="month", max=25, expires_at=1795568400, reason="demo"
        )
    )
    code, out, _ = run(capsys, "override", "set", "u1", "cost_usd", "month", "25", "--ttl", "1h", "--reason", "demo")
    assert code == 0
    assert out == "u1: cost_usd per month capped at $25.00 for 1h, until 2026-11-25T01:00:00Z (reason: demo)\n"
    request = channel.calls[0][1]
    assert isinstance(request, admin_pb2.SetOverrideRequest)
    assert (request.max, request.ttl_seconds, request.reason) == (25.0, 3600, "demo")


def test_audit_table_compacts_before_and_after(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["ListAudit"] = admin_pb2.ListAuditResponse(
        entries=[
            admin_pb2.AuditEntry(
                id="1-0",
                at=1795564800123,
                actor="token:abc",
                action="SetTier",
                target="u1",
                before='{"tier": "free_alpha"}',
                after='{"tier": "basic_alpha"}',
                reason="upgrade",
            )
        ]
    )
    code, out, _ = run(capsys, "audit", "--limit", "5", "--subject", "u1")
    assert code == 0
    assert re.split(r"\s{2,}", out.splitlines()[1]) == [
        "2026-11-25T00:00:00.123Z",
        "token:abc",
        "SetTier",
        "u1",
        "upgrade",
        "tier: free_alpha -> basic_alpha",
    ]
    request = channel.calls[0][1]
    assert isinstance(request, admin_pb2.ListAuditRequest) and (request.limit, request.subject) == (5, "u1")


# --- hostile text: nothing reaches the terminal raw ----------------------------------------

#: A forged table row, terminal control sequences (clear screen, set title, CSI as a C1
#: control), a carriage return, NUL, DEL, bidi overrides and isolates, invisible format
#: characters and a Unicode line separator.
HOSTILE = "ev\nu9  FORGED  row\x1b[2J\x1b]0;t\x07\r\t\x00\x7f\x9b31m\u202eabc\u2066x\u2069\u200b\ufeff\u2028end"
H = HOSTILE


def _hostile_override() -> admin_pb2.Override:
    return admin_pb2.Override(subject=H, metric=H, window=H, max=5, reason=H, created_by=H, created_at=1795564800)


def _hostile_stop() -> admin_pb2.Stop:
    return admin_pb2.Stop(scope=admin_pb2.SUBJECT, target=H, reason=H, created_by=H, created_at=1795564800)


def _hostile_status() -> admin_pb2.PolicyStatus:
    return admin_pb2.PolicyStatus(
        version=H, files=[H, H], last_error=H, last_error_at=1795564800, tiers=[H], default_tier=H
    )


HOSTILE_LIMIT = quota_pb2.LimitStatus(metric=H, window=H, used=1, max=2, kind=quota_pb2.LIMIT_KIND_TIER)
HOSTILE_ANSWERS: dict[str, Message] = {
    "GetPolicyStatus": admin_pb2.GetPolicyStatusResponse(status=_hostile_status()),
    "ReloadPolicies": admin_pb2.ReloadPoliciesResponse(status=_hostile_status(), changed=True),
    "SetTier": admin_pb2.SetTierResponse(subject=H, tier=H, previous_tier=H),
    "GetSubject": admin_pb2.GetSubjectResponse(
        subject=H, tier=H, overrides=[_hostile_override()], stops=[_hostile_stop()], limits=[HOSTILE_LIMIT]
    ),
    "SetOverride": admin_pb2.SetOverrideResponse(override=_hostile_override()),
    "ListOverrides": admin_pb2.ListOverridesResponse(overrides=[_hostile_override()]),
    "DeleteOverride": admin_pb2.DeleteOverrideResponse(deleted=False),
    "EmergencyStop": admin_pb2.EmergencyStopResponse(stop=_hostile_stop()),
    "ResumeStop": admin_pb2.ResumeStopResponse(resumed=False),
    "ListStops": admin_pb2.ListStopsResponse(stops=[_hostile_stop()]),
    "GetUsage": quota_pb2.GetUsageResponse(tier=H, policy_version=H, limits=[HOSTILE_LIMIT]),
    "TopUsage": admin_pb2.TopUsageResponse(entries=[admin_pb2.UsageEntry(subject=H, used=1)]),
    "ResetUsage": admin_pb2.ResetUsageResponse(counters_reset=1),
    "ListAudit": admin_pb2.ListAuditResponse(
        entries=[
            admin_pb2.AuditEntry(
                at=1795564800123,
                actor=H,
                action=H,
                target=H,
                reason=H,
                before=json.dumps({"tier": H}),
                after=json.dumps({"tier": "x", "note": H}),
            ),
            admin_pb2.AuditEntry(action="SetTier", before="null", after=json.dumps({"reason": H})),
            admin_pb2.AuditEntry(action="SetTier", before=H, after=H),  # not JSON at all
        ]
    ),
}
HOSTILE_COMMANDS = [
    ["status"],
    ["reload"],
    ["tier", "set", H, H, "--reason", H],
    ["tier", "get", H],
    ["override", "set", H, H, "day", "5", "--reason", H],
    ["override", "list"],
    ["override", "list", H],
    ["override", "delete", H, H, "day"],
    ["stop", "subject", H, "--reason", H],
    ["resume", "subject", H],
    ["stops"],
    ["usage", H],
    ["top", H, "day"],
    ["reset", H, "--metric", H],
    ["audit"],
]


def assert_nothing_raw(text: str) -> None:
    """Every character that would act on the terminal, or hide, is escaped: only line
    breaks of our own remain."""
    raw = {ch for ch in text if ch != "\n" and visible(ch) != ch}
    assert not raw, f"raw characters {sorted(raw)!r} in\n{text}"


@pytest.mark.parametrize("argv", HOSTILE_COMMANDS, ids=[" ".join(a[:2]).replace(H, "H") for a in HOSTILE_COMMANDS])
def test_hostile_text_is_escaped_in_every_table_and_sentence(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    channel.answers.update(HOSTILE_ANSWERS)
    code, out, err = run(capsys, *argv)
    assert code in (0, 5), err
    assert_nothing_raw(out)
    assert_nothing_raw(err)
    shown = out + err
    assert "\\x1b[2J" in shown and "\\u202e" in shown and "\\n" in shown  # visibly, where they were
    forged = [line for line in shown.splitlines() if "u9  FORGED" in line and "ev\\nu9  FORGED" not in line]
    if argv[0] in ("status", "reload"):
        # The policy error is one problem a line: its line break starts a continuation
        # line under the value column, never a label or a row of its own.
        assert forged == [" " * len("default tier  ") + visible(H.split("\n")[1])]
    else:
        assert forged == []  # no forged row


@pytest.mark.parametrize("argv", HOSTILE_COMMANDS, ids=[" ".join(a[:2]).replace(H, "H") for a in HOSTILE_COMMANDS])
def test_hostile_text_stays_exact_in_json(
    channel: FakeChannel, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    channel.answers.update(HOSTILE_ANSWERS)
    code, out, _ = run(capsys, "--json", *argv)
    assert code in (0, 5)
    assert all(ch == "\n" or " " <= ch <= "~" for ch in out)  # JSON escapes: printable ASCII only
    name = channel.calls[-1][0]
    reply = json.loads(out)
    assert reply == json_format.MessageToDict(HOSTILE_ANSWERS[name], preserving_proto_field_name=True) | reply
    assert H in strings_in(reply) or name in ("DeleteOverride", "ResumeStop", "ResetUsage")  # exact, not escaped


def strings_in(value: object) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value))
    return set()


def test_hostile_error_messages_are_escaped(channel: FakeChannel, capsys: pytest.CaptureFixture[str]) -> None:
    channel.answers["SetTier"] = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, f"tier {H} is bad")
    code, out, err = run(capsys, "tier", "set", "u1", "t")
    assert (code, out) == (1, "")
    assert_nothing_raw(err)
    assert err.count("\n") == 1 and err.startswith("quotactl: INVALID_ARGUMENT: tier ev\\nu9  FORGED")
