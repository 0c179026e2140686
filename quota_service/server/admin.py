"""AdminService: thin adapters over the admin core (:mod:`quota_service.admin`).

Each RPC converts the request, calls :class:`~quota_service.admin.Admin` with the caller's
credential fingerprint (:func:`~quota_service.server.auth.actor_of`, for the audit log) and
converts the answer; errors map to status codes in one place (:func:`grpc_errors`).
Amounts leave in the metric's own measure (USD for ``cost_usd``), times in unix seconds
(audit entries: unix milliseconds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import grpc

from quota.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from quota_service.admin import Admin, AuditRecord, UsageRow
from quota_service.errors import InvalidRequest, NotFound
from quota_service.ledger.convert import event_to_proto
from quota_service.ledger.errors import LedgerOff
from quota_service.ledger.events import EventKind
from quota_service.ledger.feed import EventFeed
from quota_service.ledger.schema import DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING
from quota_service.ledger.webhooks import Delivery, WebhookDeliverer, WebhookEndpoint
from quota_service.lifecycle.shadow import Shadow
from quota_service.policy.domain import OverrideRecord
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.units import from_units
from quota_service.policy.validation import validate_subject
from quota_service.quotas import Quotas
from quota_service.server import convert, dashboard_reads, lifecycle_reads
from quota_service.server.auth import actor_of
from quota_service.server.status import grpc_errors, grpc_stream_errors

Context = grpc.aio.ServicerContext[Any, Any]

SCOPE_TO_WIRE: dict[StopScope, admin_pb2.StopScope] = {
    StopScope.GLOBAL: admin_pb2.GLOBAL,
    StopScope.PROVIDER: admin_pb2.PROVIDER,
    StopScope.FEATURE: admin_pb2.FEATURE,
    StopScope.TIER: admin_pb2.TIER,
    StopScope.SUBJECT: admin_pb2.SUBJECT,
}
SCOPE_FROM_WIRE: dict[int, StopScope] = {int(wire): scope for scope, wire in SCOPE_TO_WIRE.items()}


#: Initial metadata of a WatchEvents stream once its starting point is fixed.
WATCH_STARTED_HEADER = "quota-watch-started"


def event_kinds(values: Iterable[int]) -> tuple[EventKind, ...]:
    """Wire event kinds; an unknown number (EVENT_KIND_UNSPECIFIED too) is :class:`InvalidRequest`."""
    kinds = []
    for value in values:
        try:
            kind = EventKind(int(value))
        except ValueError:
            raise InvalidRequest(f"unknown event kind {int(value)}") from None
        kinds.append(kind)
    return tuple(kinds)


def stop_scope(value: int) -> StopScope | None:
    """A wire scope; ``None`` for STOP_SCOPE_UNSPECIFIED or an unknown number (the core refuses it)."""
    return SCOPE_FROM_WIRE.get(int(value))


def override_message(record: OverrideRecord) -> admin_pb2.Override:
    return admin_pb2.Override(
        subject=record.subject,
        metric=record.metric,
        window=record.window.value,
        max=from_units(record.metric, record.max_units),
        expires_at=record.expires_at,
        reason=record.reason,
        created_at=record.created_at,
        created_by=record.created_by,
    )


def stop_message(stop: EmergencyStop) -> admin_pb2.Stop:
    return admin_pb2.Stop(
        scope=SCOPE_TO_WIRE[stop.scope],
        target=stop.target,
        reason=stop.reason,
        created_at=stop.created_at,
        created_by=stop.created_by,
        expires_at=stop.expires_at,
    )


def audit_message(record: AuditRecord) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        id=record.entry_id,
        at=record.at_ms,
        actor=record.actor,
        action=record.action,
        target=record.target,
        before=record.before,
        after=record.after,
        reason=record.reason,
    )


def usage_message(metric: str, row: UsageRow) -> admin_pb2.UsageEntry:
    return admin_pb2.UsageEntry(
        subject=row.subject, used=from_units(metric, row.used), held=from_units(metric, row.held)
    )


def _actor(context: Context) -> str:
    """The caller's credential fingerprint for the audit log (never the credential)."""
    metadata = context.invocation_metadata() or ()
    return actor_of(tuple((str(key), value) for key, value in metadata))


