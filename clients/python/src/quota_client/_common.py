"""What the sync and async clients share: configuration, the reservation guard's state
machine, the decorator's argument plumbing, and the few things the two clients do
differently, in async/sync pairs (the end of this module). No network I/O happens here.

``aio.py`` is the one source of both clients: ``scripts/gen_sync_client.py`` writes
``client.py`` from it by dropping ``async``/``await`` and renaming each ``Async`` name to
its sync twin. Anything a rename cannot express is a pair here or in ``_wire``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeAlias, TypeVar

import grpc

from quota_client import _wire
from quota_client.errors import QuotaUsageError
from quota_client.models import CheckResult, CommitResult, Decision, QuotaWarning, ReleaseResult
from quota_client.options import (
    CHANNEL_INDEX_ARG,
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_CHANNELS,
    ClientOptions,
    FailMode,
    RetryPolicy,
    TlsConfig,
)

logger = logging.getLogger("quota_client")

#: Called with the warning when a guarded call is answered WARN (e.g. to show the 80 % notice).
#: The async client also accepts a coroutine function.
WarningHook = Callable[[QuotaWarning], object]

DEFAULT_TARGET = "127.0.0.1:50051"


class ClientBase:
    """Configuration common to :class:`QuotaClient` and :class:`AsyncQuotaClient`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        deadline: float = 2.0,
        attempt_timeout: float = 0.5,
        retry: RetryPolicy | None = None,
        fail_mode: FailMode | str = FailMode.CLOSED,
        tls: TlsConfig | None = None,
        auth_token: str | None = None,
        metadata: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        require_commit: bool = False,
        on_warning: WarningHook | None = None,
        channel_options: Iterable[tuple[str, str | int]] = (),
        channels: int = DEFAULT_CHANNELS,
    ) -> None:
        extra_options = tuple(channel_options)
        overridden = {key for key, _ in extra_options}
        self.target = target
        self.options = ClientOptions(
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            retry=retry or RetryPolicy(),
            fail_mode=FailMode(fail_mode),
            tls=tls,
            metadata=_wire.build_metadata(auth_token, metadata),
            require_commit=require_commit,
            channel_options=tuple(o for o in DEFAULT_CHANNEL_OPTIONS if o[0] not in overridden) + extra_options,
            channels=channels,
        )
        self.on_warning = on_warning
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, fail_mode={self.options.fail_mode.value!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise QuotaUsageError(f"{type(self).__name__} for {self.target} is closed")

    def _credentials(self) -> grpc.ChannelCredentials | None:
        tls = self.options.tls
        if tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        )

    def _channel_args(self, index: int = 0) -> list[tuple[str, str | int]]:
        """The arguments of channel ``index`` (0-based) of ``options.channels``.

        With more than one channel, each gets its own :data:`CHANNEL_INDEX_ARG` and a local
        subchannel pool, so that each is its own TCP connection (gRPC otherwise shares one
        subchannel between channels with equal arguments) and the kernel can hand each to
        another worker of ``serve --workers N``. One channel keeps the arguments as they were.
        """
        args = list(self.options.channel_options)
        tls = self.options.tls
        if tls is not None and tls.server_name:
            args.append(("grpc.ssl_target_name_override", tls.server_name))
        if self.options.channels > 1:
            args += [("grpc.use_local_subchannel_pool", 1), (CHANNEL_INDEX_ARG, index)]
        return args


