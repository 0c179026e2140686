"""Two real servers on one Redis: a decision that rests on a subject's config (an emergency
stop on its tier, a feature its tier lacks) is right on the other replica within 1 s of a
change made through the first, because every config write is announced and every replica
forgets what it cached for that subject."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import ServerProcess
from support.waiting import wait_for

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e


class Replica:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.quota = quota_pb2_grpc.QuotaServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.auth = [("authorization", f"Bearer {server.admin_token}")]

    def ask(self, who: str, feature: str = "blog_writer") -> quota_pb2.CheckAndReserveResponse:
        request = quota_pb2.CheckAndReserveRequest(
            subject=who, feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": 10}, dry_run=True
        )
        return self.quota.CheckAndReserve(request, timeout=5)


@pytest.fixture
def replicas(redis_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    made: list[Replica] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            server = ServerProcess(redis_url=redis_url, workdir=workdir)
            server.start()
            made.append(Replica(server))
        yield made[0], made[1]
    finally:
        for replica in made:
            replica.channel.close()
            replica.server.stop()


def test_a_tier_stop_is_lifted_for_a_subject_moved_off_the_tier_on_every_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    who = f"user-{uuid.uuid4().hex[:10]}"
    assert b.ask(who).decision == quota_pb2.ALLOW  # B caches who as free_alpha
    a.admin.EmergencyStop(
        admin_pb2.EmergencyStopRequest(scope=admin_pb2.TIER, target="free_alpha", reason="free tier bleeding"),
        metadata=a.auth,
        timeout=5,
    )
    wait_for(lambda: b.ask(who).reason == quota_pb2.EMERGENCY_STOP, time.monotonic(), 1.0)

    started = time.monotonic()  # from the admin call on A
    a.admin.SetTier(admin_pb2.SetTierRequest(subject=who, tier="pro_alpha"), metadata=a.auth, timeout=5)
    wait_for(lambda: b.ask(who).decision == quota_pb2.ALLOW, time.monotonic(), 1.0)
    took = time.monotonic() - started
    print(f"\nB allowed the subject moved to pro_alpha {took * 1000:.0f} ms after SetTier on A")
    answer = b.ask(who)
    assert (answer.decision, answer.tier) == (quota_pb2.ALLOW, "pro_alpha")
    # ... and the stop still holds for the tier's other subjects.
    assert b.ask(f"user-{uuid.uuid4().hex[:10]}").reason == quota_pb2.EMERGENCY_STOP


def test_a_feature_granted_through_one_replica_is_granted_by_the_other_within_1_second(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    who = f"user-{uuid.uuid4().hex[:10]}"
    for _ in range(3):  # the denial is answered from B's cache, no config read each time
        assert b.ask(who, feature="seo_analysis").reason == quota_pb2.FEATURE_NOT_ALLOWED
    a.admin.SetTier(admin_pb2.SetTierRequest(subject=who, tier="basic_alpha"), metadata=a.auth, timeout=5)
    wait_for(lambda: b.ask(who, feature="seo_analysis").decision == quota_pb2.ALLOW, time.monotonic(), 1.0)
