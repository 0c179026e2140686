"""A reload that removes a tier still assigned to subjects: they get the default tier (with
one warning per tier and policy version, not one per request), and GetSubject says the
assignment no longer counts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from admin_plane import ACTOR, ALPHA

from quota_service.admin import Admin
from quota_service.policy.domain import Decision
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


def without_basic_alpha(text: str) -> str:
    start = text.index("  basic_alpha:")
    end = text.index("  pro_alpha:")
    return text[:start] + text[end:]


async def test_subjects_of_a_removed_tier_fall_back_to_the_default(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "alpha.yaml"
    path.write_text(ALPHA.read_text())
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    try:
        quotas = Quotas(policy=LivePolicy(path), store=counters)
        admin = Admin(quotas=quotas, store=RedisAdminStore(counters=counters))
        await admin.set_tier("moved", "basic_alpha", actor=ACTOR)
        request = build_request(
            subject="moved", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
        )
        assert (await quotas.check_and_reserve(request)).tier == "basic_alpha"

        path.write_text(without_basic_alpha(ALPHA.read_text()))
        assert quotas.policy.reload() is True
        caplog.set_level(logging.WARNING, logger="quota_service.quotas")
        for _ in range(3):
            answer = await quotas.check_and_reserve(request)
            assert (answer.tier, answer.outcome.decision) == ("free_alpha", Decision.ALLOW)
        warnings = [r.getMessage() for r in caplog.records if "no longer exists" in r.getMessage()]
        assert len(warnings) == 1 and "'basic_alpha'" in warnings[0] and "'free_alpha'" in warnings[0]

        view = await admin.get_subject("moved")
        assert (view.tier, view.tier_assigned) == ("free_alpha", False)
    finally:
        await counters.close()
