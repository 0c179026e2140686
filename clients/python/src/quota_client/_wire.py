"""The one boundary between quota-client and gRPC/protobuf: requests out, typed results in,
``grpc.RpcError`` mapped to the error tree, the retry rule and the retry budget both clients
share, and the gRPC objects each client is built on (channels, callables), in async/sync
pairs that ``scripts/gen_sync_client.py`` renames one into the other."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

import grpc
import grpc.aio

from quota.v1 import quota_pb2
from quota_client.errors import QuotaAuthError, QuotaRequestError, QuotaUnavailable
from quota_client.models import (
    CheckResult,
    CommitResult,
    Decision,
    LimitKind,
    LimitStatus,
    Reason,
    ReleaseResult,
    UsageReport,
)
from quota_client.options import ClientOptions

#: The only statuses ever retried (see :func:`retryable`). Every other status is an answer:
#: INTERNAL (a server bug, e.g. damaged data in Redis), INVALID_ARGUMENT, FAILED_PRECONDITION,
#: NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNKNOWN, ... would come
#: back the same, and a retried Commit that failed half-way could in theory apply twice.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
AUTH_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# No retry starts with less than this left of the deadline: it could not finish anyway.
MIN_ATTEMPT_SECONDS = 0.02

_DECISIONS = {
    quota_pb2.ALLOW: Decision.ALLOW,
    quota_pb2.WARN: Decision.WARN,
    quota_pb2.DENY: Decision.DENY,
}
_REASONS = {
    quota_pb2.WITHIN_LIMITS: Reason.WITHIN_LIMITS,
    quota_pb2.WARN_THRESHOLD: Reason.WARN_THRESHOLD,
    quota_pb2.BLOCK_THRESHOLD: Reason.BLOCK_THRESHOLD,
    quota_pb2.LIMIT_EXCEEDED: Reason.LIMIT_EXCEEDED,
    quota_pb2.HARD_STOP: Reason.HARD_STOP,
    quota_pb2.GLOBAL_LIMIT: Reason.GLOBAL_LIMIT,
    quota_pb2.EMERGENCY_STOP: Reason.EMERGENCY_STOP,
    quota_pb2.FEATURE_NOT_ALLOWED: Reason.FEATURE_NOT_ALLOWED,
    quota_pb2.UNPRICED_MODEL: Reason.UNPRICED_MODEL,
    quota_pb2.UNKNOWN_TIER: Reason.UNKNOWN_TIER,
    quota_pb2.STORE_UNAVAILABLE: Reason.STORE_UNAVAILABLE,
    quota_pb2.STORE_ERROR: Reason.STORE_ERROR,
}
_KINDS = {
    quota_pb2.LIMIT_KIND_TIER: LimitKind.TIER,
    quota_pb2.LIMIT_KIND_OVERRIDE: LimitKind.OVERRIDE,
    quota_pb2.LIMIT_KIND_HARD_STOP: LimitKind.HARD_STOP,
    quota_pb2.LIMIT_KIND_GLOBAL: LimitKind.GLOBAL,
}


def new_request_id() -> str:
    """A fresh idempotency key: generated once per logical call, reused by every retry."""
    return uuid.uuid4().hex


def usage_map(
    tokens: float | None = None, images: float | None = None, usage: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Merge the amount keywords into one ``metric -> amount`` map.

    ``tokens=``/``images=`` are shorthands for ``usage={"tokens": ...}``; naming one metric
    both ways is a ``ValueError``. Values must be finite, non-negative real numbers (the
    service validates too; checking here keeps a bad amount from passing unverified).
    """
    merged = dict(usage or {})
    for metric, amount in (("tokens", tokens), ("images", images)):
        if amount is None:
            continue
        if metric in merged:
            raise ValueError(f"{metric} given both as {metric}= and in usage=")
        merged[metric] = amount
    for metric, amount in merged.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"usage[{metric!r}] must be a number, got {type(amount).__name__}")
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"usage[{metric!r}] must be a finite non-negative number, got {amount!r}")
    return {metric: float(amount) for metric, amount in merged.items()}