T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Hands out ``items`` in turn, forever; thread-safe (``itertools.count`` is atomic)."""

    def __init__(self, items: Sequence[T]) -> None:
        if not items:
            raise ValueError("RoundRobin needs at least one item")
        self.items: tuple[T, ...] = tuple(items)
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self.items)

    def next(self) -> T:
        return self.items[next(self._turn) % len(self.items)]


class State(enum.Enum):
    NEW = "new"  # reserve() returned, the block not entered yet
    OPEN = "open"  # reserved (or unverified): waiting for commit / release
    COMMITTED = "committed"
    RELEASED = "released"
    UNSETTLED = "unsettled"  # a commit/release failed: the service settles it at expiry
    DENIED = "denied"


class ReservationBase:
    """State and read-only view of one guarded call (sync and async guards share it)."""

    def __init__(
        self,
        *,
        subject: str,
        feature: str,
        provider: str,
        model: str,
        estimate: dict[str, float],
        request_id: str | None,
        ttl_seconds: int,
        on_warning: WarningHook | None,
        require_commit: bool,
    ) -> None:
        self.subject = subject
        self.feature = feature
        self.provider = provider
        self.model = model
        self.estimate: Mapping[str, float] = estimate
        self.request_id = request_id or _wire.new_request_id()
        self.ttl_seconds = ttl_seconds
        self._on_warning = on_warning
        self.require_commit = require_commit
        self._state = State.NEW
        self._result: CheckResult | None = None
        self._warning: QuotaWarning | None = None
        self.commit_result: CommitResult | None = None
        """The answer to the commit, once committed (explicitly or on leaving the block)."""
        self.release_result: ReleaseResult | None = None
        """The answer to the release, once released."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.subject}/{self.feature} {self._state.value}"
            f" request_id={self.request_id} reservation_id={self.reservation_id!r}>"
        )

    @property
    def result(self) -> CheckResult:
        """The service's answer (raises :class:`QuotaUsageError` before the block is entered)."""
        if self._result is None:
            raise QuotaUsageError("the reservation is made on entering the `with` block")
        return self._result

    @property
    def decision(self) -> Decision:
        return self.result.decision

    @property
    def warning(self) -> QuotaWarning | None:
        """Set when the service answered WARN: the call proceeds, a limit is past its warn threshold."""
        return self._warning

    @property
    def unverified(self) -> bool:
        """True when the service was unreachable and ``fail_mode="open"`` let the call proceed:
        nothing was checked or reserved, and commit/release only log."""
        return self.result.unverified

    @property
    def reservation_id(self) -> str:
        return self._result.reservation_id if self._result is not None else ""

    @property
    def state(self) -> str:
        """``new``, ``open``, ``committed``, ``released``, ``unsettled`` or ``denied``."""
        return self._state.value

    def _accept(self, result: CheckResult) -> None:
        self._result = result
        self._state = State.OPEN
        if result.decision is Decision.WARN:
            self._warning = QuotaWarning(message=result.message, limit=result.limit, result=result)

    def _begin_settle(self, action: str) -> None:
        if self._state is State.OPEN:
            return
        if self._state is State.NEW:
            raise QuotaUsageError(f"{action} before the reservation was made (enter the `with` block first)")
        raise QuotaUsageError(f"cannot {action}: the reservation is already {self._state.value}")

    def _log_unrecorded(self, action: str, usage: Mapping[str, float] | None) -> None:
        logger.warning(
            "quota: unverified %s not recorded (service was unreachable, fail_mode=open): "
            "subject=%s feature=%s provider=%s model=%s usage=%s request_id=%s",
            action,
            self.subject,
            self.feature,
            self.provider,
            self.model,
            dict(usage) if usage is not None else None,
            self.request_id,
        )


def log_unverified_decision(result: CheckResult, subject: str, feature: str, usage: Mapping[str, float]) -> None:
    logger.warning(
        "quota: proceeding UNVERIFIED (fail_mode=open): subject=%s feature=%s usage=%s request_id=%s: %s",
        subject,
        feature,
        dict(usage),
        result.request_id,
        result.message,
    )


def log_settle_failure(action: str, reservation: ReservationBase, exc: BaseException) -> None:
    logger.warning(
        "quota: %s of reservation %s (subject=%s) failed; the service settles it at its estimate when it expires: %s",
        action,
        reservation.reservation_id,
        reservation.subject,
        exc,
    )


