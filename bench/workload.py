"""What every system in the benchmark is asked, and what the floors answer: shared by the
load generator and the floor servers so the three systems see the same bytes."""

from __future__ import annotations

from typing import Final

from quota.v1 import quota_pb2

FEATURE: Final = "blog_writer"  # in the shipped free_alpha tier (the default tier)
PROVIDER: Final = "openai"
MODEL: Final = "gpt-4o-mini"  # priced in policies/alpha.yaml
SUBJECT_PREFIX: Final = "bench-"


def canned_allow() -> quota_pb2.CheckAndReserveResponse:
    """An ALLOW of the size quota-service answers for the workload (~480 bytes): five
    limits (tier tokens/day, hard-stop tokens/day, tier cost/month, hard-stop cost/day,
    global cost/day)."""

    def limit(
        metric: str, window: str, held: float, cap: float, kind: int, warn: float, block: float
    ) -> quota_pb2.LimitStatus:
        return quota_pb2.LimitStatus(
            metric=metric,
            window=window,
            used=0.0,
            held=held,
            max=cap,
            remaining=cap - held,
            ratio=held / cap,
            resets_at=1_795_564_800,
            kind=kind,  # type: ignore[arg-type]
            decision=quota_pb2.ALLOW,
            warn_at=warn,
            block_at=block,
        )

    return quota_pb2.CheckAndReserveResponse(
        decision=quota_pb2.ALLOW,
        reason=quota_pb2.WITHIN_LIMITS,
        message="within limits",
        reservation_id="rsv_YmVuY2gtMA.fedd88ab558d43557f7045676c171afa",
        tier="free_alpha",
        limits=[
            limit("tokens", "day", 20, 1000, quota_pb2.LIMIT_KIND_TIER, 0.8, 0.95),
            limit("tokens", "day", 20, 1000, quota_pb2.LIMIT_KIND_HARD_STOP, 0.0, 1.0),
            limit("cost_usd", "month", 1.2e-05, 10, quota_pb2.LIMIT_KIND_TIER, 0.8, 0.95),
            limit("cost_usd", "day", 1.2e-05, 5, quota_pb2.LIMIT_KIND_HARD_STOP, 0.0, 1.0),
            limit("cost_usd", "day", 1.8e-05, 200, quota_pb2.LIMIT_KIND_GLOBAL, 0.0, 1.0),
        ],
        policy_version="9a574b70813fc47e",
        reservation_expires_at=1_795_544_007,
    )


def canned_deny() -> quota_pb2.CheckAndReserveResponse:
    """What the design floor answers when its script does not reserve (never expected)."""
    return quota_pb2.CheckAndReserveResponse(
        decision=quota_pb2.DENY, reason=quota_pb2.LIMIT_EXCEEDED, message="design floor: not reserved"
    )
