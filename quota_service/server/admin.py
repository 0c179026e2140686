"""AdminService: thin adapters over the admin core."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from quota.v1 import admin_pb2, admin_pb2_grpc
from quota_service.quotas import Quotas
from quota_service.server import convert
from quota_service.server.status import grpc_errors

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, *, quotas: Quotas) -> None:
        self._quotas = quotas

    @grpc_errors
    async def GetPolicyStatus(
        self, request: admin_pb2.GetPolicyStatusRequest, context: Context
    ) -> admin_pb2.GetPolicyStatusResponse:
        return admin_pb2.GetPolicyStatusResponse(status=convert.policy_status(self._quotas.policy.status()))

    @grpc_errors
    async def ReloadPolicies(
        self, request: admin_pb2.ReloadPoliciesRequest, context: Context
    ) -> admin_pb2.ReloadPoliciesResponse:
        # A bad file raises PolicyError -> FAILED_PRECONDITION; the running policy stays.
        changed = await asyncio.to_thread(self._quotas.policy.reload)
        return admin_pb2.ReloadPoliciesResponse(
            status=convert.policy_status(self._quotas.policy.status()), changed=changed
        )
