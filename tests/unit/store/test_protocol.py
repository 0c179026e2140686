"""The named constants crossing the Python/Lua boundary agree on both sides, and the
encodings of what Redis keeps read back what was written."""

from __future__ import annotations

import enum
import importlib.resources
import re

import pytest

from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, CounterValue
from quota_service.policy.windows import Window
from quota_service.store import keys, protocol

pytestmark = pytest.mark.unit

_TABLE = re.compile(r"^local (?P<name>[A-Z_]+) = \{(?P<body>.*?)\}$", re.M | re.S)
_ENTRY = re.compile(r"(?P<key>[A-Z_]+) = '(?P<value>[^']*)'")


def lua_tables() -> dict[str, dict[str, str]]:
    """Every ``local NAME = {KEY = 'value', ...}`` table at the top of lib.lua."""
    text = importlib.resources.files("quota_service.store").joinpath("lua", "lib.lua").read_text(encoding="utf-8")
    return {m["name"]: dict(_ENTRY.findall(m["body"])) for m in _TABLE.finditer(text)}


def members(enumeration: type[enum.StrEnum]) -> dict[str, str]:
    return {member.name: member.value for member in enumeration}


@pytest.mark.parametrize(
    ("table", "python"),
    [
        ("STATUS", members(protocol.Status)),
        ("STATE", members(protocol.State)),
        ("TOMBSTONE", members(protocol.Tombstone)),
        ("STEP", members(protocol.Step)),
        ("SETTLE", members(protocol.Settle)),
        ("OUTCOME", members(protocol.Outcome)),
        ("FIELD", members(protocol.Field)),
        ("ENTRY", members(protocol.Entry)),
        ("KEY", protocol.KEY_KINDS),
    ],
)
def test_every_lua_constant_table_mirrors_python(table: str, python: dict[str, str]) -> None:
    tables = lua_tables()
    assert table in tables, f"lib.lua has no {table} table"
    assert tables[table] == python


def test_the_key_kinds_are_the_ones_keys_builds() -> None:
    ref = CounterRef("alice", "tokens", Window.DAY, "2026-11-24", 1)
    assert keys.counter_key(ref).startswith(protocol.KEY_KINDS["COUNTER"] + ":{alice}:")
    assert keys.record_key("alice", "n").startswith(protocol.KEY_KINDS["RECORD"] + ":{alice}:")
    assert keys.open_set_key("alice").startswith(protocol.KEY_KINDS["OPEN"] + ":{alice}:")
    assert keys.plan_key("alice", "d").startswith(protocol.KEY_KINDS["PLAN"] + ":{alice}:")
    assert keys.layout_key("alice", "d").startswith(protocol.KEY_KINDS["LAYOUT"] + ":{alice}:")


def test_a_layout_names_its_counters_back() -> None:
    refs = [
        CounterRef("alice", "tokens", Window.DAY, "2026-11-24", 1_764_028_800),
        CounterRef("alice", "cost_usd", Window.HOUR, "2026-04-05T01:00+11:00", 1_775_352_600),
    ]
    company = [CounterRef(GLOBAL_SCOPE, "cost_usd", Window.MONTH, "2026-11", 1_764_547_200)]
    text = protocol.layout_text("AbCd1234", refs, company)
    digest, _, layouts = text.partition("\n")
    assert digest == "AbCd1234"
    assert protocol.parse_layout_text("alice", GLOBAL_SCOPE, layouts) == (refs, company)
    assert protocol.parse_layout("alice", protocol.layout(refs)) == refs
    with pytest.raises(ValueError):
        protocol.parse_layout("alice", "tokens:day")


def test_values_amounts_and_the_plan_text_read_back() -> None:
    values = [CounterValue(2**53 - 1, 0), CounterValue(5, 7)]
    assert protocol.parse_values(protocol.values_text(values)) == values
    assert protocol.split_values("1,2;3,4") == ([CounterValue(1, 2)], [CounterValue(3, 4)])
    assert protocol.parse_amounts(protocol.amounts_text({"tokens": 300, "images": 0})) == {"tokens": 300, "images": 0}
    text = protocol.plan_text(["tokens", "images"], {"tokens": "6E-7"}, {"feature": "blog writer"}, "a\nb|x")
    plan = protocol.Plan.parse(text)
    assert plan == protocol.Plan(("images", "tokens"), {"tokens": "6E-7"}, {"feature": "blog writer"}, "a\nb|x")
    assert plan.estimate("0,300") == {"images": 0, "tokens": 300}
    with pytest.raises(ValueError):
        plan.estimate("1")


def test_a_tombstone_reads_back() -> None:
    tomb = protocol.TombstoneRecord.parse("C|abcdefghijklmnop|1796113855|EfGh5678|5|10,5;7,3")
    assert tomb.state is protocol.State.COMMITTED and tomb.has_global
    assert (tomb.generation, tomb.expires_at, tomb.layout) == ("abcdefghijklmnop", 1796113855, "EfGh5678")
    assert (tomb.estimate, tomb.values) == ("5", "10,5;7,3")
    released = protocol.TombstoneRecord.parse("r|abcdefghijklmnop|1796113855|EfGh5678||")
    assert released.state is protocol.State.RELEASED and not released.has_global
    for bad in ("x|g|1|l|e|v", "c|g|1"):
        with pytest.raises((ValueError, KeyError)):
            protocol.TombstoneRecord.parse(bad)


def test_reservation_ids_name_their_record_and_generation() -> None:
    first = keys.parse(keys.new_reservation_id("alice", "req-1"))
    again = keys.parse(keys.new_reservation_id("alice", "req-1"))
    assert first.subject == "alice" and first.name == again.name == keys.request_name("alice", "req-1")
    assert first.generation != again.generation  # random: a later reservation is another one
    assert keys.request_name("bob", "req-1") != first.name
    base = keys.new_reservation_id("alice")
    derived = keys.for_request(base, "req-1")
    assert derived.name == first.name and derived.generation == keys.parse(base).generation
    assert keys.parse(derived.reservation_id) == derived
    assert keys.for_request(base, "") == keys.parse(base)
    assert len(derived.nonce) == keys.NONCE_CHARS
