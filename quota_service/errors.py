"""The errors of quota-service, in one tree.

::

    QuotaServiceError
    ├── InvalidRequest          a malformed request: nothing was counted   -> INVALID_ARGUMENT
    ├── NotFound                an unknown reservation, tier, override     -> NOT_FOUND
    ├── PolicyError             a policy file that cannot be loaded        -> FAILED_PRECONDITION
    ├── CommitRefused           a Commit past commit_max_ratio x estimate   -> FAILED_PRECONDITION
    ├── StoreUnavailable        Redis unreachable or timing out (an outage) -> (decided by on_store_error)
    ├── StoreDataError          damaged data or a script error (a bug)      -> DENY STORE_ERROR / INTERNAL
    ├── OutboxFull              the usage outbox is full (ledger long down)  -> DENY STORE_ERROR / UNAVAILABLE
    ├── Unauthenticated         admin call without credentials             -> UNAUTHENTICATED
    └── PermissionDenied        admin call with wrong credentials          -> PERMISSION_DENIED

Third-party exceptions are translated into these at exactly two boundaries:
Redis errors in ``quota_service.store`` and YAML/pydantic errors in
``quota_service.policy.loader``. These are mapped to gRPC status codes in one
place, ``quota_service.server.status``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How many characters of a refused value an error message repeats.
ECHO_CHARS = 64


def shown(value: str) -> str:
    """A caller's value for an error message: quoted (``repr``, so control characters are
    escaped) and cut to :data:`ECHO_CHARS` characters, so a 20 KB name is never echoed whole."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return repr(value[:ECHO_CHARS]) + f"... ({len(value.encode('utf-8', 'replace'))} bytes)"


class QuotaServiceError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidRequest(QuotaServiceError):
    """The request is malformed (empty subject, negative or NaN amount, ...). Nothing was counted."""


class NotFound(QuotaServiceError):
    """The named reservation, tier or override does not exist."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file: where it is and what is wrong.

    ``line`` is 1-based; 0 when the problem is not tied to a line (a missing file).
    ``key`` is the dotted path of the offending key, e.g. ``tiers.free_alpha.limits.tokens.day``.
    """

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(QuotaServiceError):
    """A policy file or directory could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class CommitRefused(QuotaServiceError):
    """A Commit reported more than the policy's ``commit_max_ratio`` times its estimate of a
    metric: refused and recorded for review, nothing settled (the reservation stays as it was)."""


class StoreUnavailable(QuotaServiceError):
    """The counter store (Redis) did not answer correctly within the deadline."""


class StoreDataError(QuotaServiceError):
    """The store answered, but with something that cannot be right: a wrong-typed or corrupt
    key (WRONGTYPE), a Lua or cjson error, an unknown script status, out of memory. A bug or
    damage, not an outage: never answered by ``on_store_error``. ``key`` names the key
    involved when known."""

    def __init__(self, message: str, *, key: str = "") -> None:
        self.key = key
        super().__init__(message)


class OutboxFull(QuotaServiceError):
    """The outbox of usage records waiting for the ledger reached its cap (the ledger store
    has been unreachable for long): a new reservation is refused, whatever the tier's
    ``on_store_error`` says, so that no spend is ever unrecorded. Settlements still go on."""


class Unauthenticated(QuotaServiceError):
    """An admin call carried no credentials."""


class PermissionDenied(QuotaServiceError):
    """An admin call carried credentials that are not valid."""
