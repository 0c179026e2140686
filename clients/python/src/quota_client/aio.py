"""The asyncio client: :class:`AsyncQuotaClient` and its guard, :class:`AsyncReservation`.

Same options, results, errors and guarantees as :mod:`quota_client.client`; every call is a
coroutine. The ``grpc.aio`` channel is opened on first use, inside the running event loop,
and must be used from that loop only.

This module is the one source of both clients: ``scripts/gen_sync_client.py`` (``make
sync-client``) writes :mod:`quota_client.client` from it, dropping ``async``/``await`` and
renaming every ``Async`` name to its sync twin (its docstrings too). Write docstrings so they
read right after that; what a rename cannot express is an async/sync pair in ``_common`` or
``_wire``. ``tests/unit/test_generated_code.py`` fails when ``client.py`` is stale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_client import _common, _wire
from quota_client._common import (
    ClientBase,
    ReservationBase,
    State,
    WarningHook,
    estimate_resolver,
    log_settle_failure,
    log_unverified_decision,
    logger,
    subject_resolver,
)
from quota_client.errors import QuotaDenied, QuotaUnavailable, QuotaUsageError
from quota_client.models import CheckResult, CommitResult, ReleaseResult, UsageReport
from quota_client.options import FailMode

P = ParamSpec("P")
R = TypeVar("R")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncQuotaClient(ClientBase):
    """An asyncio client of quota-service, bound to the event loop that first uses it.

    ``AsyncQuotaClient(target="127.0.0.1:50051", *, deadline=2.0, attempt_timeout=0.5,
    retry=RetryPolicy(), fail_mode="closed", tls=None, auth_token=None, metadata=None,
    require_commit=False, on_warning=None, channel_options=(), channels=4)``

    * ``target``: ``host:port`` (any gRPC target string).
    * ``deadline``: seconds one logical call may take, retries and backoff included;
      ``attempt_timeout``: seconds for one attempt (capped by what is left of ``deadline``);
      keep it above the service's own per-request budget (0.4 s by default), so that a slow
      store still gets the caller an answer rather than a timed-out attempt.
    * ``retry``: a :class:`RetryPolicy` for ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED``. Every
      retry reuses the call's ``request_id``, so the service counts it once. Other statuses
      (``INTERNAL`` included) are never retried.
    * ``fail_mode``: ``"closed"`` raises :class:`QuotaUnavailable` once the deadline or the
      attempts are used up; ``"open"`` proceeds unverified and logs a warning.
    * ``tls``: a :class:`TlsConfig` (root CAs, optional client certificate and key for
      mTLS); ``None`` for a plaintext channel.
    * ``auth_token`` is sent as ``authorization: Bearer <token>``; ``metadata`` adds more.
    * ``require_commit`` / ``on_warning``: defaults for :meth:`reserve` (hooks may be plain or coroutine functions).
    * ``channel_options``: extra gRPC channel arguments (they win over the defaults).
    * ``channels``: how many channels (each its own TCP connection) to open to ``target``;
      calls, and each retry of a call, take them in turn (round robin). Against
      ``quota-service serve --workers N`` the kernel hands each connection to one worker, so
      one connection would put all of a client's calls on one worker. The default, 4, is not
      ``os.cpu_count()`` (the client's cores say nothing about the service's workers): it
      reaches both of 2 workers 7 times in 8 at 4 idle connections per client; a client that
      carries heavy load alone should use 2-4x the workers. ``1``: one channel, as before.

    The channels open lazily, all at once, and :meth:`close` or leaving ``async with client:``
    closes every one.
    """

    _channels: tuple[_wire.AsyncChannel, ...] = ()
    _stubs: _common.RoundRobin[quota_pb2_grpc.QuotaServiceAsyncStub] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncQuotaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel. Idempotent; the client cannot be used afterwards."""
        with self._lock:
            self._closed = True
            channels, self._channels, self._stubs = self._channels, (), None
        for channel in channels:
            await _wire.close_async_channel(channel)

    def _stub(self) -> quota_pb2_grpc.QuotaServiceAsyncStub:
        """The stub of the next channel in turn (opening them all on first use)."""
        with self._lock:
            self._ensure_open()
            if self._stubs is None:
                credentials = self._credentials()
                self._channels = tuple(
                    _wire.open_async_channel(self.target, credentials, self._channel_args(index))
                    for index in range(self.options.channels)
                )
                self._stubs = _common.RoundRobin([quota_pb2_grpc.QuotaServiceStub(ch) for ch in self._channels])
            return self._stubs.next()

    async def _invoke(
        self,
        method: str,
        rpc_of: Callable[[quota_pb2_grpc.QuotaServiceAsyncStub], _wire.AsyncUnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
    ) -> Resp:
        """One logical call: retried on UNAVAILABLE / DEADLINE_EXCEEDED within the deadline
        (:func:`_wire.retryable`), never on any other status. Each attempt goes out on the
        next channel (``rpc_of`` picks the method off its stub), with the same request, so
        a retry after a worker went away can reach another one.

        Raises :class:`QuotaUnavailable` when the budget is used up and
        :class:`QuotaRequestError` for any other status.
        """
        budget = _wire.CallBudget(self.options)
        while True:
            timeout = budget.attempt()
            try:
                return await rpc_of(self._stub())(request, timeout=timeout, metadata=self.options.metadata)
            except grpc.RpcError as err:
                code, details = _wire.status_of(err)
                if not _wire.retryable(code, request):
                    raise _wire.request_error(method, code, details) from None
                delay = budget.retry_delay()
                if delay is None:
                    raise budget.unavailable(method, code, details) from None
                logger.debug("quota: %s %s (attempt %d); retrying in %.3fs", method, code.name, budget.attempts, delay)
                await _common.async_sleep(delay)

    # -- plain calls -----------------------------------------------------------------------

    async def check_and_reserve(
        self,
        subject: str,
        feature: str,
        *,
        provider: str = "",
        model: str = "",
        tokens: float | None = None,
        images: float | None = None,
        usage: Mapping[str, float] | None = None,
        request_id: str | None = None,
        dry_run: bool = False,
        ttl_seconds: int = 0,
    ) -> CheckResult:
        """Ask, and unless DENY or ``dry_run`` reserve the estimate. Returns the decision as is:
        a DENY is a result here, not an exception (the guard :meth:`reserve` raises it).

        ``request_id`` is the idempotency key (a fresh uuid4 when ``None``); retries reuse it.
        When the service stays unreachable: ``fail_mode="closed"`` raises
        :class:`QuotaUnavailable`, ``"open"`` returns an ``unverified`` ALLOW. A refusal
        (``INTERNAL``, ``INVALID_ARGUMENT``, ...) is an answer, not an outage: it raises
        :class:`QuotaRequestError` in either fail mode.
        """
        amounts = _wire.usage_map(tokens, images, usage)
        request_id = request_id or _wire.new_request_id()
        request = _wire.check_request(
            subject,
            feature,
            provider=provider,
            model=model,
            usage=amounts,
            request_id=request_id,
            dry_run=dry_run,
            ttl_seconds=ttl_seconds,
        )
        try:
            response = await self._invoke("CheckAndReserve", lambda stub: stub.CheckAndReserve, request)
        except QuotaUnavailable as failure:
            if self.options.fail_mode is FailMode.CLOSED:
                raise
            result = _wire.unverified_result(request_id, failure)
            log_unverified_decision(result, subject, feature, amounts)
            return result
        return _wire.check_result_of(response, request_id)

    async def commit(
        self,
        reservation_id: str,
        *,
        tokens: float | None = None,
        images: float | None = None,
        usage: Mapping[str, float] | None = None,
    ) -> CommitResult:
        """Settle a reservation with the actual usage; a metric left out counts 0.

        Idempotent on the service (a repeat says ``already_settled``), so it is retried like
        ``CheckAndReserve``. Unreachable: ``"closed"`` raises :class:`QuotaUnavailable`,
        ``"open"`` logs and returns an ``unverified`` result (the service then settles the
        reservation at its estimate when it expires). ``INTERNAL`` (e.g. damaged data on the
        service) raises :class:`QuotaRequestError` at once, never retried.
        """
        request = quota_pb2.CommitRequest(reservation_id=reservation_id, usage=_wire.usage_map(tokens, images, usage))
        try:
            return _wire.commit_result_of(await self._invoke("Commit", lambda stub: stub.Commit, request))
        except QuotaUnavailable as failure:
            if self.options.fail_mode is FailMode.CLOSED:
                raise
            logger.warning("quota: commit of %s not recorded (fail_mode=open): %s", reservation_id, failure)
            return CommitResult(unverified=True)

    async def release(self, reservation_id: str) -> ReleaseResult:
        """Give a reservation back (the provider call did not happen). Idempotent; retried;
        fail mode as for :meth:`commit`."""
        request = quota_pb2.ReleaseRequest(reservation_id=reservation_id)
        try:
            return _wire.release_result_of(await self._invoke("Release", lambda stub: stub.Release, request))
        except QuotaUnavailable as failure:
            if self.options.fail_mode is FailMode.CLOSED:
                raise
            logger.warning("quota: release of %s not recorded (fail_mode=open): %s", reservation_id, failure)
            return ReleaseResult(unverified=True)

    async def get_usage(self, subject: str) -> UsageReport:
        """The subject's tier and limits now. Read-only, so the fail mode does not apply:
        an unreachable service always raises :class:`QuotaUnavailable`."""
        request = quota_pb2.GetUsageRequest(subject=subject)
        return _wire.usage_report_of(subject, await self._invoke("GetUsage", lambda stub: stub.GetUsage, request))

    # -- the guard -------------------------------------------------------------------------

    def reserve(
        self,
        subject: str,
        feature: str,
        *,
        provider: str = "",
        model: str = "",
        tokens: float | None = None,
        images: float | None = None,
        usage: Mapping[str, float] | None = None,
        request_id: str | None = None,
        ttl_seconds: int = 0,
        on_warning: WarningHook | None = None,
        require_commit: bool | None = None,
    ) -> AsyncReservation:
        """A guard for one provider call; the reservation is made on entering the block::

            async with client.reserve("user-1", "blog_writer", provider="openai", tokens=1200) as r:
                resp = await call_provider(...)
                await r.commit(tokens=resp.usage.total_tokens)

        See :class:`AsyncReservation` for what entering and leaving the block guarantee.
        ``on_warning`` / ``require_commit`` default to the client's.
        """
        return AsyncReservation(
            self,
            subject=subject,
            feature=feature,
            provider=provider,
            model=model,
            estimate=_wire.usage_map(tokens, images, usage),
            request_id=request_id,
            ttl_seconds=ttl_seconds,
            on_warning=on_warning or self.on_warning,
            require_commit=self.options.require_commit if require_commit is None else require_commit,
        )

    def guard(
        self,
        feature: str,
        *,
        subject: str | Callable[..., str] = "subject",
        provider: str = "",
        model: str = "",
        tokens: float | None = None,
        images: float | None = None,
        usage: Mapping[str, float] | None = None,
        estimate: Callable[..., Mapping[str, float]] | None = None,
        actual: Callable[[Any], Mapping[str, float]] | None = None,
        on_warning: WarningHook | None = None,
    ) -> Callable[[_common.AsyncProviderCall[P, R]], _common.AsyncGuardedCall[P, R]]:
        """Decorator form of :meth:`reserve`: every call of the function is one guarded call.

        * the function decorated: an ``async def`` function (anything else is a ``TypeError``).
        * ``subject``: the name of the function's parameter holding the subject id (default
          ``"subject"``), or a callable taking the function's arguments.
        * the estimate: fixed (``tokens=``, ``images=``, ``usage=``) or ``estimate=``, a
          callable taking the function's arguments and returning ``{metric: amount}``.
        * ``actual``: a callable taking the function's return value and returning the actual
          usage to commit; without it the estimate is committed.

        DENY raises :class:`QuotaDenied` before the function runs; an exception from the
        function releases the reservation and propagates.
        """
        amounts = estimate_resolver(estimate, tokens, images, usage)

        def decorate(func: _common.AsyncProviderCall[P, R]) -> _common.AsyncGuardedCall[P, R]:
            _common.check_async_guarded(func)
            subject_of = subject_resolver(func, subject)

            @functools.wraps(func)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                async with self.reserve(
                    subject_of(*args, **kwargs),
                    feature,
                    provider=provider,
                    model=model,
                    usage=amounts(*args, **kwargs),
                    on_warning=on_warning,
                ) as reservation:
                    result = await func(*args, **kwargs)
                    if actual is not None:
                        await reservation.commit(usage=actual(result))
                    return result

            return guarded

        return decorate


class AsyncReservation(ReservationBase):
    """One guarded provider call (made by :meth:`AsyncQuotaClient.reserve`).

    Entering the block asks the service with a ``request_id`` fixed for this guard (retries
    reuse it, so they never count twice):

    * DENY raises :class:`QuotaDenied`; nothing was reserved and the block does not run.
    * WARN proceeds: :attr:`warning` is set and the ``on_warning`` hook is called (if the
      hook raises, the reservation is released and the error propagates).
    * unreachable: ``fail_mode="closed"`` raises :class:`QuotaUnavailable`; ``"open"``
      proceeds with :attr:`unverified` ``True``, and commit/release only log.
    * refused (``INTERNAL``, ``INVALID_ARGUMENT``, ...): :class:`QuotaRequestError` in either
      fail mode; the block does not run.

    Leaving the block:

    * after :meth:`commit` or :meth:`release`: nothing more happens;
    * with an exception (``asyncio.CancelledError`` too): the reservation is released, the exception propagates;
    * normally without a commit: the estimate is committed; under ``require_commit=True``
      it is committed too (never hand money back silently) and :class:`QuotaUsageError` is
      raised. A failed automatic settle is logged, not raised: the service settles an
      expired reservation at its estimate anyway.
    """

    def __init__(self, client: AsyncQuotaClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    async def __aenter__(self) -> AsyncReservation:
        if self._state is not State.NEW:
            raise QuotaUsageError("a reservation guard can be entered once")
        # Cancelled while the call is in flight: it may have reserved already; it is let
        # finish and what it reserved is released before the cancellation goes on.
        result = await _common.async_despite_cancel(
            lambda: self._client.check_and_reserve(
                self.subject,
                self.feature,
                provider=self.provider,
                model=self.model,
                usage=self.estimate,
                request_id=self.request_id,
                ttl_seconds=self.ttl_seconds,
            ),
            self._give_back,
        )
        if not result.allowed:
            self._result = result
            self._state = State.DENIED
            if result.reservation_id:  # a decision this client does not know, that reserved
                try:
                    await self._client.release(result.reservation_id)
                except Exception as err:
                    log_settle_failure("release", self, err)
            raise QuotaDenied(result)
        self._accept(result)
        if self._warning is not None and self._on_warning is not None:
            try:
                await _common.async_call_warning_hook(self._on_warning, self._warning)
            except BaseException:
                await self._settle_on_error()
                raise
        return self

    async def _give_back(self, result: CheckResult) -> None:
        """Release what a CheckAndReserve made for a caller that stopped waiting for it."""
        if result.reservation_id and not result.unverified:
            try:
                await self._client.release(result.reservation_id)
            except Exception as err:
                log_settle_failure("release", self, err)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state is not State.OPEN:
            return
        if exc is not None:
            await self._settle_on_error()
            return
        try:
            await self._commit(self.estimate)
        except Exception as err:  # the service settles an expired reservation at its estimate
            log_settle_failure("automatic commit", self, err)
        if self.require_commit:
            raise QuotaUsageError(
                f"left the guard of {self.subject}/{self.feature} without commit() under "
                "require_commit=True; the estimate was committed"
            )

    async def commit(
        self,
        *,
        tokens: float | None = None,
        images: float | None = None,
        usage: Mapping[str, float] | None = None,
    ) -> CommitResult:
        """Settle with the actual usage (no amounts: the estimate); a metric left out counts 0.
        Once only: a second commit, or a commit after release, raises :class:`QuotaUsageError`.
        Unverified reservations only log. If the service cannot be reached, or refuses the
        commit (``INTERNAL``: never retried), the error is raised (unreachable: per the fail
        mode), and the guard will not release on the way out: the call happened."""
        given = tokens is not None or images is not None or usage is not None
        return await self._commit(_wire.usage_map(tokens, images, usage) if given else self.estimate)

    async def release(self) -> ReleaseResult:
        """Give the reservation back: the provider call did not happen. Once only."""
        self._begin_settle("release")
        if self.result.unverified:
            self._state = State.RELEASED
            self._log_unrecorded("release", None)
            self.release_result = ReleaseResult(unverified=True)
            return self.release_result
        self._state = State.UNSETTLED
        self.release_result = await self._client.release(self.reservation_id)
        self._state = State.RELEASED
        return self.release_result

    async def _commit(self, usage: Mapping[str, float]) -> CommitResult:
        self._begin_settle("commit")
        if self.result.unverified:
            self._state = State.COMMITTED
            self._log_unrecorded("commit", usage)
            self.commit_result = CommitResult(unverified=True)
            return self.commit_result
        self._state = State.UNSETTLED  # from here on, never release: the call happened
        self.commit_result = await self._client.commit(self.reservation_id, usage=usage)
        self._state = State.COMMITTED
        return self.commit_result

    async def _settle_on_error(self) -> None:
        try:
            await self.release()
        except Exception as err:
            log_settle_failure("release", self, err)
