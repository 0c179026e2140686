"""The loader's limits: each refusal happens before the work it bounds, names the file (and
the line and key where there is one), and nothing but a PolicyError ever leaves the loader.

Work and memory are bounded by mechanism (sizes checked before reading, node and depth
counts while parsing); the few measurements here are of memory with tracemalloc, which is
deterministic, never of time."""

from __future__ import annotations

import os
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from quota_service.errors import PolicyError
from quota_service.policy.compiled import micros_at
from quota_service.policy.loader import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_ISSUES,
    MAX_NODES,
    MAX_POLICY_FILES,
    MAX_TOTAL_BYTES,
    dotted_key,
    load_policy,
)
from quota_service.policy.model import MAX_PRICE_USD
from quota_service.policy.units import MAX_UNITS
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "policies"
INVALID = FIXTURES / "invalid"
VALID = FIXTURES / "valid"

POLICY = """version: 1
default_tier: free
tiers:
  free:
    features: [blog_writer]
    limits: {tokens: {day: 1000}}
"""


def messages(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [str(issue) for issue in caught.value.issues]


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- sizes: checked before reading -----------------------------------------------------


def test_a_50_mb_file_is_refused_by_its_size_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as sparse:  # 50 MB of NUL bytes that are never written to disk
        sparse.truncate(50_000_000)
    # Reading it would have found the NUL bytes; the size refusal comes first.
    assert messages(path) == [
        f"{path}: the file is 50,000,000 bytes; a policy file may be at most 1 MiB (1,048,576 bytes)"
    ]


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = POLICY + "#" * (MAX_FILE_BYTES - len(POLICY) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert load_policy(write(tmp_path, text)).default_tier == "free"


def test_a_directory_larger_than_the_total_limit_is_refused(tmp_path: Path) -> None:
    # Files just under the per-file limit, refused quickly (a NUL byte first) but counted.
    body = b"\x00" + b"#" * (MAX_FILE_BYTES - 1001) + b"\n"
    count = MAX_TOTAL_BYTES // len(body) + 1
    for index in range(count):
        (tmp_path / f"{index:02d}.yaml").write_bytes(body)
    found = messages(tmp_path)
    assert found[: count - 1] == [
        f"{tmp_path / f'{index:02d}.yaml'}:1: the file contains a NUL byte; a policy file is UTF-8 text"
        for index in range(count - 1)
    ]
    last = tmp_path / f"{count - 1:02d}.yaml"
    assert found[count - 1 :] == [f"{last}: the policy files together are larger than 4 MiB (4,194,304 bytes)"]


def test_a_directory_with_too_many_policy_files_is_refused(tmp_path: Path) -> None:
    for index in range(MAX_POLICY_FILES + 1):
        (tmp_path / f"{index:03d}.yaml").touch()
    assert messages(tmp_path) == [f"{tmp_path}: 257 policy files in this directory; at most 256"]


def test_a_device_is_not_read(tmp_path: Path) -> None:
    # /dev/null reads as empty: reading it would say "the file is empty".
    assert messages(Path(os.devnull)) == [
        f"{os.devnull}: not a regular file; a policy is a YAML file or a directory of them"
    ]


# --- nesting, nodes and aliases: counted while parsing -------------------------------------


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_nesting_is_allowed_to_the_limit_and_refused_past_it(tmp_path: Path, opening: str) -> None:
    def nested(levels: int) -> str:
        if opening == "- ":  # block lists: one more level per line, indented
            lines = ("  " * (i + 1) + "- " + ("\n" if i < levels - 1 else "1\n") for i in range(levels))
            return "version:\n" + "".join(lines)
        closing = "]" if opening == "[" else "}"
        return "version: " + opening * levels + "1" + closing * levels + "\n"

    within = messages(write(tmp_path, nested(MAX_DEPTH - 1)))
    assert not any("nested" in message for message in within), within
    past = messages(write(tmp_path, nested(MAX_DEPTH + 1)))
    assert len(past) == 1 and past[0].endswith(f": nested more than {MAX_DEPTH} levels deep"), past


def test_nesting_made_through_aliases_is_bounded_too(tmp_path: Path) -> None:
    # a: 31 levels, b: 61 (a inside 30 lists), c: 65 (b inside 4 more), refused at c's alias.
    levels = 30
    text = f"a: &a {'[' * levels}1{']' * levels}\nb: &b {'[' * levels}*a{']' * levels}\nc: [[[[*b]]]]\n"
    found = messages(write(tmp_path, text))
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'policy.yaml'}:3: c[0][0][0][0][0]"), found
    assert found[0].endswith(f": nested more than {MAX_DEPTH} levels deep"), found


def test_a_file_with_too_many_nodes_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "version: [" + ",".join(["1"] * MAX_NODES) + "]\n")
    assert messages(path) == [f"{path}:1: the file has more than 50,000 YAML nodes (keys, values, items)"]


