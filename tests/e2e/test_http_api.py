"""The HTTP face of the real server: the gRPC API in Connect's unary JSON form (the same
servicers, tokens and roles), its error JSON and statuses, health, metrics, live events, and
a graceful SIGTERM with event streams open."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.http_server import HttpServerProcess, call, get

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture
def http_server(redis_url: str, tmp_path: Path) -> Iterator[HttpServerProcess]:
    server = HttpServerProcess(redis_url=redis_url, workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def reserve_body(subject: str, tokens: int, request_id: str) -> dict[str, object]:
    return {
        "subject": subject,
        "feature": "blog_writer",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": {"tokens": tokens},
        "requestId": request_id,
    }


def test_quota_calls_in_json_reach_the_same_counters_as_grpc(http_server: HttpServerProcess) -> None:
    status, answer = call(http_server, "QuotaService", "CheckAndReserve", reserve_body("ann", 100, "r1"))
    assert status == 200
    assert answer["decision"] == "ALLOW"
    assert answer["reason"] == "WITHIN_LIMITS"
    assert answer["tier"] == "free_alpha"
    assert answer["reservationId"]
    status, committed = call(
        http_server, "QuotaService", "Commit", {"reservationId": answer["reservationId"], "usage": {"tokens": 80}}
    )
    assert status == 200
    assert committed["alreadySettled"] is False
    # The same counter over gRPC: what JSON committed is what gRPC reads.
    with grpc.insecure_channel(http_server.target) as channel:
        usage = quota_pb2_grpc.QuotaServiceStub(channel).GetUsage(quota_pb2.GetUsageRequest(subject="ann"), timeout=5)
    tokens_day = next(limit for limit in usage.limits if limit.metric == "tokens" and limit.window == "day")
    assert tokens_day.used == 80
    status, over_http = call(http_server, "QuotaService", "GetUsage", {"subject": "ann"})
    assert status == 200
    limit = next(x for x in over_http["limits"] if x["metric"] == "tokens" and x["window"] == "day")
    assert limit["used"] == 80
    assert limit["max"] == 1000
    assert isinstance(limit["resetsAt"], str)  # int64 as a string: the proto3 JSON mapping
    # A replay of the same request id answers the first answer, over either protocol.
    status, replay = call(http_server, "QuotaService", "CheckAndReserve", reserve_body("ann", 100, "r1"))
    assert status == 200
    assert replay["replayed"] is True


def test_the_binary_protobuf_form_is_accepted_too(http_server: HttpServerProcess) -> None:
    request = quota_pb2.GetUsageRequest(subject="bea").SerializeToString()
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", http_server.http_port, timeout=5)) as connection:
        connection.request(
            "POST", "/quota.v1.QuotaService/GetUsage", body=request, headers={"Content-Type": "application/proto"}
        )
        reply = connection.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type", "").startswith("application/proto")
        assert quota_pb2.GetUsageResponse.FromString(reply.read()).tier == "free_alpha"


@pytest.mark.parametrize(
    ("service", "method", "body", "token", "status", "code"),
    [
        ("QuotaService", "GetUsage", {"subject": ""}, None, 400, "invalid_argument"),
        ("QuotaService", "Commit", {"reservationId": "nonsense"}, None, 400, "invalid_argument"),
        ("AdminService", "ListStops", {}, None, 401, "unauthenticated"),
        ("AdminService", "ListStops", {}, "wrong-token", 403, "permission_denied"),
        ("AdminService", "SetTier", {"subject": "x", "tier": "pro_alpha"}, "viewer", 403, "permission_denied"),
        ("AdminService", "EmergencyStop", {"scope": "GLOBAL", "reason": "r"}, "viewer", 403, "permission_denied"),
        ("AdminService", "SetTier", {"subject": "x", "tier": "no_such_tier"}, "admin", 404, "not_found"),
        ("AdminService", "GetAnalytics", {"period": "decade"}, "viewer", 400, "invalid_argument"),
        ("AdminService", "NoSuchMethod", {}, "admin", 404, "not_found"),
    ],
)
def test_errors_are_connect_error_json_with_the_protocols_status(
    http_server: HttpServerProcess,
    service: str,
    method: str,
    body: dict[str, object],
    token: str | None,
    status: int,
    code: str,
) -> None:
    tokens = {"admin": http_server.admin_token, "viewer": http_server.viewer_token}
    got_status, answer = call(http_server, service, method, body, token=tokens.get(token or "", token))
    assert (got_status, answer.get("code")) == (status, code), answer
    assert isinstance(answer["message"], str) and answer["message"]


def test_malformed_requests(http_server: HttpServerProcess) -> None:
    status, answer = call(http_server, "QuotaService", "GetUsage", raw=b"{not json")
    assert (status, answer["code"]) == (400, "invalid_argument")
    status, answer = call(http_server, "QuotaService", "GetUsage", raw=b'{"subject": 5}')
    assert (status, answer["code"]) == (400, "invalid_argument")
    status, _ = call(http_server, "QuotaService", "GetUsage", {"subject": "a"}, headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _ = call(http_server, "QuotaService", "GetUsage", http_method="GET")
    assert status == 405
    # Unknown fields are ignored (as connect-go does); two Authorization headers are refused.
    status, _ = call(http_server, "QuotaService", "GetUsage", {"subject": "a", "futureField": 1})
    assert status == 200
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", http_server.http_port, timeout=5)) as connection:
        connection.putrequest("POST", "/quota.v1.AdminService/ListStops")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Authorization", f"Bearer {http_server.admin_token}")
        connection.putheader("Authorization", f"Bearer {http_server.viewer_token}")
        connection.putheader("Content-Length", "2")
        connection.endheaders(b"{}")
        reply = connection.getresponse()
        assert reply.status == 401
        assert json.loads(reply.read())["code"] == "unauthenticated"


def test_roles_and_the_audit_trail_are_those_of_grpc(http_server: HttpServerProcess) -> None:
    admin, viewer = http_server.admin_token, http_server.viewer_token
    status, answer = call(
        http_server, "AdminService", "SetTier", {"subject": "cy", "tier": "pro_alpha", "reason": "pilot"}, token=admin
    )
    assert status == 200
    assert answer == {"subject": "cy", "tier": "pro_alpha", "previousTier": ""}
    for method, body in [
        ("GetSubject", {"subject": "cy"}),
        ("ListStops", {}),
        ("GetPolicyStatus", {}),
        ("TopUsage", {"metric": "tokens", "window": "day"}),
        ("GetCompanyUsage", {}),
        ("DescribePolicy", {}),
        ("GetActivity", {"minutes": 5}),
        ("GetAnalytics", {"period": "month"}),
    ]:
        status, answer = call(http_server, "AdminService", method, body, token=viewer)
        assert status == 200, (method, answer)
    status, subject = call(http_server, "AdminService", "GetSubject", {"subject": "cy"}, token=viewer)
    assert subject["tier"] == "pro_alpha"
    with grpc.insecure_channel(http_server.target) as channel:
        audit = admin_pb2_grpc.AdminServiceStub(channel).ListAudit(
            admin_pb2.ListAuditRequest(limit=10), metadata=(("authorization", f"Bearer {admin}"),), timeout=5
        )
    entry = next(e for e in audit.entries if e.action == "SetTier")
    assert entry.reason == "pilot"
    assert entry.actor.startswith("token:")  # the same fingerprint as over gRPC, never the token
    assert admin not in entry.actor
    status, company = call(http_server, "AdminService", "GetCompanyUsage", {}, token=viewer)
    assert [(x["metric"], x["window"], x["kind"], x["max"]) for x in company["limits"]] == [
        ("cost_usd", "day", "LIMIT_KIND_GLOBAL", 200.0)
    ]
    status, activity = call(http_server, "AdminService", "GetActivity", {"minutes": 5}, token=viewer)
    assert len(activity["buckets"]) == 5


def test_health_readiness_and_metrics(http_server: HttpServerProcess) -> None:
    status, body, _ = get(http_server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, body, _ = get(http_server, "/readyz")
    ready = json.loads(body)
    assert status == 200
    assert ready["status"] == "ok"
    assert ready["checks"] == {"policy": "ok", "stops": "ok", "redis": "ok", "ledger": "ok"}
    call(http_server, "QuotaService", "GetUsage", {"subject": "m"})
    status, body, headers = get(http_server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b'quota_rpc_seconds_count{method="GetUsage"}' in body
    status, page, headers = get(http_server, "/")
    assert status == 200
    assert b"quota-service dashboard" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, _, _ = get(http_server, "/static/../pyproject.toml")
    assert status == 404


def test_session_tells_the_role(http_server: HttpServerProcess) -> None:
    assert json.loads(get(http_server, "/session", token=http_server.viewer_token)[1]) == {"role": "viewer"}
    assert json.loads(get(http_server, "/session", token=http_server.admin_token)[1]) == {"role": "admin"}
    status, body, _ = get(http_server, "/session", token="nope")
    assert (status, json.loads(body)["code"]) == (403, "permission_denied")


@contextlib.contextmanager
def open_events(server: HttpServerProcess, token: str, kinds: str = "") -> Iterator[http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        path = f"/events?kinds={kinds}" if kinds else "/events"
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        with connection.getresponse() as reply:
            yield reply
    finally:
        connection.close()


def read_events(reply: http.client.HTTPResponse, wanted: str, timeout: float = 10.0) -> list[tuple[str, str]]:
    """SSE messages (event, data) up to and including the first of kind ``wanted``."""
    seen: list[tuple[str, str]] = []
    event, data = "message", ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = reply.readline().decode().rstrip("\r\n")
        if not line:
            if data or event != "message":
                seen.append((event, data))
                if event == wanted:
                    return seen
            event, data = "message", ""
            continue
        field, _, value = line.partition(":")
        if field == "event":
            event = value.strip()
        elif field == "data":
            data += value.strip()
    raise AssertionError(f"no {wanted} event within {timeout} s; saw {seen}")


def test_live_events_over_sse_with_the_viewer_token(http_server: HttpServerProcess) -> None:
    with open_events(http_server, "wrong") as refused:
        assert refused.status == 403
        refused.read()
    with open_events(http_server, http_server.viewer_token, "STOP_CHANGED") as reply:
        watch_a_stop(http_server, reply)


def watch_a_stop(http_server: HttpServerProcess, reply: http.client.HTTPResponse) -> None:
    assert reply.status == 200
    assert reply.getheader("Content-Type") == "text/event-stream"
    assert read_events(reply, "tick")[-1] == ("tick", "{}")
    status, _ = call(
        http_server,
        "AdminService",
        "EmergencyStop",
        {"scope": "FEATURE", "target": "basic_seo", "reason": "test"},
        token=http_server.admin_token,
    )
    assert status == 200
    _, data = read_events(reply, "STOP_CHANGED")[-1]
    stop = json.loads(data)
    assert stop["kind"] == "STOP_CHANGED"
    assert json.loads(stop["detail"])["stop"] == "pulled"


def test_sigterm_drains_with_event_streams_open(http_server: HttpServerProcess) -> None:
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(open_events(http_server, http_server.admin_token)) for _ in range(3)]
        for reply in streams:
            read_events(reply, "tick")
        assert http_server.process is not None
        started = time.monotonic()
        http_server.process.send_signal(signal.SIGTERM)
        code = http_server.process.wait(20)
        assert code == 0, http_server.log()
        assert time.monotonic() - started < 10
        for reply in streams:  # each stream was ended by the server (a clean end of the chunked body)
            reply.read()
        http_server.process = None
    assert "stopped" in http_server.log()


def test_every_worker_serves_the_http_face(redis_url: str, tmp_path: Path) -> None:
    server = HttpServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--workers", "2"))
    server.start(timeout=40)
    try:
        for i in range(20):  # new connections, spread by the kernel over both workers
            status, answer = call(server, "QuotaService", "GetUsage", {"subject": f"w{i}"})
            assert (status, answer["tier"]) == (200, "free_alpha")
        status, body, _ = get(server, "/metrics")
        assert status == 200
        # Whichever worker answers /metrics sums every worker's counts.
        count = next(
            float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line.startswith('quota_rpc_seconds_count{method="GetUsage"}')
        )
        assert count >= 20
        assert server.stop() == 0
    finally:
        server.stop()


def test_an_http_port_in_use_exits_2_before_anything_starts(redis_url: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "quota_service.cli",
                "serve",
                "--redis-url",
                redis_url,
                "--listen",
                "127.0.0.1:0",
                "--http",
                address,
                "--admin-token",
                "t",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done
    assert done.stderr == f"quota-service: {address} is already in use\n"
