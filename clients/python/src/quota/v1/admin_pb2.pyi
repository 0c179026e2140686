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
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("version", "loaded_at", "files", "last_error", "last_error_at", "tiers", "default_tier", "last_change")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIER_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    version: str
    loaded_at: int
    files: _containers.RepeatedScalarFieldContainer[str]
    last_error: str
    last_error_at: int
    tiers: _containers.RepeatedScalarFieldContainer[str]
    default_tier: str
    last_change: PolicyChange
    def __init__(self, version: _Optional[str] = ..., loaded_at: _Optional[int] = ..., files: _Optional[_Iterable[str]] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[int] = ..., tiers: _Optional[_Iterable[str]] = ..., default_tier: _Optional[str] = ..., last_change: _Optional[_Union[PolicyChange, _Mapping]] = ...) -> None: ...

class ReloadPoliciesResponse(_message.Message):
    __slots__ = ("status", "changed", "diff", "at_risk", "subjects_checked")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    status: PolicyStatus
    changed: bool
    diff: PolicyDiff
    at_risk: _containers.RepeatedCompositeFieldContainer[SubjectAtRisk]
    subjects_checked: int
    def __init__(self, status: _Optional[_Union[PolicyStatus, _Mapping]] = ..., changed: _Optional[bool] = ..., diff: _Optional[_Union[PolicyDiff, _Mapping]] = ..., at_risk: _Optional[_Iterable[_Union[SubjectAtRisk, _Mapping]]] = ..., subjects_checked: _Optional[int] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyStatusResponse(_message.Message):
    __slots__ = ("status", "shadow")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    status: PolicyStatus
    shadow: ShadowStatus
    def __init__(self, status: _Optional[_Union[PolicyStatus, _Mapping]] = ..., shadow: _Optional[_Union[ShadowStatus, _Mapping]] = ...) -> None: ...

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

class GetCompanyUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCompanyUsageResponse(_message.Message):
    __slots__ = ("limits", "policy_version")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[_quota_pb2.LimitStatus]
    policy_version: str
    def __init__(self, limits: _Optional[_Iterable[_Union[_quota_pb2.LimitStatus, _Mapping]]] = ..., policy_version: _Optional[str] = ...) -> None: ...

class LimitRule(_message.Message):
    __slots__ = ("metric", "window", "max", "kind", "warn_at", "block_at")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WARN_AT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    window: str
    max: float
    kind: _quota_pb2.LimitKind
    warn_at: float
    block_at: float
    def __init__(self, metric: _Optional[str] = ..., window: _Optional[str] = ..., max: _Optional[float] = ..., kind: _Optional[_Union[_quota_pb2.LimitKind, str]] = ..., warn_at: _Optional[float] = ..., block_at: _Optional[float] = ...) -> None: ...

class TierRules(_message.Message):
    __slots__ = ("name", "display_name", "features", "limits", "hard_stops", "on_store_error", "reservation_ttl_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    HARD_STOPS_FIELD_NUMBER: _ClassVar[int]
    ON_STORE_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    features: _containers.RepeatedScalarFieldContainer[str]
    limits: _containers.RepeatedCompositeFieldContainer[LimitRule]
    hard_stops: _containers.RepeatedCompositeFieldContainer[LimitRule]
    on_store_error: str
    reservation_ttl_seconds: int
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., limits: _Optional[_Iterable[_Union[LimitRule, _Mapping]]] = ..., hard_stops: _Optional[_Iterable[_Union[LimitRule, _Mapping]]] = ..., on_store_error: _Optional[str] = ..., reservation_ttl_seconds: _Optional[int] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("pattern", "metric", "usd_per_unit")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    USD_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    metric: str
    usd_per_unit: str
    def __init__(self, pattern: _Optional[str] = ..., metric: _Optional[str] = ..., usd_per_unit: _Optional[str] = ...) -> None: ...

class DescribePolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribePolicyResponse(_message.Message):
    __slots__ = ("status", "timezone", "unpriced", "tiers", "global_limits", "prices")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_LIMITS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    status: PolicyStatus
    timezone: str
    unpriced: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierRules]
    global_limits: _containers.RepeatedCompositeFieldContainer[LimitRule]
    prices: _containers.RepeatedCompositeFieldContainer[Price]
    def __init__(self, status: _Optional[_Union[PolicyStatus, _Mapping]] = ..., timezone: _Optional[str] = ..., unpriced: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierRules, _Mapping]]] = ..., global_limits: _Optional[_Iterable[_Union[LimitRule, _Mapping]]] = ..., prices: _Optional[_Iterable[_Union[Price, _Mapping]]] = ...) -> None: ...

