"""Thin typed adapters: convert the request, call the core, convert the result.

Each call to the core runs under one deadline (:func:`quota_service.deadline.request_deadline`):
the caller's gRPC deadline less a margin for the answer, capped by the server's request
budget (:meth:`Quotas.request_seconds`), so every store call of the request, queue waits
included, ends in time for the answer to reach the caller.
"""

from __future__ import annotations

from typing import Any

import grpc

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.deadline import request_deadline
from quota_service.errors import InvalidRequest
from quota_service.policy.validation import build_request, validate_subject
from quota_service.quotas import Quotas
from quota_service.server import convert
from quota_service.server.status import grpc_errors
from quota_service.store.keys import subject_of

Context = grpc.aio.ServicerContext[Any, Any]


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, *, quotas: Quotas) -> None:
        self._quotas = quotas

    def _deadline(self, context: Context) -> float:
        """Seconds this request may take (see the module docstring)."""
        return self._quotas.request_seconds(context.time_remaining())

    @grpc_errors
    async def CheckAndReserve(
        self, request: quota_pb2.CheckAndReserveRequest, context: Context
    ) -> quota_pb2.CheckAndReserveResponse:
        quota_request = build_request(
            subject=request.subject,
            feature=request.feature,
            provider=request.provider,
            model=request.model,
            usage=dict(request.usage),
            request_id=request.request_id,
            dry_run=request.dry_run,
            ttl_seconds=request.reservation_ttl_seconds,
        )
        with request_deadline(self._deadline(context)):
            answer = await self._quotas.check_and_reserve(quota_request)
        return convert.reserve_response(answer)

    @grpc_errors
    async def Commit(self, request: quota_pb2.CommitRequest, context: Context) -> quota_pb2.CommitResponse:
        _require_reservation(request.reservation_id)
        with request_deadline(self._deadline(context)):
            answer = await self._quotas.commit(request.reservation_id, dict(request.usage))
        return quota_pb2.CommitResponse(
            limits=[convert.limit_status(r) for r in answer.limits],
            already_settled=answer.already_settled,
            settled=[
                convert.settled_window(w, now=answer.now, tz=self._quotas.policy.current.timezone)
                for w in answer.windows
            ],
        )

    @grpc_errors
    async def Release(self, request: quota_pb2.ReleaseRequest, context: Context) -> quota_pb2.ReleaseResponse:
        _require_reservation(request.reservation_id)
        with request_deadline(self._deadline(context)):
            already_settled = await self._quotas.release(request.reservation_id)
        return quota_pb2.ReleaseResponse(already_settled=already_settled)

    @grpc_errors
    async def GetUsage(self, request: quota_pb2.GetUsageRequest, context: Context) -> quota_pb2.GetUsageResponse:
        validate_subject(request.subject)
        with request_deadline(self._deadline(context)):
            answer = await self._quotas.usage(request.subject)
        return quota_pb2.GetUsageResponse(
            tier=answer.tier,
            limits=[convert.limit_status(r) for r in answer.limits],
            policy_version=answer.policy_version,
        )


def _require_reservation(reservation_id: str) -> None:
    if not reservation_id:
        raise InvalidRequest("reservation_id is required")
    subject_of(reservation_id)  # InvalidRequest unless it is an id this service issued
