"""What the quota path caches or skips per request, and that it changes no answer: the
replay text is encoded once per plan shape, the engine's charges reach the store marked
as checked, and the store's subject check accepts and refuses exactly as before."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
from support.requests import ask

from quota_service.clock import ManualClock
from quota_service.errors import InvalidRequest
from quota_service.policy import engine, replay
from quota_service.policy.domain import Decision
from quota_service.policy.engine import PlannedCharges
from quota_service.quotas import Quotas
from quota_service.store import base, keys
from quota_service.store.base import ReserveCommand, ReserveResult, check_subject
from quota_service.store.memory_store import MemoryCounterStore

pytestmark = pytest.mark.unit


@pytest.fixture
def sent(store: MemoryCounterStore, monkeypatch: pytest.MonkeyPatch) -> list[ReserveCommand]:
    commands: list[ReserveCommand] = []
    reserve = store.reserve

    async def recording(command: ReserveCommand) -> ReserveResult:
        commands.append(command)
        return await reserve(command)

    monkeypatch.setattr(store, "reserve", recording)
    return commands


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    texts: list[str] = []
    encode = replay.encode

    def counting(the_plan: engine.Plan, *, policy_version: str, timezone: str) -> str:
        text = encode(the_plan, policy_version=policy_version, timezone=timezone)
        texts.append(text)
        return text

    monkeypatch.setattr(replay, "encode", counting)
    engine._SHAPES.clear()
    return texts


async def test_the_replay_text_is_encoded_once_per_shape(
    quotas: Quotas, clock: ManualClock, sent: list[ReserveCommand], encodes: list[str]
) -> None:
    for i, who in enumerate(("ann", "bob", "cat", "ann")):
        answer = await quotas.check_and_reserve(ask(who, 10 + i, request_id=f"r{i}"))
        assert answer.outcome.decision is Decision.ALLOW
    assert len(encodes) == 1
    assert {c.answer for c in sent} == set(encodes)
    clock.advance(86_400)  # new windows: a new shape, a new text (another window start)
    await quotas.check_and_reserve(ask("ann", 10, request_id="r-next-day"))
    assert len(encodes) == 2 and encodes[0] != encodes[1]
    assert sent[-1].answer == encodes[1]


async def test_a_replay_is_answered_from_the_cached_text(quotas: Quotas, encodes: list[str]) -> None:
    first = await quotas.check_and_reserve(ask("ann", 10, request_id="same"))
    await quotas.check_and_reserve(ask("bob", 10, request_id="other"))
    again = await quotas.check_and_reserve(ask("ann", 10, request_id="same"))
    assert again.replayed and again.outcome == first.outcome and again.reservation_id == first.reservation_id
    assert len(encodes) == 1


async def test_a_reloaded_policy_gets_its_own_text(quotas: Quotas, policy_file: Path, encodes: list[str]) -> None:
    await quotas.check_and_reserve(ask("ann", 10, request_id="before"))
    policy_file.write_text(policy_file.read_text().replace("tokens: {day: 1000}", "tokens: {day: 900}", 1))
    assert quotas.policy.reload()
    await quotas.check_and_reserve(ask("ann", 10, request_id="after"))
    assert len(encodes) == 2
    assert encodes[0].split()[4] != encodes[1].split()[4]  # the policy version
    assert "h1000" in encodes[0] and "h900" in encodes[1]  # the hard stop it lowered


async def test_the_engine_charges_reach_the_store_marked_checked(
    quotas: Quotas, sent: list[ReserveCommand], encodes: list[str]
) -> None:
    await quotas.check_and_reserve(ask("ann", 10, request_id="x"))
    (command,) = sent
    assert type(command.subject_charges) is PlannedCharges
    assert type(command.global_charges) is PlannedCharges


def test_the_subject_check_fast_path_agrees_with_str_isspace() -> None:
    unfit = base._UNFIT
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        assert (unfit.search(ch) is not None) == (ch in "{}" or ch.isspace()), hex(code)


@pytest.mark.parametrize(
    "subject", ["a b", "a\tb", "a\u00a0b", "a\u2028b", "{a}", "a}", "a\x00b", "a\x7fb", "a\u200bb"]
)
def test_unfit_subjects_are_still_refused(subject: str) -> None:
    with pytest.raises(InvalidRequest, match="must not contain"):
        check_subject(subject)


@pytest.mark.parametrize("subject", ["ann", "user-42@example.com", "ünï_cödé", "a:b/c"])
def test_fit_subjects_are_accepted(subject: str) -> None:
    check_subject(subject)


@pytest.mark.parametrize("raw", [b"", b"a", b"ab", b"abc", bytes(range(256)), "ünï {x}".encode()])
def test_reservation_id_base64_is_urlsafe_base64_unpadded(raw: bytes) -> None:
    assert keys._b64(raw) == base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_reservation_ids_still_parse_back() -> None:
    for subject, request_id in (("ann", ""), ("ann", "r1"), ("ünï@x", "r2")):
        rid = keys.new_reservation_id(subject, request_id)
        parsed = keys.parse(rid)
        assert parsed.subject == subject and parsed.reservation_id == rid
        if request_id:
            assert parsed.name == keys.request_name(subject, request_id)
    assert keys._subject_b64.cache_info().maxsize == 4096
