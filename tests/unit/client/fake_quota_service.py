"""A fake quota-service for the client's unit tests: a real in-process gRPC server with an
in-memory, single-counter implementation (``tokens`` per day, cap 1000, warn at 80 %,
block at 95 %), idempotent like the real one, and scriptable failures.

It exists to test the *client* (retries, request_id reuse, guard semantics, fail modes,
metadata, TLS) without Redis; the real service is covered by ``tests/e2e/test_client_*``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, fields

import grpc

from quota.v1 import quota_pb2, quota_pb2_grpc

CAP = 1000.0
WARN_AT = 0.8
BLOCK_AT = 0.95


@dataclass
class FakeReservation:
    subject: str
    tokens: float
    state: str = "open"  # open | committed | released


@dataclass
class FakeQuotaService(quota_pb2_grpc.QuotaServiceServicer):
    """In-memory QuotaService. Script failures with ``fail_next`` (status codes answered
    *before* doing anything), ``drop_after_reserve`` (reserve, then answer UNAVAILABLE: a lost
    response) and ``delay_after_reserve`` (reserve, then sleep: the client times out)."""

    used: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    reservations: dict[str, FakeReservation] = field(default_factory=dict)
    answers: dict[str, quota_pb2.CheckAndReserveResponse] = field(default_factory=dict)
    calls: list[tuple[str, object, dict[str, str]]] = field(default_factory=list)
    fail_next: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    drop_after_reserve: int = 0
    delay_after_reserve: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        with self.lock:
            self.calls.append((method, request, metadata))
            scripted = self.fail_next.get(method)
            code = scripted.pop(0) if scripted else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def reset(self) -> None:
        """Forget every counter, reservation, answer, call and scripted failure: a fresh
        service behind the same server (for tests that share one server)."""
        fresh = FakeQuotaService()
        with self.lock:
            for spec in fields(self):
                if spec.name != "lock":
                    setattr(self, spec.name, getattr(fresh, spec.name))

    def calls_of(self, method: str) -> list[object]:
        return [request for name, request, _ in self.calls if name == method]

    def _limit(self, subject: str, decision: int = 0) -> quota_pb2.LimitStatus:
        used, held = self.used.get(subject, 0.0), self.held.get(subject, 0.0)
        return quota_pb2.LimitStatus(
            metric="tokens",
            window="day",
            used=used,
            held=held,
            max=CAP,
            remaining=max(CAP - used - held, 0.0),
            ratio=(used + held) / CAP,
            resets_at=int(time.time()) + 3600,
            kind=quota_pb2.LIMIT_KIND_TIER,
            decision=decision,
            warn_at=WARN_AT,
            block_at=BLOCK_AT,
        )

    def CheckAndReserve(self, request, context):
        self._enter("CheckAndReserve", request, context)
        if not request.subject:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "subject is required")
        with self.lock:
            first = self.answers.get(request.request_id)
            if first is not None:
                replay = quota_pb2.CheckAndReserveResponse()
                replay.CopyFrom(first)
                replay.replayed = True
                return replay
            ask = request.usage.get("tokens", 0.0)
            used, held = self.used.get(request.subject, 0.0), self.held.get(request.subject, 0.0)
            if used + held >= BLOCK_AT * CAP or used + held + ask > CAP:
                reason = quota_pb2.BLOCK_THRESHOLD if used + held >= BLOCK_AT * CAP else quota_pb2.LIMIT_EXCEEDED
                answer = quota_pb2.CheckAndReserveResponse(
                    decision=quota_pb2.DENY,
                    reason=reason,
                    message="tokens/day: limit reached",
                    tier="free_alpha",
                    limit=self._limit(request.subject, quota_pb2.DENY),
                    retry_after_seconds=3600,
                )
            else:
                warn = used + held + ask >= WARN_AT * CAP
                decision = quota_pb2.WARN if warn else quota_pb2.ALLOW
                reservation_id = ""
                if not request.dry_run:
                    reservation_id = f"rsv_{next(self.ids)}"
                    self.reservations[reservation_id] = FakeReservation(request.subject, ask)
                    self.held[request.subject] = held + ask
                limit = self._limit(request.subject, decision)
                answer = quota_pb2.CheckAndReserveResponse(
                    decision=decision,
                    reason=quota_pb2.WARN_THRESHOLD if warn else quota_pb2.WITHIN_LIMITS,
                    message="tokens/day: 80 % used" if warn else "ok",
                    reservation_id=reservation_id,
                    tier="free_alpha",
                    limits=[limit],
                    limit=limit if warn else None,
                    reservation_expires_at=int(time.time()) + 300,
                )
            self.answers[request.request_id] = answer
            drop = self.drop_after_reserve > 0
            if drop:
                self.drop_after_reserve -= 1
            delay, self.delay_after_reserve = self.delay_after_reserve, 0.0
        if drop:
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: response lost after reserving")
        if delay:
            time.sleep(delay)
        return answer

    def Commit(self, request, context):
        self._enter("Commit", request, context)
        with self.lock:
            reservation = self.reservations.get(request.reservation_id)
            if reservation is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"reservation {request.reservation_id} not found")
            if reservation.state != "open":
                return quota_pb2.CommitResponse(already_settled=True)
            reservation.state = "committed"
            subject = reservation.subject
            self.held[subject] -= reservation.tokens
            self.used[subject] = self.used.get(subject, 0.0) + request.usage.get("tokens", 0.0)
            return quota_pb2.CommitResponse(limits=[self._limit(subject)])

    def Release(self, request, context):
        self._enter("Release", request, context)
        with self.lock:
            reservation = self.reservations.get(request.reservation_id)
            if reservation is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"reservation {request.reservation_id} not found")
            if reservation.state != "open":
                return quota_pb2.ReleaseResponse(already_settled=True)
            reservation.state = "released"
            self.held[reservation.subject] -= reservation.tokens
            return quota_pb2.ReleaseResponse()

    def GetUsage(self, request, context):
        self._enter("GetUsage", request, context)
        with self.lock:
            return quota_pb2.GetUsageResponse(tier="free_alpha", limits=[self._limit(request.subject)])


@dataclass
class FakeServer:
    service: FakeQuotaService
    target: str
    server: grpc.Server


def start_fake(credentials: grpc.ServerCredentials | None = None) -> FakeServer:
    service = FakeQuotaService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return FakeServer(service, f"127.0.0.1:{port}", server)
