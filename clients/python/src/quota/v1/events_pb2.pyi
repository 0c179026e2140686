from quota.v1 import quota_pb2 as _quota_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    COMMITTED: _ClassVar[EventKind]
    RELEASED: _ClassVar[EventKind]
    EXPIRED: _ClassVar[EventKind]
    CORRECTED: _ClassVar[EventKind]
    DENIED: _ClassVar[EventKind]
    THRESHOLD_CROSSED: _ClassVar[EventKind]
    STOP_CHANGED: _ClassVar[EventKind]
    ADMIN_CHANGE: _ClassVar[EventKind]
    SHADOW_DIVERGED: _ClassVar[EventKind]

class Threshold(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THRESHOLD_UNSPECIFIED: _ClassVar[Threshold]
    THRESHOLD_WARN: _ClassVar[Threshold]
    THRESHOLD_BLOCK: _ClassVar[Threshold]
    THRESHOLD_CAP: _ClassVar[Threshold]
EVENT_KIND_UNSPECIFIED: EventKind
COMMITTED: EventKind
RELEASED: EventKind
EXPIRED: EventKind
CORRECTED: EventKind
DENIED: EventKind
THRESHOLD_CROSSED: EventKind
STOP_CHANGED: EventKind
ADMIN_CHANGE: EventKind
SHADOW_DIVERGED: EventKind
THRESHOLD_UNSPECIFIED: Threshold
THRESHOLD_WARN: Threshold
THRESHOLD_BLOCK: Threshold
THRESHOLD_CAP: Threshold

class Event(_message.Message):
    __slots__ = ("id", "kind", "at_ms", "subject", "tier", "feature", "provider", "model", "request_id", "reservation_id", "estimate", "actual", "cost_usd", "decision", "reason", "limit", "threshold", "policy_version", "actor", "detail")
    class EstimateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ActualEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: EventKind
    at_ms: int
    subject: str
    tier: str
    feature: str
    provider: str
    model: str
    request_id: str
    reservation_id: str
    estimate: _containers.ScalarMap[str, float]
    actual: _containers.ScalarMap[str, float]
    cost_usd: float
    decision: _quota_pb2.Decision
    reason: _quota_pb2.Reason
    limit: _quota_pb2.LimitStatus
    threshold: Threshold
    policy_version: str
    actor: str
    detail: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., at_ms: _Optional[int] = ..., subject: _Optional[str] = ..., tier: _Optional[str] = ..., feature: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., estimate: _Optional[_Mapping[str, float]] = ..., actual: _Optional[_Mapping[str, float]] = ..., cost_usd: _Optional[float] = ..., decision: _Optional[_Union[_quota_pb2.Decision, str]] = ..., reason: _Optional[_Union[_quota_pb2.Reason, str]] = ..., limit: _Optional[_Union[_quota_pb2.LimitStatus, _Mapping]] = ..., threshold: _Optional[_Union[Threshold, str]] = ..., policy_version: _Optional[str] = ..., actor: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("subject", "kinds", "since_ms", "until_ms", "page_size", "page_token")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject: str
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    since_ms: int
    until_ms: int
    page_size: int
    page_token: str
    def __init__(self, subject: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("subject", "kinds", "after_id")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    after_id: str
    def __init__(self, subject: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., after_id: _Optional[str] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ("webhook", "state", "limit")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    webhook: str
    state: str
    limit: int
    def __init__(self, webhook: _Optional[str] = ..., state: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("id", "name", "url", "kinds", "tiers", "pending", "delivered", "dead", "configured")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    url: str
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    pending: int
    delivered: int
    dead: int
    configured: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., url: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., tiers: _Optional[_Iterable[str]] = ..., pending: _Optional[int] = ..., delivered: _Optional[int] = ..., dead: _Optional[int] = ..., configured: _Optional[bool] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("webhook_id", "event_id", "state", "attempts", "next_attempt_at_ms", "last_status", "last_error", "created_at_ms", "updated_at_ms")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    event_id: str
    state: str
    attempts: int
    next_attempt_at_ms: int
    last_status: int
    last_error: str
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, webhook_id: _Optional[str] = ..., event_id: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., next_attempt_at_ms: _Optional[int] = ..., last_status: _Optional[int] = ..., last_error: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks", "deliveries")
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[Webhook]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    def __init__(self, webhooks: _Optional[_Iterable[_Union[Webhook, _Mapping]]] = ..., deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ...) -> None: ...
