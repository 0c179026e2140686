from quota.v1 import events_pb2 as _events_pb2
from quota.v1 import quota_pb2 as _quota_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_SCOPE_UNSPECIFIED: _ClassVar[StopScope]
    GLOBAL: _ClassVar[StopScope]
    PROVIDER: _ClassVar[StopScope]
    FEATURE: _ClassVar[StopScope]
    TIER: _ClassVar[StopScope]
    SUBJECT: _ClassVar[StopScope]
STOP_SCOPE_UNSPECIFIED: StopScope
GLOBAL: StopScope
PROVIDER: StopScope
FEATURE: StopScope
TIER: StopScope
SUBJECT: StopScope

class Override(_message.Message):
    __slots__ = ("subject", "metric", "window", "max", "expires_at", "reason", "created_at", "created_by")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    metric: str
    window: str
    max: float
    expires_at: int
    reason: str
    created_at: int
    created_by: str
    def __init__(self, subject: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ..., max: _Optional[float] = ..., expires_at: _Optional[int] = ..., reason: _Optional[str] = ..., created_at: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("scope", "target", "reason", "created_at", "created_by", "expires_at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    scope: StopScope
    target: str
    reason: str
    created_at: int
    created_by: str
    expires_at: int
    def __init__(self, scope: _Optional[_Union[StopScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[int] = ..., created_by: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class SetTierRequest(_message.Message):
    __slots__ = ("subject", "tier", "reason")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subject: str
    tier: str
    reason: str
    def __init__(self, subject: _Optional[str] = ..., tier: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetTierResponse(_message.Message):
    __slots__ = ("subject", "tier", "previous_tier")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_FIELD_NUMBER: _ClassVar[int]
    subject: str
    tier: str
    previous_tier: str
    def __init__(self, subject: _Optional[str] = ..., tier: _Optional[str] = ..., previous_tier: _Optional[str] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class GetSubjectResponse(_message.Message):
    __slots__ = ("subject", "tier", "tier_assigned", "overrides", "stops", "limits")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TIER_ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    STOPS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    tier: str
    tier_assigned: bool
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    stops: _containers.RepeatedCompositeFieldContainer[Stop]
    limits: _containers.RepeatedCompositeFieldContainer[_quota_pb2.LimitStatus]
    def __init__(self, subject: _Optional[str] = ..., tier: _Optional[str] = ..., tier_assigned: _Optional[bool] = ..., overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ..., stops: _Optional[_Iterable[_Union[Stop, _Mapping]]] = ..., limits: _Optional[_Iterable[_Union[_quota_pb2.LimitStatus, _Mapping]]] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("subject", "metric", "window", "max", "ttl_seconds", "reason")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subject: str
    metric: str
    window: str
    max: float
    ttl_seconds: int
    reason: str
    def __init__(self, subject: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ..., max: _Optional[float] = ..., ttl_seconds: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SetOverrideResponse(_message.Message):
    __slots__ = ("override",)
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    override: Override
    def __init__(self, override: _Optional[_Union[Override, _Mapping]] = ...) -> None: ...

class DeleteOverrideRequest(_message.Message):
    __slots__ = ("subject", "metric", "window")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    subject: str
    metric: str
    window: str
    def __init__(self, subject: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ...) -> None: ...

class DeleteOverrideResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListOverridesRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class ListOverridesResponse(_message.Message):
    __slots__ = ("overrides",)
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    def __init__(self, overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ...) -> None: ...

class EmergencyStopRequest(_message.Message):
    __slots__ = ("scope", "target", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: StopScope
    target: str
    reason: str
    def __init__(self, scope: _Optional[_Union[StopScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EmergencyStopResponse(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: Stop
    def __init__(self, stop: _Optional[_Union[Stop, _Mapping]] = ...) -> None: ...

class ResumeStopRequest(_message.Message):
    __slots__ = ("scope", "target", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: StopScope
    target: str
    reason: str
    def __init__(self, scope: _Optional[_Union[StopScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResumeStopResponse(_message.Message):
    __slots__ = ("resumed",)
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    resumed: bool
    def __init__(self, resumed: _Optional[bool] = ...) -> None: ...

class ListStopsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStopsResponse(_message.Message):
    __slots__ = ("stops",)
    STOPS_FIELD_NUMBER: _ClassVar[int]
    stops: _containers.RepeatedCompositeFieldContainer[Stop]
    def __init__(self, stops: _Optional[_Iterable[_Union[Stop, _Mapping]]] = ...) -> None: ...

class ReloadPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("version", "loaded_at", "files", "last_error", "last_error_at", "tiers", "default_tier")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIER_FIELD_NUMBER: _ClassVar[int]
    version: str
    loaded_at: int
    files: _containers.RepeatedScalarFieldContainer[str]
    last_error: str
    last_error_at: int
    tiers: _containers.RepeatedScalarFieldContainer[str]
    default_tier: str
    def __init__(self, version: _Optional[str] = ..., loaded_at: _Optional[int] = ..., files: _Optional[_Iterable[str]] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[int] = ..., tiers: _Optional[_Iterable[str]] = ..., default_tier: _Optional[str] = ...) -> None: ...

class ReloadPoliciesResponse(_message.Message):
    __slots__ = ("status", "changed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    status: PolicyStatus
    changed: bool
    def __init__(self, status: _Optional[_Union[PolicyStatus, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: PolicyStatus
    def __init__(self, status: _Optional[_Union[PolicyStatus, _Mapping]] = ...) -> None: ...

class ResetUsageRequest(_message.Message):
    __slots__ = ("subject", "metric", "window", "reason")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subject: str
    metric: str
    window: str
    reason: str
    def __init__(self, subject: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResetUsageResponse(_message.Message):
    __slots__ = ("counters_reset",)
    COUNTERS_RESET_FIELD_NUMBER: _ClassVar[int]
    counters_reset: int
    def __init__(self, counters_reset: _Optional[int] = ...) -> None: ...

class TopUsageRequest(_message.Message):
    __slots__ = ("metric", "window", "n")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    metric: str
    window: str
    n: int
    def __init__(self, metric: _Optional[str] = ..., window: _Optional[str] = ..., n: _Optional[int] = ...) -> None: ...

class UsageEntry(_message.Message):
    __slots__ = ("subject", "used", "held")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    subject: str
    used: float
    held: float
    def __init__(self, subject: _Optional[str] = ..., used: _Optional[float] = ..., held: _Optional[float] = ...) -> None: ...

class TopUsageResponse(_message.Message):
    __slots__ = ("entries", "window_start")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[UsageEntry]
    window_start: int
    def __init__(self, entries: _Optional[_Iterable[_Union[UsageEntry, _Mapping]]] = ..., window_start: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "actor", "action", "target", "before", "after", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    at: int
    actor: str
    action: str
    target: str
    before: str
    after: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., at: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit", "subject")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    subject: str
    def __init__(self, limit: _Optional[int] = ..., subject: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
