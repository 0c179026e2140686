"""The errors of quota-client, in one tree.

::

    QuotaError                  base of every error this package raises on purpose
    ├── QuotaDenied             the service answered DENY: nothing was reserved, do not call the provider
    ├── QuotaUnavailable        no answer within the deadline after every retry (fail_mode="closed")
    ├── QuotaRequestError       the service refused the call itself (INTERNAL, INVALID_ARGUMENT, NOT_FOUND,
    │   │                       ...); never retried, in either fail mode: the same request would fail the same way
    │   └── QuotaAuthError      UNAUTHENTICATED / PERMISSION_DENIED
    └── QuotaUsageError         the client was used wrongly (commit twice, no commit under require_commit)

gRPC errors are translated into these at exactly one place (``quota_client._wire``);
no ``grpc.RpcError`` escapes a public method. Invalid *local* arguments (a conflicting
``tokens=`` and ``usage={"tokens": ...}``) raise the built-in ``ValueError``/``TypeError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from quota_client.models import CheckResult, LimitStatus, Reason


class QuotaError(Exception):
    """Base of every error quota-client raises on purpose."""


class QuotaDenied(QuotaError):
    """The service answered DENY. Nothing was reserved anywhere; the provider must not be called.

    ``reason`` is machine-readable (e.g. ``Reason.LIMIT_EXCEEDED``), ``message`` is for humans,
    ``limit`` is the limit that caused the denial (``None`` for denials not tied to a limit,
    e.g. ``FEATURE_NOT_ALLOWED``), ``retry_after`` the seconds until that limit's window
    resets (0 when waiting would not help or is unknown). ``result`` is the full answer.
    """

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        self.reason: Reason = result.reason
        self.message: str = result.message
        self.limit: LimitStatus | None = result.limit
        self.retry_after: int = result.retry_after
        super().__init__(f"quota denied ({result.reason.value}): {result.message}")


class QuotaUnavailable(QuotaError):
    """quota-service gave no usable answer within the client's deadline, after every retry.

    ``code`` is the gRPC status of the last attempt (``UNAVAILABLE`` or ``DEADLINE_EXCEEDED``),
    ``attempts`` how many were made and ``elapsed`` the seconds spent in total (never more
    than the client's ``deadline`` plus scheduling noise).
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str, *, attempts: int, elapsed: float):
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            f"quota-service unavailable: {method} failed {attempts} time(s) in {elapsed:.3f}s, "
            f"last {code.name}: {details}"
        )


class QuotaRequestError(QuotaError):
    """The service refused the call with a non-retryable status (``INVALID_ARGUMENT``,
    ``NOT_FOUND``, ``FAILED_PRECONDITION``, ``INTERNAL``, ...). Nothing was counted for a
    refused ``CheckAndReserve``. ``code`` is the gRPC status, ``details`` its message.

    Raised in either fail mode: ``fail_mode="open"`` is for a service that cannot be
    reached, not one that answers. ``INTERNAL`` is the service reporting a bug (e.g. a
    ``Commit`` that hit damaged data); retrying could not help."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method} failed with {code.name}: {details}")


class QuotaAuthError(QuotaRequestError):
    """The service refused the caller's credentials (``UNAUTHENTICATED`` / ``PERMISSION_DENIED``)."""


class QuotaUsageError(QuotaError):
    """The client or a reservation guard was used wrongly: a second ``commit``, a ``commit``
    after ``release``, leaving a guard without committing under ``require_commit=True``,
    or a call on a closed client."""