class GetActivityRequest(_message.Message):
    __slots__ = ("minutes",)
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    minutes: int
    def __init__(self, minutes: _Optional[int] = ...) -> None: ...

class ActivityBucket(_message.Message):
    __slots__ = ("start", "allow", "warn", "deny", "cost_usd")
    START_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    WARN_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    start: int
    allow: int
    warn: int
    deny: int
    cost_usd: float
    def __init__(self, start: _Optional[int] = ..., allow: _Optional[int] = ..., warn: _Optional[int] = ..., deny: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class GetActivityResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[ActivityBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[ActivityBucket, _Mapping]]] = ...) -> None: ...

class GetAnalyticsRequest(_message.Message):
    __slots__ = ("period",)
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    period: str
    def __init__(self, period: _Optional[str] = ...) -> None: ...

class SpendGroup(_message.Message):
    __slots__ = ("key", "cost_usd", "tokens", "images", "records")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    cost_usd: float
    tokens: float
    images: float
    records: int
    def __init__(self, key: _Optional[str] = ..., cost_usd: _Optional[float] = ..., tokens: _Optional[float] = ..., images: _Optional[float] = ..., records: _Optional[int] = ...) -> None: ...

class DailyUsage(_message.Message):
    __slots__ = ("tier", "metric", "subject_days", "p50", "p95", "max", "cap")
    TIER_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DAYS_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    tier: str
    metric: str
    subject_days: int
    p50: float
    p95: float
    max: float
    cap: float
    def __init__(self, tier: _Optional[str] = ..., metric: _Optional[str] = ..., subject_days: _Optional[int] = ..., p50: _Optional[float] = ..., p95: _Optional[float] = ..., max: _Optional[float] = ..., cap: _Optional[float] = ...) -> None: ...

