"""The asyncio client: :class:`AsyncQuotaClient` and its guard, :class:`AsyncReservation`.

Same options, results, errors and guarantees as :mod:`quota_client.client`; every call is a
coroutine. The ``grpc.aio`` channel is opened on first use, inside the running event loop,
and must be used from that loop only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_client import _wire
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
    """The asyncio twin of :class:`~quota_client.QuotaClient` (same constructor arguments).

    ``on_warning`` hooks may be plain functions or coroutine functions. Use as
    ``async with AsyncQuotaClient(target) as client:`` or call ``await client.close()``.
    """

    _channel: grpc.aio.Channel | None = None
    _stub_obj: quota_pb2_grpc.QuotaServiceAsyncStub | None = None

    async def __aenter__(self) -> AsyncQuotaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel. Idempotent; the client cannot be used afterwards."""
        self._closed = True
        channel, self._channel, self._stub_obj = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def _stub(self) -> quota_pb2_grpc.QuotaServiceAsyncStub:
        self._ensure_open()
        if self._stub_obj is None:
            credentials = self._credentials()
            args = self._channel_args()
            self._channel = (
                grpc.aio.insecure_channel(self.target, options=args)
                if credentials is None
                else grpc.aio.secure_channel(self.target, credentials, options=args)
            )
            self._stub_obj = quota_pb2_grpc.QuotaServiceStub(self._channel)
        return self._stub_obj

    async def _invoke(self, method: str, rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """One logical call: retried on UNAVAILABLE / DEADLINE_EXCEEDED within the deadline."""
        budget = _wire.CallBudget(self.options)
        while True:
            timeout = budget.attempt()
            try:
                return await rpc(request, timeout=timeout, metadata=self.options.metadata)
            except grpc.RpcError as err:
                code, details = _wire.status_of(err)
                if code not in _wire.RETRYABLE:
                    raise _wire.request_error(method, code, details) from None
                delay = budget.retry_delay()
                if delay is None:
                    raise budget.unavailable(method, code, details) from None
                logger.debug("quota: %s %s (attempt %d); retrying in %.3fs", method, code.name, budget.attempts, delay)
                await asyncio.sleep(delay)

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
        """See :meth:`QuotaClient.check_and_reserve <quota_client.QuotaClient.check_and_reserve>`."""
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
            response = await self._invoke("CheckAndReserve", self._stub().CheckAndReserve, request)
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
        """See :meth:`QuotaClient.commit <quota_client.QuotaClient.commit>`."""
        request = quota_pb2.CommitRequest(reservation_id=reservation_id, usage=_wire.usage_map(tokens, images, usage))
        try:
            return _wire.commit_result_of(await self._invoke("Commit", self._stub().Commit, request))
        except QuotaUnavailable as failure:
            if self.options.fail_mode is FailMode.CLOSED:
                raise
            logger.warning("quota: commit of %s not recorded (fail_mode=open): %s", reservation_id, failure)
            return CommitResult(unverified=True)

    async def release(self, reservation_id: str) -> ReleaseResult:
        """See :meth:`QuotaClient.release <quota_client.QuotaClient.release>`."""
        request = quota_pb2.ReleaseRequest(reservation_id=reservation_id)
        try:
            return _wire.release_result_of(await self._invoke("Release", self._stub().Release, request))
        except QuotaUnavailable as failure:
            if self.options.fail_mode is FailMode.CLOSED:
                raise
            logger.warning("quota: release of %s not recorded (fail_mode=open): %s", reservation_id, failure)
            return ReleaseResult(unverified=True)

    async def get_usage(self, subject: str) -> UsageReport:
        """See :meth:`QuotaClient.get_usage <quota_client.QuotaClient.get_usage>`."""
        request = quota_pb2.GetUsageRequest(subject=subject)
        return _wire.usage_report_of(subject, await self._invoke("GetUsage", self._stub().GetUsage, request))

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
        """A guard for one provider call: ``async with client.reserve(...) as r: ...
        await r.commit(tokens=...)``. See :class:`AsyncReservation`."""
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
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorator form of :meth:`reserve` for ``async def`` functions; arguments as in
        :meth:`QuotaClient.guard <quota_client.QuotaClient.guard>`."""
        amounts = estimate_resolver(estimate, tokens, images, usage)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError("AsyncQuotaClient.guard decorates `async def` functions; use QuotaClient.guard")
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
    """One guarded provider call (made by :meth:`AsyncQuotaClient.reserve`); entering and
    leaving ``async with`` guarantee exactly what :class:`~quota_client.Reservation` does.
    A cancelled block (``asyncio.CancelledError``) counts as an exception: it releases."""

    def __init__(self, client: AsyncQuotaClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    async def __aenter__(self) -> AsyncReservation:
        if self._state is not State.NEW:
            raise QuotaUsageError("a reservation guard can be entered once")
        result = await self._client.check_and_reserve(
            self.subject,
            self.feature,
            provider=self.provider,
            model=self.model,
            usage=self.estimate,
            request_id=self.request_id,
            ttl_seconds=self.ttl_seconds,
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
                outcome = self._on_warning(self._warning)
                if inspect.isawaitable(outcome):
                    await outcome
            except BaseException:
                await self._settle_on_error()
                raise
        return self

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
        """See :meth:`Reservation.commit <quota_client.Reservation.commit>`."""
        given = tokens is not None or images is not None or usage is not None
        return await self._commit(_wire.usage_map(tokens, images, usage) if given else self.estimate)

    async def release(self) -> ReleaseResult:
        """See :meth:`Reservation.release <quota_client.Reservation.release>`."""
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
