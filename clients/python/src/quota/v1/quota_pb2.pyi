from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ALLOW: _ClassVar[Decision]
    WARN: _ClassVar[Decision]
    DENY: _ClassVar[Decision]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    WITHIN_LIMITS: _ClassVar[Reason]
    WARN_THRESHOLD: _ClassVar[Reason]
    BLOCK_THRESHOLD: _ClassVar[Reason]
    LIMIT_EXCEEDED: _ClassVar[Reason]
    HARD_STOP: _ClassVar[Reason]
    GLOBAL_LIMIT: _ClassVar[Reason]
    EMERGENCY_STOP: _ClassVar[Reason]
    FEATURE_NOT_ALLOWED: _ClassVar[Reason]
    UNPRICED_MODEL: _ClassVar[Reason]
    UNKNOWN_TIER: _ClassVar[Reason]
    STORE_UNAVAILABLE: _ClassVar[Reason]
    STORE_ERROR: _ClassVar[Reason]

class LimitKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_KIND_UNSPECIFIED: _ClassVar[LimitKind]
    LIMIT_KIND_TIER: _ClassVar[LimitKind]
    LIMIT_KIND_OVERRIDE: _ClassVar[LimitKind]
    LIMIT_KIND_HARD_STOP: _ClassVar[LimitKind]
    LIMIT_KIND_GLOBAL: _ClassVar[LimitKind]
DECISION_UNSPECIFIED: Decision
ALLOW: Decision
WARN: Decision
DENY: Decision
REASON_UNSPECIFIED: Reason
WITHIN_LIMITS: Reason
WARN_THRESHOLD: Reason
BLOCK_THRESHOLD: Reason
LIMIT_EXCEEDED: Reason
HARD_STOP: Reason
GLOBAL_LIMIT: Reason
EMERGENCY_STOP: Reason
FEATURE_NOT_ALLOWED: Reason
UNPRICED_MODEL: Reason
UNKNOWN_TIER: Reason
STORE_UNAVAILABLE: Reason
STORE_ERROR: Reason
LIMIT_KIND_UNSPECIFIED: LimitKind
LIMIT_KIND_TIER: LimitKind
LIMIT_KIND_OVERRIDE: LimitKind
LIMIT_KIND_HARD_STOP: LimitKind
LIMIT_KIND_GLOBAL: LimitKind

class LimitStatus(_message.Message):
    __slots__ = ("metric", "window", "used", "held", "max", "remaining", "ratio", "resets_at", "kind", "decision", "warn_at", "block_at")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    WARN_AT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    window: str
    used: float
    held: float
    max: float
    remaining: float
    ratio: float
    resets_at: int
    kind: LimitKind
    decision: Decision
    warn_at: float
    block_at: float
    def __init__(self, metric: _Optional[str] = ..., window: _Optional[str] = ..., used: _Optional[float] = ..., held: _Optional[float] = ..., max: _Optional[float] = ..., remaining: _Optional[float] = ..., ratio: _Optional[float] = ..., resets_at: _Optional[int] = ..., kind: _Optional[_Union[LimitKind, str]] = ..., decision: _Optional[_Union[Decision, str]] = ..., warn_at: _Optional[float] = ..., block_at: _Optional[float] = ...) -> None: ...

class CheckAndReserveRequest(_message.Message):
    __slots__ = ("subject", "feature", "provider", "model", "usage", "request_id", "dry_run", "reservation_ttl_seconds")
    class UsageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    feature: str
    provider: str
    model: str
    usage: _containers.ScalarMap[str, float]
    request_id: str
    dry_run: bool
    reservation_ttl_seconds: int
    def __init__(self, subject: _Optional[str] = ..., feature: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., usage: _Optional[_Mapping[str, float]] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ..., reservation_ttl_seconds: _Optional[int] = ...) -> None: ...

class CheckAndReserveResponse(_message.Message):
    __slots__ = ("decision", "reason", "message", "reservation_id", "tier", "limits", "policy_version", "retry_after_seconds", "limit", "reservation_expires_at", "replayed")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reason: Reason
    message: str
    reservation_id: str
    tier: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitStatus]
    policy_version: str
    retry_after_seconds: int
    limit: LimitStatus
    reservation_expires_at: int
    replayed: bool
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[_Union[Reason, str]] = ..., message: _Optional[str] = ..., reservation_id: _Optional[str] = ..., tier: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[LimitStatus, _Mapping]]] = ..., policy_version: _Optional[str] = ..., retry_after_seconds: _Optional[int] = ..., limit: _Optional[_Union[LimitStatus, _Mapping]] = ..., reservation_expires_at: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "usage")
    class UsageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    usage: _containers.ScalarMap[str, float]
    def __init__(self, reservation_id: _Optional[str] = ..., usage: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SettledWindow(_message.Message):
    __slots__ = ("metric", "window", "window_start", "resets_at", "current", "lost", "amount", "company_wide")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    COMPANY_WIDE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    window: str
    window_start: int
    resets_at: int
    current: bool
    lost: bool
    amount: float
    company_wide: bool
    def __init__(self, metric: _Optional[str] = ..., window: _Optional[str] = ..., window_start: _Optional[int] = ..., resets_at: _Optional[int] = ..., current: _Optional[bool] = ..., lost: _Optional[bool] = ..., amount: _Optional[float] = ..., company_wide: _Optional[bool] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("limits", "already_settled", "settled")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_SETTLED_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[LimitStatus]
    already_settled: bool
    settled: _containers.RepeatedCompositeFieldContainer[SettledWindow]
    def __init__(self, limits: _Optional[_Iterable[_Union[LimitStatus, _Mapping]]] = ..., already_settled: _Optional[bool] = ..., settled: _Optional[_Iterable[_Union[SettledWindow, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("already_settled",)
    ALREADY_SETTLED_FIELD_NUMBER: _ClassVar[int]
    already_settled: bool
    def __init__(self, already_settled: _Optional[bool] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("tier", "limits", "policy_version")
    TIER_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    tier: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitStatus]
    policy_version: str
    def __init__(self, tier: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[LimitStatus, _Mapping]]] = ..., policy_version: _Optional[str] = ...) -> None: ...