def default_admin(quotas: Quotas) -> Admin:
    """An :class:`Admin` over the Redis store behind ``quotas`` (what ``serve`` builds by hand)."""
    from quota_service.store.admin_store import RedisAdminStore
    from quota_service.store.redis_store import RedisCounterStore

    if not isinstance(quotas.store, RedisCounterStore):
        raise TypeError("AdminServicer needs an Admin, or Quotas over a RedisCounterStore")
    refresher = quotas.stops if hasattr(quotas.stops, "refresh") else None
    return Admin(quotas=quotas, store=RedisAdminStore(counters=quotas.store), stops=refresher)  # type: ignore[arg-type]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every AdminService RPC. ``admin``: the core; without it, one is built over
    ``quotas``' Redis store (:func:`default_admin`)."""

    def __init__(
        self,
        *,
        admin: Admin | None = None,
        quotas: Quotas | None = None,
        feed: EventFeed | None = None,
        webhooks: WebhookDeliverer | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        if admin is None:
            if quotas is None:
                raise TypeError("AdminServicer needs admin= or quotas=")
            admin = default_admin(quotas)
        self._admin = admin
        self._feed = feed
        self._webhooks = webhooks
        self._shadow = shadow
        self._analytics = dashboard_reads.AnalyticsCache()

    def _events(self) -> EventFeed:
        if self._feed is None:
            raise LedgerOff("the ledger is off (serve --ledger-url none): there are no events to read")
        return self._feed

    # -- tiers --------------------------------------------------------------------------------

    @grpc_errors
    async def SetTier(self, request: admin_pb2.SetTierRequest, context: Context) -> admin_pb2.SetTierResponse:
        change = await self._admin.set_tier(request.subject, request.tier, actor=_actor(context), reason=request.reason)
        return admin_pb2.SetTierResponse(subject=change.subject, tier=change.tier, previous_tier=change.previous_tier)

    @grpc_errors
    async def GetSubject(self, request: admin_pb2.GetSubjectRequest, context: Context) -> admin_pb2.GetSubjectResponse:
        view = await self._admin.get_subject(request.subject)
        return admin_pb2.GetSubjectResponse(
            subject=view.subject,
            tier=view.tier,
            tier_assigned=view.tier_assigned,
            overrides=[override_message(o) for o in view.overrides],
            stops=[stop_message(s) for s in view.stops],
            limits=[convert.limit_status(r) for r in view.limits],
        )

    # -- overrides ------------------------------------------------------------------------------

    @grpc_errors
    async def SetOverride(
        self, request: admin_pb2.SetOverrideRequest, context: Context
    ) -> admin_pb2.SetOverrideResponse:
        record = await self._admin.set_override(
            request.subject,
            request.metric,
            request.window,
            request.max,
            request.ttl_seconds,
            actor=_actor(context),
            reason=request.reason,
        )
        return admin_pb2.SetOverrideResponse(override=override_message(record))

    @grpc_errors
    async def DeleteOverride(
        self, request: admin_pb2.DeleteOverrideRequest, context: Context
    ) -> admin_pb2.DeleteOverrideResponse:
        deleted = await self._admin.delete_override(
            request.subject, request.metric, request.window, actor=_actor(context)
        )
        return admin_pb2.DeleteOverrideResponse(deleted=deleted)

    @grpc_errors
    async def ListOverrides(
        self, request: admin_pb2.ListOverridesRequest, context: Context
    ) -> admin_pb2.ListOverridesResponse:
        records = await self._admin.list_overrides(request.subject)
        return admin_pb2.ListOverridesResponse(overrides=[override_message(o) for o in records])

    # -- emergency stops ------------------------------------------------------------------------

    @grpc_errors
    async def EmergencyStop(
        self, request: admin_pb2.EmergencyStopRequest, context: Context
    ) -> admin_pb2.EmergencyStopResponse:
        stop = await self._admin.emergency_stop(
            stop_scope(request.scope),
            request.target,
            actor=_actor(context),
            reason=request.reason,
        )
        return admin_pb2.EmergencyStopResponse(stop=stop_message(stop))

    @grpc_errors
    async def ResumeStop(self, request: admin_pb2.ResumeStopRequest, context: Context) -> admin_pb2.ResumeStopResponse:
        resumed = await self._admin.resume_stop(
            stop_scope(request.scope),
            request.target,
            actor=_actor(context),
            reason=request.reason,
        )
        return admin_pb2.ResumeStopResponse(resumed=resumed)

    @grpc_errors
    async def ListStops(self, request: admin_pb2.ListStopsRequest, context: Context) -> admin_pb2.ListStopsResponse:
        return admin_pb2.ListStopsResponse(stops=[stop_message(s) for s in await self._admin.list_stops()])

    # -- policies ---------------------------------------------------------------------------------

    @grpc_errors
    async def GetPolicyStatus(
        self, request: admin_pb2.GetPolicyStatusRequest, context: Context
    ) -> admin_pb2.GetPolicyStatusResponse:
        reply = admin_pb2.GetPolicyStatusResponse(status=convert.policy_status(self._admin.policy_status()))
        if self._shadow is not None:
            reply.shadow.CopyFrom(convert.shadow_status(self._shadow.status(), self._shadow.policy.status()))
        return reply

    @grpc_errors
    async def ReloadPolicies(
        self, request: admin_pb2.ReloadPoliciesRequest, context: Context
    ) -> admin_pb2.ReloadPoliciesResponse:
        # A bad file raises PolicyError -> FAILED_PRECONDITION; the running policy stays.
        if request.dry_run:
            preview = await self._admin.preview_reload()
            return admin_pb2.ReloadPoliciesResponse(
                status=convert.policy_status(preview.status),
                changed=preview.diff.changed,
                diff=convert.policy_diff(preview.diff),
                at_risk=[convert.at_risk(r) for r in preview.at_risk],
                subjects_checked=preview.subjects_checked,
            )
        changed, status = await self._admin.reload_policies(actor=_actor(context))
        reply = admin_pb2.ReloadPoliciesResponse(status=convert.policy_status(status), changed=changed)
        if changed and status.last_change is not None:
            reply.diff.CopyFrom(convert.policy_diff(status.last_change.diff))
        return reply

    # -- usage --------------------------------------------------------------------------------------

    @grpc_errors
    async def ResetUsage(self, request: admin_pb2.ResetUsageRequest, context: Context) -> admin_pb2.ResetUsageResponse:
        count = await self._admin.reset_usage(
            request.subject,
            request.metric,
            request.window,
            actor=_actor(context),
            reason=request.reason,
        )
        return admin_pb2.ResetUsageResponse(counters_reset=count)

    @grpc_errors
    async def TopUsage(self, request: admin_pb2.TopUsageRequest, context: Context) -> admin_pb2.TopUsageResponse:
        top = await self._admin.top_usage(request.metric, request.window, request.n)
        return admin_pb2.TopUsageResponse(
            entries=[usage_message(top.metric, row) for row in top.entries], window_start=top.window_start
        )

    # -- audit -----------------------------------------------------------------------------------------

    @grpc_errors
    async def ListAudit(self, request: admin_pb2.ListAuditRequest, context: Context) -> admin_pb2.ListAuditResponse:
        records = await self._admin.list_audit(limit=request.limit, subject=request.subject)
        return admin_pb2.ListAuditResponse(entries=[audit_message(r) for r in records])

    # -- the event feed -------------------------------------------------------------------------

    @grpc_errors
    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Context
    ) -> events_pb2.ListEventsResponse:
        if request.subject:
            validate_subject(request.subject)
        page, next_token = await self._events().list(
            subject=request.subject,
            kinds=event_kinds(request.kinds),
            since_ms=request.since_ms,
            until_ms=request.until_ms,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return events_pb2.ListEventsResponse(events=[event_to_proto(e) for e in page], next_page_token=next_token)

    @grpc_stream_errors
    async def WatchEvents(
        self, request: events_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[events_pb2.Event]:
        if request.subject:
            validate_subject(request.subject)

        async def started() -> None:
            # Initial metadata says the tail is live: whatever is stored from now on arrives.
            await context.send_initial_metadata(((WATCH_STARTED_HEADER, "1"),))

        async for event in self._events().watch(
            subject=request.subject, kinds=event_kinds(request.kinds), after_id=request.after_id, on_start=started
        ):
            yield event_to_proto(event)

    # -- webhooks ---------------------------------------------------------------------------------

    @grpc_errors
    async def ListWebhooks(
        self, request: events_pb2.ListWebhooksRequest, context: Context
    ) -> events_pb2.ListWebhooksResponse:
        if self._webhooks is None:
            raise LedgerOff("the ledger is off (serve --ledger-url none): there are no webhook deliveries")
        if request.state and request.state not in DELIVERY_STATES:
            raise InvalidRequest(f"state {request.state[:32]!r} is not one of {', '.join(DELIVERY_STATES)}")
        if request.limit > MAX_DELIVERIES_LISTED:
            raise InvalidRequest(f"limit must be at most {MAX_DELIVERIES_LISTED} (0: {DEFAULT_DELIVERIES_LISTED})")
        deliverer = self._webhooks
        counts = await deliverer.counts()
        configured = {e.id: e for e in deliverer.endpoints}
        known = list(configured) + sorted({e for e, _ in counts} - set(configured))
        chosen = [
            i for i in known if not request.webhook or request.webhook in (i, getattr(configured.get(i), "name", ""))
        ]
        if request.webhook and not chosen:
            raise NotFound(f"no webhook named {request.webhook[:80]!r}")
        deliveries: list[Delivery] = []
        limit = request.limit or DEFAULT_DELIVERIES_LISTED
        if request.webhook:
            deliveries = await deliverer.deliveries(
                endpoint_id=chosen[0], state=request.state, limit=limit, newest_first=True
            )
        else:
            deliveries = await deliverer.deliveries(state=request.state, limit=limit, newest_first=True)
        return events_pb2.ListWebhooksResponse(
            webhooks=[webhook_message(i, configured.get(i), counts) for i in chosen],
            deliveries=[delivery_message(d) for d in deliveries],
        )

    # -- dashboard reads (quota_service.server.dashboard_reads) ------------------------------

    @grpc_errors
    async def GetCompanyUsage(
        self, request: admin_pb2.GetCompanyUsageRequest, context: Context
    ) -> admin_pb2.GetCompanyUsageResponse:
        return await dashboard_reads.company_usage(self._admin.quotas)

    @grpc_errors
    async def DescribePolicy(
        self, request: admin_pb2.DescribePolicyRequest, context: Context
    ) -> admin_pb2.DescribePolicyResponse:
        status = convert.policy_status(self._admin.policy_status())
        return dashboard_reads.describe_policy(self._admin.policy, status)

    @grpc_errors
    async def GetActivity(
        self, request: admin_pb2.GetActivityRequest, context: Context
    ) -> admin_pb2.GetActivityResponse:
        return await dashboard_reads.activity(
            self._events().ledger, minutes=request.minutes, now=self._admin.clock.now()
        )

    @grpc_errors
    async def GetAnalytics(
        self, request: admin_pb2.GetAnalyticsRequest, context: Context
    ) -> admin_pb2.GetAnalyticsResponse:
        return await self._analytics.report(
            self._events().ledger, self._admin.policy, period=request.period, now=self._admin.clock.now()
        )

    # -- the policy lifecycle (quota_service.server.lifecycle_reads): suggestions only --------

    @grpc_errors
    async def Recommend(self, request: admin_pb2.RecommendRequest, context: Context) -> admin_pb2.RecommendResponse:
        return await lifecycle_reads.recommendation(
            self._events().ledger, self._admin.policy, request, now=self._admin.clock.now()
        )

    @grpc_errors
    async def GetEstimates(
        self, request: admin_pb2.GetEstimatesRequest, context: Context
    ) -> admin_pb2.GetEstimatesResponse:
        return await lifecycle_reads.estimates(
            self._events().ledger, self._admin.policy, request, now=self._admin.clock.now()
        )


DELIVERY_STATES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_DEAD)
DEFAULT_DELIVERIES_LISTED = 50
MAX_DELIVERIES_LISTED = 1000


def shown_url(url: str) -> str:
    """A webhook URL without its query and fragment (they may carry a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def webhook_message(
    endpoint_id: str, endpoint: WebhookEndpoint | None, counts: dict[tuple[str, str], int]
) -> events_pb2.Webhook:
    message = events_pb2.Webhook(
        id=endpoint_id,
        pending=counts.get((endpoint_id, DELIVERY_PENDING), 0),
        delivered=counts.get((endpoint_id, DELIVERY_DELIVERED), 0),
        dead=counts.get((endpoint_id, DELIVERY_DEAD), 0),
        configured=endpoint is not None,
    )
    if endpoint is not None:
        message.name = endpoint.name
        message.url = shown_url(endpoint.url)
        message.kinds.extend(sorted(cast(events_pb2.EventKind, int(k)) for k in endpoint.kinds))
        message.tiers.extend(sorted(endpoint.tiers))
    return message


def delivery_message(delivery: Delivery) -> events_pb2.WebhookDelivery:
    return events_pb2.WebhookDelivery(
        webhook_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at_ms=delivery.next_attempt_at_ms,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        created_at_ms=delivery.created_at_ms,
        updated_at_ms=delivery.updated_at_ms,
    )
