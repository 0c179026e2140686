"""The server factory: ``create_server(...) -> (server, port)``.

Registers QuotaService, AdminService (behind the bearer-token interceptor), the standard
``grpc.health.v1`` health service and server reflection. Binding port 0 picks a free
port, which is returned, so tests and scripts never race for a fixed one.
"""

from __future__ import annotations

import ipaddress
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
    cert: str
    key: str
    client_ca: str = ""  # non-empty: require and verify client certificates (mTLS)

    def credentials(self) -> grpc.ServerCredentials:
        chain = (Path(self.key).read_bytes(), Path(self.cert).read_bytes())
        if self.client_ca:
            return grpc.ssl_server_credentials(
                [chain], root_certificates=Path(self.client_ca).read_bytes(), require_client_auth=True
            )
        return grpc.ssl_server_credentials([chain])


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
    servicer (set NOT_SERVING on it before draining)."""
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
