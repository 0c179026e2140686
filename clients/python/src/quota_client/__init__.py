"""quota-client: ask quota-service before every paid provider call.

::

    from quota_client import QuotaClient, QuotaDenied

    with QuotaClient("127.0.0.1:50051") as client:
        try:
            with client.reserve(user_id, "blog_writer", provider="openai",
                                model="gpt-4o-mini", tokens=estimate) as r:
                resp = call_provider(...)
                r.commit(tokens=resp.usage.total_tokens)
        except QuotaDenied as denied:
            tell_user(denied.message, retry_after=denied.retry_after)

:class:`AsyncQuotaClient` is the asyncio twin (``async with client.reserve(...) as r:``,
``await r.commit(...)``). Errors form one tree rooted at :class:`QuotaError` (see
:mod:`quota_client.errors`). The generated gRPC stubs ship in the same distribution as
``quota.v1`` (``quota_pb2``, ``quota_pb2_grpc``, ``admin_pb2``, ``admin_pb2_grpc``).
"""

from __future__ import annotations

from quota_client.aio import AsyncQuotaClient, AsyncReservation
from quota_client.client import QuotaClient, Reservation
from quota_client.errors import (
    QuotaAuthError,
    QuotaDenied,
    QuotaError,
    QuotaRequestError,
    QuotaUnavailable,
    QuotaUsageError,
)
from quota_client.models import (
    CheckResult,
    CommitResult,
    Decision,
    LimitKind,
    LimitStatus,
    QuotaWarning,
    Reason,
    ReleaseResult,
    UsageReport,
)
from quota_client.options import ClientOptions, FailMode, RetryPolicy, TlsConfig

__all__ = [
    "AsyncQuotaClient",
    "AsyncReservation",
    "CheckResult",
    "ClientOptions",
    "CommitResult",
    "Decision",
    "FailMode",
    "LimitKind",
    "LimitStatus",
    "QuotaAuthError",
    "QuotaClient",
    "QuotaDenied",
    "QuotaError",
    "QuotaRequestError",
    "QuotaUnavailable",
    "QuotaUsageError",
    "QuotaWarning",
    "Reason",
    "ReleaseResult",
    "Reservation",
    "RetryPolicy",
    "TlsConfig",
    "UsageReport",
]
