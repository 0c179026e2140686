"""Emergency stops as the engine sees them: what a stop covers.

Where stops live and how replicas learn of them is :mod:`quota_service.stops` (the
watcher) and the store's business; this module only says which requests a stop denies.
Targets are compared on the same canonical form as the request's names
(:func:`quota_service.policy.validation.canonical_name` for features and providers;
subjects and tier names exactly).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quota_service.policy.validation import QuotaRequest


class StopScope(enum.Enum):
    GLOBAL = "GLOBAL"
    PROVIDER = "PROVIDER"
    FEATURE = "FEATURE"
    TIER = "TIER"
    SUBJECT = "SUBJECT"


@dataclass(frozen=True, slots=True)
class EmergencyStop:
    """An admin's stop: every request it covers is denied before any counter is read."""

    scope: StopScope
    target: str = ""
    reason: str = ""
    created_at: int = 0
    created_by: str = ""
    #: Unix seconds when it lifts itself (a rule's stop, ``on_cross``); 0: until resumed.
    expires_at: int = 0

    def in_force(self, now: float) -> bool:
        return self.expires_at == 0 or now < self.expires_at

    def covers(self, request: QuotaRequest, tier: str) -> bool:
        match self.scope:
            case StopScope.GLOBAL:
                return True
            case StopScope.PROVIDER:
                return request.provider == self.target
            case StopScope.FEATURE:
                return request.feature == self.target
            case StopScope.TIER:
                return tier == self.target
            case StopScope.SUBJECT:
                return request.subject == self.target

    def describe(self) -> str:
        where = "everything" if self.scope is StopScope.GLOBAL else f"{self.scope.value.lower()} {self.target!r}"
        until = ""
        if self.expires_at:
            until = time.strftime(" until %Y-%m-%d %H:%M:%S UTC", time.gmtime(self.expires_at))
        return f"emergency stop on {where}{until}" + (f": {self.reason}" if self.reason else "")


__all__ = ["EmergencyStop", "StopScope"]
