"""Property-based tests of the policy surface: whatever the bytes, ``load_policy`` returns a
``CompiledPolicy`` or raises a ``PolicyError`` whose every issue names a file and says what
is wrong; a number it accepts is the decimal the operator wrote, and every price, cap and
threshold it accepts is computed with exactly.

Reproducible (``derandomize=True``, no example database) and bounded: small inputs, a
per-example ``deadline`` generous enough for a loaded 2-core machine, a few hundred
examples per test (a few seconds in all). The inputs are small by construction (at most a few KB),
so memory stays small; the limits that bound large inputs are tested in test_loader_limits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_service.errors import PolicyError
from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, Thresholds, micros_at
from quota_service.policy.loader import load_policy
from quota_service.policy.model import MAX_PRICE_DECIMALS, MAX_PRICE_USD, MAX_THRESHOLD_DECIMALS
from quota_service.policy.units import MAX_UNITS
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

ALPHA = (Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml").read_bytes()

PROPERTY_SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=2000,  # ms per example: a bound on the work, with room for a busy machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Pieces of hostile input to splice into a good file.
HOSTILE = [
    b"\x00",
    b"\xff\xfe",
    b"\xfe\xff",
    b"\xef\xbb\xbf",
    b"\x01",
    b"\x1b[31m",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    "é€𝄞".encode(),
    b"\t",
    b"\r",
    b"[" * 100,
    b"{a: " * 80,
    b"- " * 100,
    b"]" * 5,
    b"}",
    b"9" * 500,
    b"1e999999999",
    b"-1e-999999999",
    b".nan",
    b".inf",
    b"0x1F",
    b"0o17",
    b"0b101",
    b"010",
    b"1:30:00",
    b"1,000",
    b"yes",
    b"on",
    b"~",
    b"2024-13-45",
    b"&a [*a]",
    b"&x",
    b"*x",
    b"*undefined",
    b"<<: *x",
    b"<<: [1, 2]",
    b"!!binary aGk=",
    b"!!python/object:os.system",
    b"!!int x",
    b"!!float x",
    b"!!bool maybe",
    b"!!set {a, b}",
    b'"\\ud800"',
    b'"\\0"',
    b"? [a]\n: b",
    b"%YAML 1.1\n---\n",
    b"---\n",
    b"...\n",
    b"#",
    b":",
    b"'",
    b'"',
    b"|\n",
    b">-\n",
]


@contextmanager
def policy_file(content: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy.yaml"
        path.write_bytes(content)
        yield path


def outcome(path: Path) -> CompiledPolicy | PolicyError:
    """The only two outcomes there may be; anything else raised fails the test."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        assert exc.issues, "a PolicyError lists at least one issue"
        for issue in exc.issues:
            assert issue.file, issue
            assert issue.message, issue
            assert issue.line >= 0, issue
        return exc


@st.composite
def mutated_alpha(draw: st.DrawFn) -> bytes:
    """alpha.yaml with a few random edits: bytes replaced, cut, or hostile pieces spliced in."""
    content = bytearray(ALPHA)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(content)))
        edit = draw(st.sampled_from(["insert", "replace", "delete", "byte"]))
        if edit == "insert":
            content[at:at] = draw(st.sampled_from(HOSTILE))
        elif edit == "replace":
            piece = draw(st.sampled_from(HOSTILE))
            content[at : at + len(piece)] = piece
        elif edit == "delete":
            del content[at : at + draw(st.integers(1, 40))]
        else:
            content[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(content)


# Small YAML documents from a grammar: nesting, anchors and aliases, merges, odd scalars.
SCALARS = st.sampled_from(
    ["1", "-5", "0.95", "1e3", "1.0e3", "1_000", "010", "0x10", "1:30", "yes", "true", "null", "~", "''",
     '"x"', "1e999999999", ".nan", "2024-13-45", "!!str 5", "!!int 5", "!!binary aGk=", '"\\ud800"', "9" * 60]
)  # fmt: skip
KEYS = st.sampled_from(["version", "default_tier", "tiers", "free", "limits", "tokens", "day", "prices", "*", "<<"])


@st.composite
def yaml_documents(draw: st.DrawFn) -> bytes:
    anchors: list[str] = []

    def node(depth: int) -> str:
        choice = draw(st.integers(0, 5 if depth < 4 else 1))
        if choice == 0:
            return draw(SCALARS)
        if choice == 1 and anchors:
            return "*" + draw(st.sampled_from(anchors))
        anchor = ""
        if draw(st.booleans()):
            name = f"a{len(anchors)}"
            anchor = f"&{name} "
        if choice in (2, 3):
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 6)))]
            text = anchor + "[" + ", ".join(items) + "]"
        else:
            pairs = [f"{draw(KEYS)}: {node(depth + 1)}" for _ in range(draw(st.integers(0, 4)))]
            text = anchor + "{" + ", ".join(pairs) + "}"
        if anchor:
            anchors.append(anchor[1:-1])
        return text

    lines = [f"{draw(KEYS)}: {node(0)}" for _ in range(draw(st.integers(1, 6)))]
    return ("\n".join(lines) + "\n").encode()