def build_metadata(
    auth_token: str | None, metadata: Mapping[str, str] | Iterable[tuple[str, str]] | None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata sent with every call: ``authorization: Bearer <token>`` plus extras.
    Keys are lower-cased (gRPC requires it)."""
    pairs = list(metadata.items() if isinstance(metadata, Mapping) else (metadata or ()))
    if auth_token:
        pairs.append(("authorization", f"Bearer {auth_token}"))
    return tuple((key.lower(), value) for key, value in pairs)


def limit_of(msg: quota_pb2.LimitStatus) -> LimitStatus:
    return LimitStatus(
        metric=msg.metric,
        window=msg.window,
        used=msg.used,
        held=msg.held,
        max=msg.max,
        remaining=msg.remaining,
        ratio=msg.ratio,
        resets_at=msg.resets_at,
        kind=_KINDS.get(msg.kind, LimitKind.UNSPECIFIED),
        decision=_DECISIONS.get(msg.decision, Decision.UNSPECIFIED),
        warn_at=msg.warn_at,
        block_at=msg.block_at,
    )


def check_request(
    subject: str,
    feature: str,
    *,
    provider: str,
    model: str,
    usage: Mapping[str, float],
    request_id: str,
    dry_run: bool = False,
    ttl_seconds: int = 0,
) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=subject,
        feature=feature,
        provider=provider,
        model=model,
        usage=dict(usage),
        request_id=request_id,
        dry_run=dry_run,
        reservation_ttl_seconds=ttl_seconds,
    )


def check_result_of(msg: quota_pb2.CheckAndReserveResponse, request_id: str) -> CheckResult:
    return CheckResult(
        decision=_DECISIONS.get(msg.decision, Decision.UNSPECIFIED),
        reason=_REASONS.get(msg.reason, Reason.UNSPECIFIED),
        message=msg.message,
        reservation_id=msg.reservation_id,
        request_id=request_id,
        tier=msg.tier,
        limits=tuple(limit_of(limit) for limit in msg.limits),
        limit=limit_of(msg.limit) if msg.HasField("limit") else None,
        policy_version=msg.policy_version,
        retry_after=msg.retry_after_seconds,
        expires_at=msg.reservation_expires_at,
        replayed=msg.replayed,
        raw=msg,
    )


def unverified_result(request_id: str, failure: QuotaUnavailable) -> CheckResult:
    """What ``fail_mode="open"`` answers when the service stayed unreachable."""
    return CheckResult(
        decision=Decision.ALLOW,
        reason=Reason.UNSPECIFIED,
        message=f"unverified: {failure}",
        reservation_id="",
        request_id=request_id,
        unverified=True,
    )


def commit_result_of(msg: quota_pb2.CommitResponse) -> CommitResult:
    return CommitResult(
        limits=tuple(limit_of(limit) for limit in msg.limits), already_settled=msg.already_settled, raw=msg
    )


def release_result_of(msg: quota_pb2.ReleaseResponse) -> ReleaseResult:
    return ReleaseResult(already_settled=msg.already_settled, raw=msg)


def usage_report_of(subject: str, msg: quota_pb2.GetUsageResponse) -> UsageReport:
    return UsageReport(
        subject=subject,
        tier=msg.tier,
        limits=tuple(limit_of(limit) for limit in msg.limits),
        policy_version=msg.policy_version,
        raw=msg,
    )


def status_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a failed call (``UNKNOWN`` if the error carries none)."""
    try:
        code = err.code()
        details = err.details() or ""
    except Exception:  # an RpcError that is not a Call: nothing more to learn
        return grpc.StatusCode.UNKNOWN, str(err)
    return (code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN), details


def idempotent(request: object) -> bool:
    """Whether sending ``request`` again is safe when the first attempt may have been applied.

    A ``CheckAndReserve`` is when it carries a ``request_id`` (the service replays the first
    answer; both clients always set one); ``Commit`` and ``Release`` settle a reservation
    once (a repeat answers ``already_settled``); ``GetUsage`` only reads.
    """
    if isinstance(request, quota_pb2.CheckAndReserveRequest):
        return bool(request.request_id)
    return isinstance(request, quota_pb2.CommitRequest | quota_pb2.ReleaseRequest | quota_pb2.GetUsageRequest)


def retryable(code: grpc.StatusCode, request: object) -> bool:
    """The retry rule of both clients: ``UNAVAILABLE`` (nothing reached the service, or it
    could not answer yet) and, for an :func:`idempotent` request, ``DEADLINE_EXCEEDED`` (the
    attempt timed out; the service may have applied it). Nothing else, ever."""
    if code is grpc.StatusCode.UNAVAILABLE:
        return True
    return code is grpc.StatusCode.DEADLINE_EXCEEDED and idempotent(request)


def request_error(method: str, code: grpc.StatusCode, details: str) -> QuotaRequestError:
    cls = QuotaAuthError if code in AUTH_CODES else QuotaRequestError
    return cls(method, code, details)


class CallBudget:
    """The time and attempts one logical call may spend; shared by the sync and async clients.

    Usage: ``timeout = budget.attempt()`` before each try; after a retryable failure
    ``delay = budget.retry_delay()`` gives the sleep before the next try, or ``None`` when
    the attempts or the deadline are used up.
    """

    def __init__(
        self,
        options: ClientOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._options = options
        self._clock = clock
        self._rng = rng
        self.started = clock()
        self.deadline_at = self.started + options.deadline
        self.attempts = 0

    def attempt(self) -> float:
        """Start an attempt; returns its timeout in seconds (never past the deadline)."""
        self.attempts += 1
        remaining = self.deadline_at - self._clock()
        return max(min(self._options.attempt_timeout, remaining), 0.001)

    def retry_delay(self) -> float | None:
        if self.attempts >= self._options.retry.max_attempts:
            return None
        delay = self._options.retry.backoff(self.attempts, self._rng)
        if self.deadline_at - self._clock() - delay < MIN_ATTEMPT_SECONDS:
            return None
        return delay

    def elapsed(self) -> float:
        return self._clock() - self.started

    def unavailable(self, method: str, code: grpc.StatusCode, details: str) -> QuotaUnavailable:
        return QuotaUnavailable(method, code, details, attempts=self.attempts, elapsed=self.elapsed())


# -- the gRPC objects of each client, in async/sync pairs (see scripts/gen_sync_client.py) ---

AsyncChannel = grpc.aio.Channel
Channel = grpc.Channel
AsyncUnaryUnaryMultiCallable = grpc.aio.UnaryUnaryMultiCallable
UnaryUnaryMultiCallable = grpc.UnaryUnaryMultiCallable


def open_async_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, str | int]]
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel; it belongs to the event loop running when it is made."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, str | int]]
) -> grpc.Channel:
    """A blocking channel, safe to share between threads."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


async def close_async_channel(channel: grpc.aio.Channel) -> None:
    """Close at once: calls still in flight are cancelled (no grace period)."""
    await channel.close(None)


def close_channel(channel: grpc.Channel) -> None:
    """Close at once: calls still in flight are cancelled."""
    channel.close()
