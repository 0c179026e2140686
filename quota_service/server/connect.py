"""The gRPC API in the Connect protocol's unary form, over HTTP/1.1 (and the same servicers).

``POST /quota.v1.QuotaService/<Method>`` and ``POST /quota.v1.AdminService/<Method>`` with
``Content-Type: application/json`` (the proto3 JSON mapping, :mod:`google.protobuf.json_format`)
or ``application/proto`` (binary): every unary RPC of both services, answered by **the same
servicer objects** the gRPC server uses. Nothing is written twice: a call here builds the
request message, runs the servicer method with an :class:`HttpCallContext` (the request's
headers as metadata, its ``Connect-Timeout-Ms`` as the deadline) and converts the answer.
Errors take the one mapping there is (:func:`quota_service.server.status.grpc_errors` turns
our exceptions into a gRPC status through ``context.abort``); :data:`CONNECT_CODE` then turns
the gRPC code into Connect's code name and HTTP status. AdminService calls are authorized
by :func:`quota_service.server.auth.authorize` exactly as the gRPC interceptor does.

Why not the ``connectrpc`` package (PyPI, 0.13): it is a complete Connect runtime with its
own code generator, its own servicer interface and its own protobuf runtime
(``protobuf-py``), served by an ASGI or WSGI server. It cannot call our ``grpc.aio``
servicers, and an ASGI server (uvicorn) takes over signal handling, which would break the
graceful gRPC drain on SIGTERM. The unary JSON subset is small (a POST, a JSON body, an
error JSON), so it lives here on aiohttp, which already is a dependency and runs in the
gRPC server's event loop without touching signals.

Connect details followed (https://connectrpc.com/docs/protocol): a content type other than
``application/json`` / ``application/proto`` (charset allowed) is HTTP 415; an unknown
procedure is 404; anything but POST is 405; a body that does not parse is
``invalid_argument``; unknown JSON fields are ignored (as connect-go does); an error body is
``{"code": "<snake_case code>", "message": "..."}`` with the status of :data:`CONNECT_CODE`.
The streaming RPC (WatchEvents) is not offered here: the dashboard's live tail is the SSE
endpoint of :mod:`quota_service.server.web`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from quota.v1 import admin_pb2, quota_pb2
from quota_service.errors import QuotaServiceError
from quota_service.server.auth import AccessTokens, authorize
from quota_service.server.status import status_for, status_message

log = logging.getLogger(__name__)

#: gRPC status code -> (Connect code, HTTP status), as the Connect protocol maps them.
CONNECT_CODE: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}

JSON = "application/json"
PROTO = "application/proto"
#: The longest request body accepted (bytes): the gRPC server's own limit.
MAX_BODY_BYTES = 1 << 20
#: The longest ``Connect-Timeout-Ms`` honoured (the protocol allows at most 10 digits).
MAX_TIMEOUT_DIGITS = 10

QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"]
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


class ConnectAbort(grpc.aio.AbortError):
    """Raised by :meth:`HttpCallContext.abort`: the call ends with ``code`` and ``details``.
    A subclass of ``grpc.aio.AbortError``, so the servicers' error wrapper lets it pass as
    it lets a real abort pass."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HttpCallContext:
    """What a servicer method uses of ``grpc.aio.ServicerContext``, for a call over HTTP:
    ``invocation_metadata`` (the request's headers, names in lower case, so the
    ``authorization`` header reaches the audit log's actor exactly as over gRPC),
    ``time_remaining`` (from ``Connect-Timeout-Ms``; ``None`` without one), ``abort``
    (raises :class:`ConnectAbort`) and ``peer``."""

    def __init__(self, metadata: Sequence[tuple[str, str]], *, deadline: float | None, peer: str) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise ConnectAbort(code, details)

    def peer(self) -> str:
        return self._peer

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        return None


def metadata_of(request: web.Request) -> list[tuple[str, str]]:
    """The request's headers as gRPC metadata: every header, repeated ones kept (so two
    ``Authorization`` headers are refused as over gRPC, never "the last one wins")."""
    return [(name.lower(), value) for name, value in request.headers.items()]


def error_response(code: grpc.StatusCode, message: str) -> web.Response:
    name, status = CONNECT_CODE.get(code, ("unknown", 500))
    return web.json_response({"code": name, "message": status_message(message)}, status=status)