class GetAnalyticsResponse(_message.Message):
    __slots__ = ("period", "since", "until", "cost_usd", "records", "by_tier", "by_feature", "by_provider", "by_model", "daily")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BY_TIER_FIELD_NUMBER: _ClassVar[int]
    BY_FEATURE_FIELD_NUMBER: _ClassVar[int]
    BY_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    DAILY_FIELD_NUMBER: _ClassVar[int]
    period: str
    since: int
    until: int
    cost_usd: float
    records: int
    by_tier: _containers.RepeatedCompositeFieldContainer[SpendGroup]
    by_feature: _containers.RepeatedCompositeFieldContainer[SpendGroup]
    by_provider: _containers.RepeatedCompositeFieldContainer[SpendGroup]
    by_model: _containers.RepeatedCompositeFieldContainer[SpendGroup]
    daily: _containers.RepeatedCompositeFieldContainer[DailyUsage]
    def __init__(self, period: _Optional[str] = ..., since: _Optional[int] = ..., until: _Optional[int] = ..., cost_usd: _Optional[float] = ..., records: _Optional[int] = ..., by_tier: _Optional[_Iterable[_Union[SpendGroup, _Mapping]]] = ..., by_feature: _Optional[_Iterable[_Union[SpendGroup, _Mapping]]] = ..., by_provider: _Optional[_Iterable[_Union[SpendGroup, _Mapping]]] = ..., by_model: _Optional[_Iterable[_Union[SpendGroup, _Mapping]]] = ..., daily: _Optional[_Iterable[_Union[DailyUsage, _Mapping]]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("tier", "percentile", "days", "promote_min_days", "demote_below")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_MIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    DEMOTE_BELOW_FIELD_NUMBER: _ClassVar[int]
    tier: str
    percentile: float
    days: int
    promote_min_days: int
    demote_below: float
    def __init__(self, tier: _Optional[str] = ..., percentile: _Optional[float] = ..., days: _Optional[int] = ..., promote_min_days: _Optional[int] = ..., demote_below: _Optional[float] = ...) -> None: ...

class CapSuggestion(_message.Message):
    __slots__ = ("tier", "metric", "window", "active_subjects", "subject_days", "p50", "at_percentile", "max", "current_cap", "suggested_cap", "change", "days_over_suggested")
    TIER_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DAYS_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    AT_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAP_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_CAP_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    DAYS_OVER_SUGGESTED_FIELD_NUMBER: _ClassVar[int]
    tier: str
    metric: str
    window: str
    active_subjects: int
    subject_days: int
    p50: float
    at_percentile: float
    max: float
    current_cap: float
    suggested_cap: float
    change: float
    days_over_suggested: float
    def __init__(self, tier: _Optional[str] = ..., metric: _Optional[str] = ..., window: _Optional[str] = ..., active_subjects: _Optional[int] = ..., subject_days: _Optional[int] = ..., p50: _Optional[float] = ..., at_percentile: _Optional[float] = ..., max: _Optional[float] = ..., current_cap: _Optional[float] = ..., suggested_cap: _Optional[float] = ..., change: _Optional[float] = ..., days_over_suggested: _Optional[float] = ...) -> None: ...

class SubjectSuggestion(_message.Message):
    __slots__ = ("subject", "tier", "suggested_tier", "days", "active_days", "denied", "peak_ratio", "peak_metric", "rule")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_TIER_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    PEAK_RATIO_FIELD_NUMBER: _ClassVar[int]
    PEAK_METRIC_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    tier: str
    suggested_tier: str
    days: int
    active_days: int
    denied: int
    peak_ratio: float
    peak_metric: str
    rule: str
    def __init__(self, subject: _Optional[str] = ..., tier: _Optional[str] = ..., suggested_tier: _Optional[str] = ..., days: _Optional[int] = ..., active_days: _Optional[int] = ..., denied: _Optional[int] = ..., peak_ratio: _Optional[float] = ..., peak_metric: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("percentile", "days", "since", "until", "promote_min_days", "demote_below", "caps", "promotions", "demotions")
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_MIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    DEMOTE_BELOW_FIELD_NUMBER: _ClassVar[int]
    CAPS_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    DEMOTIONS_FIELD_NUMBER: _ClassVar[int]
    percentile: float
    days: int
    since: int
    until: int
    promote_min_days: int
    demote_below: float
    caps: _containers.RepeatedCompositeFieldContainer[CapSuggestion]
    promotions: _containers.RepeatedCompositeFieldContainer[SubjectSuggestion]
    demotions: _containers.RepeatedCompositeFieldContainer[SubjectSuggestion]
    def __init__(self, percentile: _Optional[float] = ..., days: _Optional[int] = ..., since: _Optional[int] = ..., until: _Optional[int] = ..., promote_min_days: _Optional[int] = ..., demote_below: _Optional[float] = ..., caps: _Optional[_Iterable[_Union[CapSuggestion, _Mapping]]] = ..., promotions: _Optional[_Iterable[_Union[SubjectSuggestion, _Mapping]]] = ..., demotions: _Optional[_Iterable[_Union[SubjectSuggestion, _Mapping]]] = ...) -> None: ...

class GetEstimatesRequest(_message.Message):
    __slots__ = ("tier", "days")
    TIER_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    days: int
    def __init__(self, tier: _Optional[str] = ..., days: _Optional[int] = ...) -> None: ...

class EstimateRatio(_message.Message):
    __slots__ = ("tier", "feature", "provider", "model", "metric", "count", "p50", "p95", "mean", "over")
    TIER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    OVER_FIELD_NUMBER: _ClassVar[int]
    tier: str
    feature: str
    provider: str
    model: str
    metric: str
    count: int
    p50: float
    p95: float
    mean: float
    over: int
    def __init__(self, tier: _Optional[str] = ..., feature: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., metric: _Optional[str] = ..., count: _Optional[int] = ..., p50: _Optional[float] = ..., p95: _Optional[float] = ..., mean: _Optional[float] = ..., over: _Optional[int] = ...) -> None: ...

class GetEstimatesResponse(_message.Message):
    __slots__ = ("days", "since", "until", "ratios")
    DAYS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    RATIOS_FIELD_NUMBER: _ClassVar[int]
    days: int
    since: int
    until: int
    ratios: _containers.RepeatedCompositeFieldContainer[EstimateRatio]
    def __init__(self, days: _Optional[int] = ..., since: _Optional[int] = ..., until: _Optional[int] = ..., ratios: _Optional[_Iterable[_Union[EstimateRatio, _Mapping]]] = ...) -> None: ...

class PolicyChangeEntry(_message.Message):
    __slots__ = ("tier", "category", "key", "change", "before", "after", "shown_before", "shown_after")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    SHOWN_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SHOWN_AFTER_FIELD_NUMBER: _ClassVar[int]
    tier: str
    category: str
    key: str
    change: str
    before: str
    after: str
    shown_before: str
    shown_after: str
    def __init__(self, tier: _Optional[str] = ..., category: _Optional[str] = ..., key: _Optional[str] = ..., change: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ..., shown_before: _Optional[str] = ..., shown_after: _Optional[str] = ...) -> None: ...

class PolicyDiff(_message.Message):
    __slots__ = ("old_version", "new_version", "changes", "tiers_added", "tiers_removed", "summary")
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    TIERS_ADDED_FIELD_NUMBER: _ClassVar[int]
    TIERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    old_version: str
    new_version: str
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChangeEntry]
    tiers_added: _containers.RepeatedScalarFieldContainer[str]
    tiers_removed: _containers.RepeatedScalarFieldContainer[str]
    summary: str
    def __init__(self, old_version: _Optional[str] = ..., new_version: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[PolicyChangeEntry, _Mapping]]] = ..., tiers_added: _Optional[_Iterable[str]] = ..., tiers_removed: _Optional[_Iterable[str]] = ..., summary: _Optional[str] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("diff", "at")
    DIFF_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    diff: PolicyDiff
    at: int
    def __init__(self, diff: _Optional[_Union[PolicyDiff, _Mapping]] = ..., at: _Optional[int] = ...) -> None: ...

class SubjectAtRisk(_message.Message):
    __slots__ = ("subject", "tier", "decision", "reason", "message", "limit", "live_decision")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIVE_DECISION_FIELD_NUMBER: _ClassVar[int]
    subject: str
    tier: str
    decision: _quota_pb2.Decision
    reason: _quota_pb2.Reason
    message: str
    limit: _quota_pb2.LimitStatus
    live_decision: _quota_pb2.Decision
    def __init__(self, subject: _Optional[str] = ..., tier: _Optional[str] = ..., decision: _Optional[_Union[_quota_pb2.Decision, str]] = ..., reason: _Optional[_Union[_quota_pb2.Reason, str]] = ..., message: _Optional[str] = ..., limit: _Optional[_Union[_quota_pb2.LimitStatus, _Mapping]] = ..., live_decision: _Optional[_Union[_quota_pb2.Decision, str]] = ...) -> None: ...

class ShadowDivergenceCount(_message.Message):
    __slots__ = ("tier", "reason", "count")
    TIER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tier: str
    reason: str
    count: int
    def __init__(self, tier: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ShadowStatus(_message.Message):
    __slots__ = ("version", "files", "loaded_at", "last_error", "decided", "divergences", "sampled", "dropped")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    version: str
    files: _containers.RepeatedScalarFieldContainer[str]
    loaded_at: int
    last_error: str
    decided: int
    divergences: _containers.RepeatedCompositeFieldContainer[ShadowDivergenceCount]
    sampled: int
    dropped: int
    def __init__(self, version: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., loaded_at: _Optional[int] = ..., last_error: _Optional[str] = ..., decided: _Optional[int] = ..., divergences: _Optional[_Iterable[_Union[ShadowDivergenceCount, _Mapping]]] = ..., sampled: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...
