"""The server factory: ``create_server(...) -> (server, port)``.

Registers QuotaService, AdminService (behind the bearer-token interceptor), the standard
``grpc.health.v1`` health service and server reflection. Binding port 0 picks a free
port, which is returned, so tests and scripts never race for a fixed one.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.errors import QuotaServiceError
from quota_service.quotas import Quotas
from quota_service.server.admin import AdminServicer
from quota_service.server.auth import AdminAuthInterceptor
from quota_service.server.servicers import QuotaServicer

QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


class ConfigurationError(QuotaServiceError):
    """The server's own options are inconsistent (e.g. an insecure admin plane off loopback)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files to serve over TLS: ``cert`` (the server's certificate, then its chain) and
    ``key`` (its unencrypted private key), both required; ``client_ca`` non-empty: require
    client certificates signed by one of its CAs (mutual TLS).

    Every mistake is a :class:`ConfigurationError` naming the option and the file, raised
    before the port is bound: a missing option (constructor), or a file that cannot be read,
    holds no PEM, or a key that does not belong to the certificate (:meth:`credentials`).
    Never a traceback, never a server that silently speaks plaintext or skips client checks.
    """

    cert: str
    key: str
    client_ca: str = ""

    def __post_init__(self) -> None:
        if not self.cert or not self.key:
            missing = ", ".join(
                f"--{name}" for name, value in (("tls-cert", self.cert), ("tls-key", self.key)) if not value
            )
            raise ConfigurationError(f"TLS needs both --tls-cert and --tls-key; missing: {missing}")

    def credentials(self) -> grpc.ServerCredentials:
        cert = self._read_pem(self.cert, "--tls-cert", "certificate", b"-----BEGIN CERTIFICATE-----")
        key = self._read_pem(self.key, "--tls-key", "private key", b"PRIVATE KEY-----")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # The password callback refuses to prompt: gRPC cannot use an encrypted key anyway.
            context.load_cert_chain(self.cert, self.key, password=lambda: b"")
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"--tls-key {self.key} does not belong to --tls-cert {self.cert}, or is encrypted: {exc.reason or exc}"
            ) from None
        if not self.client_ca:
            return grpc.ssl_server_credentials([(key, cert)])
        client_ca = self._read_pem(self.client_ca, "--tls-client-ca", "certificate", b"-----BEGIN CERTIFICATE-----")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)

    @staticmethod
    def _read_pem(path: str, option: str, what: str, marker: bytes) -> bytes:
        try:
            content = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None
        if marker not in content:
            raise ConfigurationError(f"{option} {path}: no PEM {what} in it")
        return content


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_mode(*, listen: str, admin_token: str, insecure_admin: bool) -> str | None:
    """The token the admin plane requires; ``""`` for insecure loopback; ``None``: not served."""
    if admin_token:
        return admin_token
    if insecure_admin:
        if not is_loopback(listen):
            raise ConfigurationError("--insecure-admin is only allowed on a loopback listen address")
        return ""
    return None


async def create_server(
    *,
    quotas: Quotas,
    listen: str = "127.0.0.1:0",
    admin: AdminServicer | None = None,
    admin_token: str = "",
    insecure_admin: bool = False,
    tls: TlsFiles | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Build (not start) the server. Returns the server, the bound port and the health
    servicer (set NOT_SERVING on it before draining). ``admin``: the AdminService servicer
    (``serve`` passes one over its stop watcher); by default one over ``quotas``' Redis store.
    AdminService is registered only when :func:`admin_mode` says it is served."""
    token = admin_mode(listen=listen, admin_token=admin_token, insecure_admin=insecure_admin)
    interceptors = [AdminAuthInterceptor(token)] if token is not None else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 1 << 20)],
    )
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(quotas=quotas), server)
    services = [QUOTA_SERVICE]
    if token is not None:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin or AdminServicer(quotas=quotas), server)
        services.append(ADMIN_SERVICE)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*services, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(listen, tls.credentials()) if tls else server.add_insecure_port(listen)
    if port == 0:
        raise ConfigurationError(f"could not bind {listen}")
    return server, port, health_servicer