def error_of(exc: QuotaServiceError) -> web.Response:
    """Our error through the one error -> gRPC status mapping, then to Connect."""
    return error_response(status_for(exc), str(exc))


Handler = Callable[[Message, HttpCallContext], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Procedure:
    service: str  # "quota.v1.AdminService"
    method: str  # "SetTier"
    request_type: type[Message]
    call: Handler
    admin: bool  # authorized by the admin tokens


def procedures(
    *, quota_servicer: object, admin_servicer: object | None, tokens: AccessTokens | None
) -> dict[str, Procedure]:
    """Every unary RPC, keyed by its path (``/quota.v1.QuotaService/GetUsage``).
    AdminService is included when it is served (``tokens`` not ``None``), as on gRPC."""
    found: dict[str, Procedure] = {}
    served: list[tuple[ServiceDescriptor, object, bool]] = [(QUOTA_SERVICE, quota_servicer, False)]
    if admin_servicer is not None and tokens is not None:
        served.append((ADMIN_SERVICE, admin_servicer, True))
    for service, servicer, admin in served:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            found[f"/{service.full_name}/{method.name}"] = Procedure(
                service=service.full_name,
                method=method.name,
                request_type=message_factory.GetMessageClass(method.input_type),
                call=getattr(servicer, method.name),
                admin=admin,
            )
    return found


class ConnectHandler:
    """The aiohttp handler of ``POST /{service}/{method}``."""

    def __init__(self, *, procedures: dict[str, Procedure], tokens: AccessTokens | None) -> None:
        self._procedures = procedures
        self._tokens = tokens

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        procedure = self._procedures.get(request.path)
        if procedure is None:
            service = request.path.lstrip("/").split("/", 1)[0]
            if service == ADMIN_SERVICE.full_name and self._tokens is None:
                return error_response(
                    grpc.StatusCode.UNIMPLEMENTED, "AdminService is not served (no --admin-token or --viewer-token)"
                )
            return error_response(grpc.StatusCode.NOT_FOUND, f"no procedure {request.path[:120]}")
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"}, text="use POST\n")
        content_type = request.content_type.lower()
        if content_type not in (JSON, PROTO):
            return web.Response(
                status=415, headers={"Accept-Post": f"{JSON}, {PROTO}"}, text="Content-Type must be application/json\n"
            )
        metadata = metadata_of(request)
        if procedure.admin:
            assert self._tokens is not None
            try:
                authorize(self._tokens, procedure.method, metadata)
            except QuotaServiceError as exc:
                return error_of(exc)
        try:
            deadline = _deadline(request.headers.get("Connect-Timeout-Ms"))
        except ValueError as exc:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is larger than {MAX_BODY_BYTES} bytes")
        message = procedure.request_type()
        try:
            if content_type == JSON:
                json_format.Parse(body.decode("utf-8") if body else "{}", message, ignore_unknown_fields=True)
            else:
                message.ParseFromString(body)
        except (json_format.ParseError, UnicodeDecodeError, DecodeError, RecursionError) as exc:
            kind = message.DESCRIPTOR.name
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"the body is not a {kind}: {exc}")
        peer = request.remote or ""
        context = HttpCallContext(metadata, deadline=deadline, peer=f"http:{peer}")
        try:
            answer = await procedure.call(message, context)
        except ConnectAbort as exc:
            return error_response(exc.code, exc.details)
        except QuotaServiceError as exc:  # a method without the wrapper (none today)
            return error_of(exc)
        except Exception:
            log.exception("%s over HTTP failed", procedure.method)
            return error_response(grpc.StatusCode.INTERNAL, f"internal error in {procedure.method}; see the server log")
        if content_type == PROTO:
            return web.Response(body=answer.SerializeToString(), content_type=PROTO)
        text = json_format.MessageToJson(answer, always_print_fields_with_no_presence=True, indent=None)
        return web.Response(text=text, content_type=JSON)


def _deadline(header: str | None) -> float | None:
    """``Connect-Timeout-Ms`` as a monotonic deadline (``None`` without the header)."""
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or len(value) > MAX_TIMEOUT_DIGITS:
        raise ValueError("Connect-Timeout-Ms must be a positive integer of at most 10 digits")
    return time.monotonic() + int(value) / 1000.0
