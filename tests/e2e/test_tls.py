"""TLS and mutual TLS end to end: the real ``quota-service serve`` with ``--tls-cert`` /
``--tls-key`` (and ``--tls-client-ca``), throwaway certificates from trustme, real clients:
the generated stubs and ``quotactl``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from support.server_process import ROOT, ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e

# A refused handshake must fail fast, never hang a test.
FAILURE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Pki:
    """PEM files on disk: a CA, a server certificate for 127.0.0.1/localhost, a client
    certificate from the same CA, and a client certificate from an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    rogue_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    rogue_ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ops@quota.internal")
    rogue = rogue_ca.issue_cert("ops@quota.internal")
    pki = Pki(
        *(folder / name for name in ("ca", "srv.crt", "srv.key", "cli.crt", "cli.key", "rog.crt", "rog.key", "rca"))
    )
    ca.cert_pem.write_to_path(str(pki.ca))
    rogue_ca.cert_pem.write_to_path(str(pki.rogue_ca))
    for cert, cert_path, key_path in (
        (server, pki.server_cert, pki.server_key),
        (client, pki.client_cert, pki.client_key),
        (rogue, pki.rogue_cert, pki.rogue_key),
    ):
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_path))
    return pki


def credentials(
    pki: Pki, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        certificate_chain=cert.read_bytes() if cert else None,
        private_key=key.read_bytes() if key else None,
    )


