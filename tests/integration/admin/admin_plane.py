"""Shared by the admin integration tests (a module of its own: ``conftest`` is not importable
by name when several test directories have one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio

from quota_service.admin import Admin
from quota_service.quotas import Quotas
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
ACTOR = "token:0123456789ab"


@dataclass
class Plane:
    counters: RedisCounterStore
    store: RedisAdminStore
    quotas: Quotas
    admin: Admin
    raw: redis.asyncio.Redis