@PROPERTY_SETTINGS
@given(mutated_alpha())
def test_a_mutated_policy_loads_or_is_refused_with_issues(content: bytes) -> None:
    with policy_file(content) as path:
        outcome(path)


@PROPERTY_SETTINGS
@given(yaml_documents())
def test_any_small_yaml_document_loads_or_is_refused_with_issues(content: bytes) -> None:
    with policy_file(content) as path:
        outcome(path)


@PROPERTY_SETTINGS
@given(st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_arbitrary_bytes_load_or_are_refused_with_issues(content: bytes) -> None:
    with policy_file(content) as path:
        outcome(path)


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-8-sig", "latin-1"]),
    st.integers(0, len(ALPHA)),
)
def test_the_shipped_policy_in_another_encoding_loads_or_is_refused(encoding: str, cut: int) -> None:
    text = ALPHA.decode()[:cut] + "\n# é ✓\n" + ALPHA.decode()[cut:]
    with policy_file(text.encode(encoding, errors="replace")) as path:
        result = outcome(path)
    if encoding != "utf-8-sig":
        assert isinstance(result, PolicyError)


# --- numbers: read as written, or refused --------------------------------------------------

NUMBER_TEMPLATE = """version: 1
default_tier: free
tiers:
  free:
    features: [blog_writer]
    limits: {{tokens: {{day: {cap}}}, cost_usd: {{month: {usd}}}}}
"""

digits = st.text("0123456789", min_size=1, max_size=20)
literals = st.one_of(
    digits,
    st.builds(lambda a, b: f"{a}_{b}", digits, digits),
    st.builds(lambda a, b: f"{a}.{b}", digits, digits),
    st.builds(lambda a, e: f"{a}e{e}", digits, st.integers(-30, 30)),
    st.builds(lambda a, b, e: f"{a}.{b}e{e:+d}", digits, digits, st.integers(-30, 30)),
    st.builds(lambda a: f"-{a}", digits),
    st.builds(lambda a: f"0x{a}", digits),
    st.builds(lambda a: f"{a}:{int(a[-1]) * 5}", digits),
)


@PROPERTY_SETTINGS
@given(literals, literals)
def test_an_accepted_cap_is_the_decimal_written(cap: str, usd: str) -> None:
    with policy_file(NUMBER_TEMPLATE.format(cap=cap, usd=usd).encode()) as path:
        result = outcome(path)
    if isinstance(result, PolicyError):
        return
    written = {limit.metric: limit.max_units for limit in result.tiers["free"].limits}
    # Accepted only as plain decimals: no leading zero (octal in YAML 1.1), no 0x, no base 60.
    for literal in (cap, usd):
        plain = literal.lstrip("-").replace("_", "")
        assert not (len(plain) > 1 and plain[0] == "0" and plain[1].isdigit() and "." not in plain), literal
        assert "x" not in literal and ":" not in literal, literal
    assert written["tokens"] == Decimal(cap.replace("_", ""))
    assert written["cost_usd"] == Decimal(usd.replace("_", "")) * 1_000_000


# --- what the compiler accepts is computed with exactly ------------------------------------

prices = st.builds(
    lambda units: Decimal(units).scaleb(-MAX_PRICE_DECIMALS),
    st.integers(0, int(MAX_PRICE_USD.scaleb(MAX_PRICE_DECIMALS))),
)
amounts = st.integers(0, MAX_UNITS)


@PROPERTY_SETTINGS
@given(st.dictionaries(st.sampled_from(["tokens", "images", "seconds", "calls"]), st.tuples(prices, amounts)))
def test_any_accepted_price_costs_exactly_what_it_should(priced: dict[str, tuple[Decimal, int]]) -> None:
    rates = {metric: rate for metric, (rate, _) in priced.items()}
    usage = {metric: amount for metric, (_, amount) in priced.items()}
    exact = sum((Fraction(rate) * amount for rate, amount in priced.values()), Fraction(0)) * 1_000_000
    expected = -((-exact.numerator) // exact.denominator)  # ceil
    cost = micros_at(rates, usage)  # never raises (no decimal overflow)
    if expected <= MAX_UNITS:
        assert cost == expected  # exact whenever it can be counted
    else:
        assert cost > MAX_UNITS  # and refused by the engine as too large when it cannot


thresholds = st.builds(
    lambda units: Decimal(units).scaleb(-MAX_THRESHOLD_DECIMALS), st.integers(1, 10**MAX_THRESHOLD_DECIMALS)
)


@PROPERTY_SETTINGS
@given(thresholds, st.integers(0, MAX_UNITS))
def test_any_accepted_threshold_of_any_cap_is_exact(fraction: Decimal, max_units: int) -> None:
    limit = Limit("tokens", Window.DAY, max_units, LimitKind.TIER, Thresholds(warn_at=fraction, block_at=fraction))
    exact = Fraction(fraction) * max_units
    assert limit.warn_units == limit.block_units == -((-exact.numerator) // exact.denominator)