def test_aliases_may_expand_to_the_bound_but_not_past_it(tmp_path: Path) -> None:
    items = 99  # an aliased list of 99 items is 100 nodes
    anchor = "a: &a [" + ", ".join(["x"] * items) + "]\n"
    within = anchor + "b: [" + ", ".join(["*a"] * (MAX_ALIAS_NODES // (items + 1))) + "]\n"
    assert not any("aliases expand" in message for message in messages(write(tmp_path, within)))
    past = anchor + "b: [" + ", ".join(["*a"] * (MAX_ALIAS_NODES // (items + 1) + 1)) + "]\n"
    assert messages(write(tmp_path, past)) == [
        f"{tmp_path / 'policy.yaml'}:2: b[100]: aliases expand to more than 10,000 YAML nodes (keys, values, "
        "items); write the values out, or share less through anchors"
    ]


def test_merge_keys_count_as_aliases(tmp_path: Path) -> None:
    # Each level merges the previous mapping twice: 2**20 entries without the bound.
    text = "m0: &m0 {a: 1, b: 2}\n" + "".join(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}\n" for i in range(1, 21))
    found = messages(write(tmp_path, text))
    assert len(found) == 1 and "aliases expand to more than 10,000 YAML nodes" in found[0], found


def test_the_alias_bomb_is_refused_in_little_memory() -> None:
    tracemalloc.start()
    try:
        found = messages(INVALID / "alias_bomb.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == 1 and "aliases expand" in found[0]
    assert peak < 16 * 2**20, f"peak {peak:,} bytes"  # it was 1 GB; about 1.3 MB now


def test_a_100_000_digit_integer_is_refused_by_its_length(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY.replace("{day: 1000}", "{day: " + "7" * 100_000 + "}"))
    assert messages(path) == [
        f"{path}:6: tiers.free.limits.tokens.day: a number of 100,000 characters is too long (at most 40)"
    ]


def test_an_issue_inside_an_anchor_is_reported_once(tmp_path: Path) -> None:
    text = POLICY.replace("{day: 1000}", "{day: &n !!int twelve, hour: *n, minute: *n}")
    assert messages(write(tmp_path, text)) == [
        f"{tmp_path / 'policy.yaml'}:6: tiers.free.limits.tokens.day: 'twelve' is not a decimal integer"
    ]


def test_the_number_of_issues_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\n" * (MAX_ISSUES + 50))
    found = messages(path)
    assert len(found) == MAX_ISSUES
    assert found[0] == f"{path}:2: version: duplicate key; first defined on line 1"
    assert found[-1] == f"{path}:101: and 50 more issues from here on"


def test_long_keys_are_cut_in_messages(tmp_path: Path) -> None:
    key = "k" * 5000
    assert dotted_key(("tiers", key)) == 'tiers."' + "k" * 99 + '…"'
    found = messages(write(tmp_path, POLICY + f"{key}: 1\n"))
    assert len(found) == 1 and len(found[0]) < 400, found


# --- YAML semantics kept ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\n",
        "a: &a {x: 1}\nb: &b {x: 2, z: 2}\nuse: {<<: [*a, *b], w: 0}\n",
        "a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nuse: {<<: *b}\n",
        "a: &a [1, 2]\nb: [*a, *a]\nc: &c hello\nd: *c\n",
        "a: {<<: {x: 1}, <<: {y: 3}}\n",
    ],
)
def test_anchors_aliases_and_merges_build_what_pyyaml_builds(text: str) -> None:
    from quota_service.policy.loader import _PolicyYamlLoader

    loader = _PolicyYamlLoader(text)
    try:
        ours = loader.load_document()
    finally:
        loader.dispose()
    assert not loader.issues
    theirs = yaml.safe_load(text)
    assert ours == theirs
    assert [list(v) if isinstance(v, dict) else v for v in ours.values()] == [
        list(v) if isinstance(v, dict) else v for v in theirs.values()
    ]  # the same key order too


def test_of_several_merged_mappings_the_first_wins(tmp_path: Path) -> None:
    from quota_service.policy.loader import _PolicyYamlLoader

    text = "a: &a {xyz: 1, k: 1}\nb: &b {xyz: 2, z: 2}\nuse: {<<: [*a, *b], w: 0}\nboth: {<<: *b, <<: *a}\n"
    loader = _PolicyYamlLoader(text)
    try:
        document = loader.load_document()
    finally:
        loader.dispose()
    assert document["use"] == {"xyz": 1, "k": 1, "z": 2, "w": 0}
    assert document["both"] == {"xyz": 2, "z": 2, "k": 1}


# --- numbers ---------------------------------------------------------------------------


def test_numbers_are_read_as_the_decimals_written_and_yaml_1_1_words_stay_text() -> None:
    policy = load_policy(VALID / "numbers.yaml")
    free = policy.tiers["free"]
    assert [(limit.metric, limit.window, limit.max_units) for limit in free.limits] == [
        ("tokens", Window.MINUTE, 1_000),  # 1.0e3
        ("tokens", Window.HOUR, 10_000),  # 1e4
        ("tokens", Window.DAY, 1_000_000),  # 1_000_000
        ("tokens", Window.MONTH, MAX_UNITS),
        ("cost_usd", Window.DAY, 15_000_000),  # 1.5e1 USD
        ("cost_usd", Window.MONTH, MAX_UNITS),  # $9,007,199,254.740991
    ]
    assert policy.thresholds.warn_at == Decimal("0.8")  # 8e-1
    assert policy.reservation_ttl_seconds == 1_200
    assert free.display_name == "2024-13-45"  # a date YAML 1.1 could not even build
    assert free.features == frozenset({"yes", "off", "1:30", "010"})
    assert policy.prices.rate("any", "model", "tokens") == Decimal("6e-7")


def test_the_extreme_accepted_prices_cost_without_overflow() -> None:
    policy = load_policy(VALID / "numbers.yaml")
    assert policy.prices.rate("big", "model", "images") == MAX_PRICE_USD
    # The dearest unit costs exactly one full counter; the largest request is far over
    # it (the engine refuses it as too large to count), and nothing overflows.
    cost, _, rates = policy.prices.cost_micros("big", "model", {"images": 1})
    assert cost == MAX_UNITS
    assert micros_at(rates, {"images": MAX_UNITS}) > MAX_UNITS
    # The cheapest non-zero price still charges its micro-dollar, rounded up.
    cost, _, _ = policy.prices.cost_micros("any", "model", {"images": 1})
    assert cost == 1


def test_a_float_given_to_the_model_directly_is_still_bounded() -> None:
    from pydantic import ValidationError

    from quota_service.policy.model import ThresholdsModel

    with pytest.raises(ValidationError, match="has more than 12 decimals"):
        ThresholdsModel.model_validate({"warn_at": 0.1 + 0.2})  # 0.30000000000000004