def subject_resolver(func: Callable[..., Any], subject: str | Callable[..., str]) -> Callable[..., str]:
    """How a decorated function's call names its subject: a callable taking the function's
    arguments, or the name of one of its parameters."""
    if callable(subject):
        return subject
    signature = inspect.signature(func)
    if subject not in signature.parameters:
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!r} has no parameter {subject!r}: "
            "pass subject=<parameter name> or subject=<callable taking the same arguments>"
        )

    def resolve(*args: Any, **kwargs: Any) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return str(bound.arguments[subject])

    return resolve


def estimate_resolver(
    estimate: Callable[..., Mapping[str, float]] | None,
    tokens: float | None,
    images: float | None,
    usage: Mapping[str, float] | None,
) -> Callable[..., dict[str, float]]:
    """The decorator's estimate: fixed amounts, or a callable taking the function's arguments."""
    if estimate is None:
        fixed = _wire.usage_map(tokens, images, usage)
        return lambda *args, **kwargs: dict(fixed)
    if tokens is not None or images is not None or usage is not None:
        raise ValueError("give either estimate= or fixed amounts (tokens=, images=, usage=), not both")
    return lambda *args, **kwargs: _wire.usage_map(usage=estimate(*args, **kwargs))


# -- where the two clients differ, in async/sync pairs (see scripts/gen_sync_client.py) -----

P = ParamSpec("P")
R = TypeVar("R")

#: The function ``AsyncQuotaClient.guard`` decorates, and what it returns.
AsyncProviderCall: TypeAlias = Callable[P, Awaitable[R]]
AsyncGuardedCall: TypeAlias = Callable[P, Coroutine[Any, Any, R]]
#: The function ``QuotaClient.guard`` decorates, and what it returns.
ProviderCall: TypeAlias = Callable[P, R]
GuardedCall: TypeAlias = Callable[P, R]

#: The backoff between two attempts of one call.
async_sleep = asyncio.sleep
sleep = time.sleep


async def async_call_warning_hook(hook: WarningHook, warning: QuotaWarning) -> None:
    """Call an ``on_warning`` hook of the async client: a plain or a coroutine function."""
    outcome = hook(warning)
    if inspect.isawaitable(outcome):
        await outcome


def call_warning_hook(hook: WarningHook, warning: QuotaWarning) -> None:
    """Call an ``on_warning`` hook of the sync client."""
    hook(warning)


async def async_despite_cancel(call: Callable[[], Awaitable[T]], give_back: Callable[[T], Awaitable[None]]) -> T:
    """``await call()``, which runs to its end even if the caller is cancelled meanwhile.

    A CheckAndReserve whose caller is cancelled while it is in flight may already have
    reserved on the service: abandoning it would leave the reservation held until its TTL.
    So the call goes on (shielded); once it answers, ``give_back(result)`` hands back what
    it made, and the cancellation goes on (the caller's ``CancelledError`` is re-raised)."""
    task = asyncio.ensure_future(call())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception:  # the call failed: nothing was made that needs giving back
            raise asyncio.CancelledError() from None
        await give_back(result)
        raise


def despite_cancel(call: Callable[[], T], give_back: Callable[[T], None]) -> T:
    """The sync twin of :func:`async_despite_cancel`: a blocking call is never cancelled."""
    del give_back
    return call()


def check_async_guarded(func: Callable[..., object]) -> None:
    """``AsyncQuotaClient.guard`` wraps ``async def`` functions only."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError("AsyncQuotaClient.guard decorates `async def` functions; use QuotaClient.guard")


def check_guarded(func: Callable[..., object]) -> None:
    """``QuotaClient.guard`` wraps plain functions only: around an ``async def`` it would
    settle before the call ran, and the call would then run unguarded when awaited."""
    if inspect.iscoroutinefunction(func):
        raise TypeError("QuotaClient.guard decorates plain functions; use AsyncQuotaClient.guard for `async def`")