@pytest.fixture
def tls_server(redis_url: str, tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        extra_args=("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        probe_credentials=credentials(pki),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mtls_server(redis_url: str, tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        extra_args=(
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca),
        ),
        probe_credentials=credentials(pki, cert=pki.client_cert, key=pki.client_key),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ask(channel: grpc.Channel, who: str = "tls-user") -> quota_pb2.CheckAndReserveResponse:
    request = quota_pb2.CheckAndReserveRequest(
        subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 10}
    )
    return quota_pb2_grpc.QuotaServiceStub(channel).CheckAndReserve(request, timeout=FAILURE_TIMEOUT)


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The status code of a call that must not get through; fails the test if it does."""
    with pytest.raises(grpc.RpcError) as caught:
        ask(channel)
    assert isinstance(caught.value, grpc.Call)
    return caught.value.code()


def quotactl(*args: str, target: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    env |= {"QUOTA_TARGET": target, "QUOTA_ADMIN_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "quota_service.quotactl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
    )


# --- server TLS ---------------------------------------------------------------------------


def test_a_tls_client_trusting_the_ca_is_served(tls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(tls_server.target, credentials(pki)) as channel:
        answer = ask(channel)
    assert answer.decision == quota_pb2.ALLOW and answer.reservation_id
    assert "(TLS)" in tls_server.log()


def test_the_certificate_verifies_by_host_name_too(tls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(f"localhost:{tls_server.port}", credentials(pki)) as channel:
        assert ask(channel).decision == quota_pb2.ALLOW


def test_a_plaintext_client_is_not_served(tls_server: ServerProcess) -> None:
    started = time.monotonic()
    with grpc.insecure_channel(tls_server.target) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < FAILURE_TIMEOUT + 1


def test_a_client_not_trusting_the_servers_ca_refuses_it(tls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(tls_server.target, credentials(pki, ca=pki.rogue_ca)) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_admin_calls_over_tls_still_need_the_token(tls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(tls_server.target, credentials(pki)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), timeout=FAILURE_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        reply = stub.GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(),
            timeout=FAILURE_TIMEOUT,
            metadata=(("authorization", f"Bearer {tls_server.admin_token}"),),
        )
    assert reply.status.version


# --- mutual TLS ---------------------------------------------------------------------------


def test_mtls_serves_a_client_with_a_certificate_from_the_client_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(mtls_server.target, credentials(pki, cert=pki.client_cert, key=pki.client_key)) as ch:
        assert ask(ch).decision == quota_pb2.ALLOW


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(mtls_server.target, credentials(pki)) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(mtls_server.target, credentials(pki, cert=pki.rogue_cert, key=pki.rogue_key)) as ch:
        assert refused(ch) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_plaintext_client(mtls_server: ServerProcess) -> None:
    with grpc.insecure_channel(mtls_server.target) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


# --- quotactl over TLS and mTLS -------------------------------------------------------------


def test_quotactl_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    ok = quotactl("--tls-ca", str(pki.ca), "status", target=tls_server.target, token=tls_server.admin_token)
    assert ok.returncode == 0, ok.stderr
    assert "default tier  free_alpha" in ok.stdout

    plaintext = quotactl("--timeout", "3", "status", target=tls_server.target, token=tls_server.admin_token)
    assert plaintext.returncode == 3, plaintext.stderr
    assert "UNAVAILABLE" in plaintext.stderr and "Traceback" not in plaintext.stderr

    untrusted = quotactl("--tls-ca", str(pki.rogue_ca), "status", target=tls_server.target, token="x")
    assert untrusted.returncode == 3, untrusted.stderr
    assert "check the TLS options" in untrusted.stderr


def test_quotactl_tls_options_from_the_environment(tls_server: ServerProcess, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    env |= {
        "QUOTA_TARGET": f"localhost:{tls_server.port}",
        "QUOTA_ADMIN_TOKEN": tls_server.admin_token,
        "QUOTA_TLS_CA": str(pki.ca),
    }
    done = subprocess.run(
        [sys.executable, "-m", "quota_service.quotactl", "--json", "status"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert '"default_tier": "free_alpha"' in done.stdout


def test_quotactl_over_mtls(mtls_server: ServerProcess, pki: Pki) -> None:
    tls = ("--tls-ca", str(pki.ca))
    client = ("--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
    ok = quotactl(*tls, *client, "usage", "mtls-user", target=mtls_server.target, token=mtls_server.admin_token)
    assert ok.returncode == 0, ok.stderr
    assert "tier     free_alpha" in ok.stdout

    without_cert = quotactl(*tls, "status", target=mtls_server.target, token=mtls_server.admin_token)
    assert without_cert.returncode == 3, without_cert.stderr

    rogue = ("--tls-cert", str(pki.rogue_cert), "--tls-key", str(pki.rogue_key))
    wrong_ca = quotactl(*tls, *rogue, "status", target=mtls_server.target, token=mtls_server.admin_token)
    assert wrong_ca.returncode == 3, wrong_ca.stderr

    # The certificate proves the channel, the token the operator: both are needed.
    no_token = quotactl(*tls, *client, "status", target=mtls_server.target)
    assert no_token.returncode == 4, no_token.stderr


def test_quotactl_with_an_unreadable_certificate_is_a_usage_error(tls_server: ServerProcess, pki: Pki) -> None:
    done = quotactl("--tls-ca", str(pki.ca.parent / "missing.pem"), "status", target=tls_server.target)
    assert done.returncode == 2
    assert "cannot read the CA file" in done.stderr and "Traceback" not in done.stderr


# --- TLS misconfiguration: refused at start-up with the option and the file named -----------


def serve(redis_url: str, *tls_args: str) -> subprocess.CompletedProcess[str]:
    """``quota-service serve`` with a TLS mistake: it must exit (2) before binding the port."""
    args = ["serve", "--redis-url", redis_url, "--listen", "127.0.0.1:0", "--admin-token", "t", *tls_args]
    return subprocess.run(
        [sys.executable, "-m", "quota_service.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=30
    )


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("cert without key", "TLS needs both --tls-cert and --tls-key; missing: --tls-key"),
        ("missing key file", "--tls-key {missing}: cannot read it: No such file or directory"),
        ("key of another certificate", "--tls-key {key} does not belong to --tls-cert {other}"),
        ("key given as certificate", "--tls-cert {key}: no PEM certificate in it"),
        ("key given as client CA", "--tls-client-ca {key}: no PEM certificate in it"),
    ],
)
def test_a_tls_mistake_stops_start_up_with_a_message(redis_url: str, pki: Pki, mistake: str, message: str) -> None:
    cert, key, missing = str(pki.server_cert), str(pki.server_key), str(pki.ca.parent / "missing.key")
    args = {
        "cert without key": ("--tls-cert", cert),
        "missing key file": ("--tls-cert", cert, "--tls-key", missing),
        "key of another certificate": ("--tls-cert", str(pki.client_cert), "--tls-key", key),
        "key given as certificate": ("--tls-cert", key, "--tls-key", key),
        "key given as client CA": ("--tls-cert", cert, "--tls-key", key, "--tls-client-ca", key),
    }[mistake]
    done = serve(redis_url, *args)
    assert done.returncode == 2, done.stderr
    expected = message.format(missing=missing, key=key, other=str(pki.client_cert))
    assert f"quota-service: {expected}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_client_ca_without_a_server_certificate_is_refused(redis_url: str, tmp_path: Path, pki: Pki) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--tls-client-ca", str(pki.ca)))
    try:
        with pytest.raises(RuntimeError, match="exited with 2"):
            server.start(timeout=10)
        assert "TLS needs both --tls-cert and --tls-key" in server.log()
    finally:
        server.stop()


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quota_service.cli", "health", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")},
    )


def test_the_health_probe_speaks_tls_and_mtls(tls_server: ServerProcess, mtls_server: ServerProcess, pki: Pki) -> None:
    ok = health("--target", tls_server.target, "--tls-ca", str(pki.ca))
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{tls_server.target}: SERVING"), ok.stderr
    plaintext = health("--target", tls_server.target, "--timeout", "2")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    mutual = health(
        "--target", mtls_server.target, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key),
    )  # fmt: skip
    assert mutual.returncode == 0, mutual.stderr
    anonymous = health("--target", mtls_server.target, "--tls-ca", str(pki.ca), "--timeout", "2")
    assert anonymous.returncode == 1


def test_the_python_client_guards_a_call_over_tls_and_mtls(
    tls_server: ServerProcess, mtls_server: ServerProcess, pki: Pki
) -> None:
    from quota_client import QuotaClient, QuotaUnavailable, TlsConfig

    with QuotaClient(tls_server.target, tls=TlsConfig.from_files(ca=pki.ca)) as client:
        with client.reserve("tls-user", "blog_writer", provider="openai", model="gpt-4o-mini", tokens=40) as r:
            r.commit(tokens=25)
        day = next(row for row in client.get_usage("tls-user").limits if row.metric == "tokens")
        assert (day.used, day.held) == (25, 0)

    mutual = TlsConfig.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    chat = {"provider": "openai", "model": "gpt-4o-mini"}
    with (
        QuotaClient(mtls_server.target, tls=mutual) as client,
        client.reserve("mtls-user", "blog_writer", tokens=40, **chat) as r,
    ):
        r.commit(tokens=30)
    # Without a client certificate the mTLS server refuses the handshake: fail closed.
    anonymous = TlsConfig.from_files(ca=pki.ca)
    with (
        QuotaClient(mtls_server.target, tls=anonymous, deadline=1.0) as client,
        pytest.raises(QuotaUnavailable),
        client.reserve("mtls-user", "blog_writer", tokens=1, **chat),
    ):
        pytest.fail("the block must not run")
