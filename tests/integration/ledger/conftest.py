"""Fixtures for the ledger tests: one behaviour suite over every ledger store.

``ledger_url`` is parametrized: a real SQLite file in the test's temporary directory and a
new database on the session's real PostgreSQL server (``postgres_url``, marked ``postgres``).
``ledger`` is a migrated :class:`Ledger` on it, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quota_service.ledger import Ledger, ledger_from_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    store = ledger_from_url(ledger_url, timeout_seconds=5.0)
    assert store is not None
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
