"""TLS and mutual TLS to the fake service, with throwaway certificates from trustme."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import trustme
from fake_quota_service import FakeServer, start_fake

from quota_client import AsyncQuotaClient, QuotaClient, QuotaUnavailable, RetryPolicy, TlsConfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def mtls_server(ca: trustme.CA) -> Iterator[FakeServer]:
    server_cert = ca.issue_cert("quota.internal")
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    running = start_fake(credentials)
    yield running
    running.server.stop(None).wait()


def client_tls(ca: trustme.CA, *, with_cert: bool = True) -> TlsConfig:
    cert = ca.issue_cert("backend.internal")
    return TlsConfig(
        root_certificates=ca.cert_pem.bytes(),
        certificate_chain=cert.cert_chain_pems[0].bytes() if with_cert else None,
        private_key=cert.private_key_pem.bytes() if with_cert else None,
        server_name="quota.internal",
    )


def test_mtls_round_trip(mtls_server: FakeServer, ca: trustme.CA) -> None:
    with (
        QuotaClient(mtls_server.target, tls=client_tls(ca)) as client,
        client.reserve("u1", "blog_writer", tokens=10) as r,
    ):
        r.commit(tokens=7)
    assert mtls_server.service.used["u1"] == 7


async def test_async_mtls_round_trip(mtls_server: FakeServer, ca: trustme.CA) -> None:
    async with (
        AsyncQuotaClient(mtls_server.target, tls=client_tls(ca)) as client,
        client.reserve("u1", "blog_writer", tokens=10) as r,
    ):
        await r.commit(tokens=7)
    assert mtls_server.service.used["u1"] == 7


def test_without_a_client_certificate_the_handshake_fails(mtls_server: FakeServer, ca: trustme.CA) -> None:
    no_retry = RetryPolicy.never()
    with (
        QuotaClient(mtls_server.target, tls=client_tls(ca, with_cert=False), retry=no_retry) as client,
        pytest.raises(QuotaUnavailable),
    ):
        client.check_and_reserve("u1", "blog_writer", tokens=1)
    assert not mtls_server.service.calls


def test_an_untrusted_server_certificate_is_refused(mtls_server: FakeServer) -> None:
    other_ca = trustme.CA()
    with (
        QuotaClient(mtls_server.target, tls=client_tls(other_ca), retry=RetryPolicy.never()) as client,
        pytest.raises(QuotaUnavailable),
    ):
        client.check_and_reserve("u1", "blog_writer", tokens=1)
    assert not mtls_server.service.calls
