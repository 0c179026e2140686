"""The server factory: ``create_server(...) -> (server, port)``.

Registers QuotaService, AdminService (behind the bearer-token interceptor), the standard
``grpc.health.v1`` health service and server reflection. Binding port 0 picks a free
port, which is returned, so tests and scripts never race for a fixed one.

A port is never shared by accident: gRPC's own default (``SO_REUSEPORT`` on) would let a
second, differently configured server bind a port already served and the kernel would
split the clients between the two. Here ``SO_REUSEPORT`` is off unless ``reuse_port``
asks for it (every process sharing the port must ask), and a port in use is an
:class:`AddressInUse` naming the address (:func:`ensure_free` checks it before anything is
started; a bind that fails anyway is reported the same way).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.errors import QuotaServiceError
from quota_service.quotas import Quotas
from quota_service.server.admin import AdminServicer
from quota_service.server.auth import AccessTokens, AdminAuthInterceptor
from quota_service.server.servicers import QuotaServicer

QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


#: The largest request message either service accepts (bytes); larger ones are refused
#: with RESOURCE_EXHAUSTED by gRPC before any of our code runs. Every request of ours is a
#: few hundred bytes; 1 MiB leaves room for large ``usage`` maps without letting one call
#: pin megabytes of memory.
MAX_RECEIVE_MESSAGE_BYTES = 1 << 20
#: The largest header list (metadata) a call may carry (bytes), soft and hard limit alike, so
#: the refusal (RESOURCE_EXHAUSTED) is certain rather than probabilistic between gRPC's
#: default soft (8 KiB) and hard (16 KiB) limits. Our own metadata is one ``authorization``
#: header; 8 KiB also leaves room for tracing headers.
MAX_METADATA_BYTES = 8 << 10


class ConfigurationError(QuotaServiceError):
    """The server's own options are inconsistent (e.g. an insecure admin plane off loopback)."""


class AddressInUse(ConfigurationError):
    """Another socket listens on the address (and not every one of them asked to share it)."""

    def __init__(self, address: ListenAddress | str) -> None:
        super().__init__(f"{address} is already in use")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP ``HOST:PORT`` to listen on. ``host`` without brackets (``::1``); ``""``,
    ``0.0.0.0`` and ``::`` mean every interface. ``str()`` gives it back as it is written
    on the command line: ``127.0.0.1:50051``, ``[::1]:50051``, ``localhost:50051``."""

    host: str
    port: int

    @classmethod
    def parse(cls, listen: str) -> ListenAddress | None:
        """``None`` for what is not a plain TCP ``HOST:PORT`` (``unix:...``, a URI, no
        port): gRPC alone decides about those."""
        host, colon, port = listen.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535 or "/" in listen:
            return None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:  # unix:path, vsock:..., or an IPv6 literal without brackets
            return None
        return cls(host, int(port))

    @property
    def every_interface(self) -> bool:
        return self.host in ("", "0.0.0.0", "::")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def ensure_free(listen: str) -> None:
    """Raise :class:`AddressInUse` when a socket already listens on ``listen`` (any of the
    addresses it resolves to: ``localhost`` is 127.0.0.1 *and* ::1, and gRPC would bind
    whichever of them is free). Checked by binding without ``SO_REUSEPORT`` (with
    ``SO_REUSEADDR``, as gRPC does, so a closed server's TIME_WAIT connections do not count),
    so a listener that shares its port counts as in use too. Port 0, and addresses that are
    not ``HOST:PORT``, are not checked. Other bind errors (no such interface, no IPv6) are
    left for gRPC to report."""
    address = ListenAddress.parse(listen)
    if address is None or address.port == 0:
        return
    if address.every_interface:
        # gRPC listens on [::] (dual stack) for every interface, on 0.0.0.0 without IPv6.
        dual_stack = _bind_error(socket.AF_INET6, ("::", address.port), dual_stack=True)
        if dual_stack == errno.EADDRINUSE or (
            dual_stack is not None and _bind_error(socket.AF_INET, ("0.0.0.0", address.port)) == errno.EADDRINUSE
        ):
            raise AddressInUse(address)
        return
    try:
        resolved = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError:
        return  # gRPC reports an address it cannot resolve
    for family, _, _, _, sockaddr in resolved:
        if _bind_error(family, sockaddr) == errno.EADDRINUSE:
            raise AddressInUse(address)


def _bind_error(family: socket.AddressFamily, sockaddr: tuple[Any, ...], *, dual_stack: bool = False) -> int | None:
    """The errno of binding ``sockaddr`` the way gRPC does (``None``: it binds)."""
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # no IPv6 on this host
        return exc.errno or errno.EAFNOSUPPORT
    with probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            probe.bind(sockaddr)
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


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


def admin_mode(*, listen: str, admin_token: str, insecure_admin: bool, viewer_token: str = "") -> AccessTokens | None:
    """Who may call the admin plane; ``None``: it is not served (no token, not insecure).
    With only a viewer token, it is served read-only."""
    if admin_token == viewer_token and admin_token:
        raise ConfigurationError("--viewer-token must differ from --admin-token")
    if admin_token or viewer_token:
        return AccessTokens(admin=admin_token, viewer=viewer_token)
    if insecure_admin:
        if not is_loopback(listen):
            raise ConfigurationError("--insecure-admin is only allowed on a loopback listen address")
        return AccessTokens(insecure=True)
    return None


async def create_server(
    *,
    quotas: Quotas,
    listen: str = "127.0.0.1:0",
    admin: AdminServicer | None = None,
    admin_token: str = "",
    insecure_admin: bool = False,
    viewer_token: str = "",
    tls: TlsFiles | None = None,
    reuse_port: bool = False,
    quota_servicer: QuotaServicer | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Build (not start) the server. Returns the server, the bound port and the health
    servicer (set NOT_SERVING on it before draining). ``admin``: the AdminService servicer
    (``serve`` passes one over its stop watcher); by default one over ``quotas``' Redis store.
    AdminService is registered only when :func:`admin_mode` says it is served.
    ``reuse_port``: bind with ``SO_REUSEPORT``, sharing the port with other processes that
    did the same; otherwise a port in use raises :class:`AddressInUse`. ``quota_servicer``:
    the QuotaService servicer (``serve`` passes the one its HTTP face shares); by default one
    over ``quotas``."""
    token = admin_mode(listen=listen, admin_token=admin_token, insecure_admin=insecure_admin, viewer_token=viewer_token)
    interceptors = [AdminAuthInterceptor(token)] if token is not None else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(reuse_port=reuse_port))
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(quota_servicer or QuotaServicer(quotas=quotas), server)
    services = [QUOTA_SERVICE]
    if token is not None:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin or AdminServicer(quotas=quotas), server)
        services.append(ADMIN_SERVICE)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*services, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = tls.credentials() if tls else None
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError:  # grpcio raises where grpc core answers 0
        port = 0
    if port == 0:
        ensure_free(listen)  # a port taken since serve checked it (or shared without us asking)
        raise ConfigurationError(f"could not bind {listen}")
    return server, port, health_servicer


def server_options(*, reuse_port: bool = False) -> list[tuple[str, int]]:
    """The gRPC server options, every one deliberate (see the constants above)."""
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
    ]
