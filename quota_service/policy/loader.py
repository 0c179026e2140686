"""Policy files -> :class:`~quota_service.policy.compiled.CompiledPolicy`.

The pipeline, each stage collecting every issue it can before the next one runs::

    find files -> read -> parse YAML (line of every key) -> merge files
        -> validate (pydantic) -> semantic checks -> compile

Any issue stops the pipeline after its stage and raises :class:`PolicyError` listing them
all; nothing half-loaded ever leaves this module. Each issue names the file, the 1-based
line of the offending key (0 when no line applies, e.g. a missing file or a required
top-level key missing from the whole policy) and the dotted key, e.g.
``policies/alpha.yaml:12: tiers.free_alpha.limits.tokens.day: must not be negative, got -5``.
Keys that are not plain names are quoted: ``prices."openai/gpt-4o".tokens``; list items are
``features[1]`` (0-based).

A path may be a file or a directory. A directory loads every ``*.yaml`` / ``*.yml`` in it
(not recursively; names starting with ``.`` are skipped), sorted by name, and merges them:

* ``tiers`` and ``prices`` are combined entry by entry; the same tier or price pattern in
  two files is an error naming both places;
* every other top-level key (``version``, ``default_tier``, ``timezone``, ``thresholds``,
  ``hard_stops``, ...) may appear in one file only; a second one is an error naming both.

Limits, each checked before the work it bounds, so any input is refused quickly and in
little memory, with the file (and the line, where there is one):

* a file is at most :data:`MAX_FILE_BYTES` (1 MiB), a directory's files together at most
  :data:`MAX_TOTAL_BYTES` (4 MiB), a directory holds at most :data:`MAX_POLICY_FILES`
  (256) policy files: sizes are checked before reading (a 50 MB file is refused at once);
  a FIFO or device is refused, not read;
* the text is UTF-8 (a UTF-8 byte-order mark is allowed), without NUL bytes or other
  control characters than tab and newlines; UTF-16/32 files are named as such;
* at most :data:`MAX_NODES` (50,000) YAML nodes per file (keys, values, list items), nested
  at most :data:`MAX_DEPTH` (64) levels, and at most :data:`MAX_ALIAS_NODES` (10,000)
  nodes built through aliases and ``<<`` merges (a "billion laughs" file is refused at the
  alias that crosses the bound, after at most that much work);
* a number literal is at most :data:`MAX_NUMBER_CHARS` (40) characters;
* a :class:`PolicyError` lists at most :data:`MAX_ISSUES` (100) issues (the last one counts
  the rest), so the status of a failed reload stays readable.

The model (:mod:`quota_service.policy.model`) then bounds every number to what it is used
for: caps in whole units up to 2**53 - 1, prices finite, >= 0, at most 18 decimals and at
most $9,007,199,254.740991 per unit, thresholds in (0, 1] with at most 12 decimals.

YAML details:

* numbers are read as the operator wrote them, in decimal: ``1000``, ``1_000``, ``-5``
  are integers; ``0.95``, ``1.0e3``, ``1e3``, ``1e-6`` are exact :class:`~decimal.Decimal`
  (``0.95`` -> ``Decimal("0.95")``; ``1e3`` is the cap 1000); ``.inf`` and ``.nan`` are
  read (and refused where a number must be finite);
* forms that YAML 1.1 and YAML 1.2 read differently stay text, so where a number is
  expected they are refused with a hint: ``010`` (octal 8 in YAML 1.1: "write 10"),
  ``0x10``, ``0o7``, ``0b1`` ("write the decimal 16"), ``1:30`` (base 60: 90), ``1,000``;
* ``true`` / ``false`` are booleans (an error where a number is expected: "must be a
  number, got true"); ``yes``, ``no``, ``on``, ``off`` are plain words, and so are dates;
* mapping keys are read as their literal text (``on:`` is the key ``"on"``, not ``True``);
  a key repeated in one mapping is an error (PyYAML would silently keep the last);
* anchors, aliases and ``<<`` merge keys work (within the alias bound above); explicit
  tags other than the standard ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!seq`` and ``!!map`` (``!!binary``, ``!!set``, ``!!python/...``) are refused;
* a string may not hold an escaped lone surrogate (``"\\ud800"``): it is not text.

Whatever the bytes, :func:`load_policy` returns a :class:`CompiledPolicy` or raises a
:class:`PolicyError` whose every issue names a file and says what is wrong: nothing else
escapes (no ``RecursionError``, ``MemoryError``, ``ValueError`` or decimal signal).

This module is the only one in the package that imports :mod:`yaml`, and the one place
where YAML and pydantic errors become :class:`PolicyIssue`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.composer import Composer
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from quota_service.errors import PolicyError, PolicyIssue
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.compiler import compile_policy
from quota_service.policy.model import (
    Loc,
    PolicyModel,
    allowed_keys,
    describe,
    number_hint,
    semantic_issues,
)

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_ISSUES",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_POLICY_FILES",
    "MAX_TOTAL_BYTES",
    "POLICY_SUFFIXES",
    "dotted_key",
    "load_policy",
    "policy_files",
]

POLICY_SUFFIXES = (".yaml", ".yml")
#: Top-level sections whose entries several files of a directory may contribute to.
MERGED_SECTIONS = ("tiers", "prices")
VERSION_HEX_CHARS = 16

MIB = 1024 * 1024
#: Largest policy file (bytes), checked before reading it.
MAX_FILE_BYTES = 1 * MIB
#: Largest total of a directory's policy files (bytes).
MAX_TOTAL_BYTES = 4 * MIB
#: Most policy files in one directory.
MAX_POLICY_FILES = 256
#: Most YAML nodes (keys, values, list items) one file may compose.
MAX_NODES = 50_000
#: Most nodes built through aliases (and ``<<`` merges) in one file: the "billion laughs" bound.
MAX_ALIAS_NODES = 10_000
#: Deepest nesting of mappings and lists (the document itself is level 0).
MAX_DEPTH = 64
#: Longest number literal (characters, ``_`` included).
MAX_NUMBER_CHARS = 40
#: Most issues one PolicyError lists; the rest are counted in a last one.
MAX_ISSUES = 100
#: Longest key part shown in a dotted key; longer ones are cut.
_KEY_MAX_CHARS = 100

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def load_policy(path: str | Path) -> CompiledPolicy:
    """Load, validate and compile the policy at ``path`` (a file or a directory).

    The result's ``version`` is the first 16 hex digits of a SHA-256 over the files' names
    and bytes, so unchanged files give the same version. ``files`` lists the files read,
    as paths under ``path``. Raises :class:`PolicyError` with every issue found.
    """
    label = str(path)
    files = policy_files(path)
    sources: list[_Source] = []
    issues: list[PolicyIssue] = []
    allowance = MAX_TOTAL_BYTES
    for file in files:
        size, source = _read_source(file, allowance)
        allowance -= size
        if isinstance(source, _Source):
            sources.append(source)
        else:
            issues += source
            if allowance < 0:
                break  # reading more would only say the same again
    _raise_if(issues)

    merged, where, issues = _merge(sources)
    _raise_if(issues)

    try:
        model = PolicyModel.model_validate(merged)
    except ValidationError as exc:
        raise _policy_error([_from_pydantic(err, where, label) for err in exc.errors()]) from None

    issues = [_issue(loc, message, where, label) for loc, message in semantic_issues(model)]
    _raise_if(issues)

    return compile_policy(
        model,
        files=tuple(source.file for source in sources),
        version=_content_version(sources),
    )


def policy_files(path: str | Path) -> list[Path]:
    """The files :func:`load_policy` reads for ``path``: the file itself, or a directory's
    ``*.yaml`` / ``*.yml`` files sorted by name. Raises :class:`PolicyError` when there are none."""
    source = Path(path)
    if source.is_dir():
        try:
            entries = sorted(source.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise PolicyError([PolicyIssue(str(path), 0, "", f"cannot read the directory: {_reason(exc)}")]) from None
        files = [p for p in entries if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()]
        if not files:
            raise PolicyError([PolicyIssue(str(path), 0, "", "no *.yaml or *.yml policy files in this directory")])
        if len(files) > MAX_POLICY_FILES:
            raise PolicyError(
                [
                    PolicyIssue(
                        str(path), 0, "", f"{len(files):,} policy files in this directory; at most {MAX_POLICY_FILES}"
                    )
                ]
            )
        return files
    if not source.exists():
        raise PolicyError([PolicyIssue(str(path), 0, "", "no such file or directory")])
    return [source]


def dotted_key(loc: Sequence[str | int]) -> str:
    """``("tiers", "free", "features", 1)`` -> ``tiers.free.features[1]``; keys other than
    plain names are quoted: ``prices."openai/gpt-4o".tokens``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if len(part) > _KEY_MAX_CHARS:
            part = part[: _KEY_MAX_CHARS - 1] + "…"
        text = part if _PLAIN_KEY.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out = f"{out}.{text}" if out else text
    return out


# --- reading and parsing ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """One parsed file: its mapping and the 1-based line of every key and list item."""

    file: str
    raw: bytes
    data: dict[str, Any]
    lines: dict[Loc, int]


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _mib(size: int) -> str:
    return f"{size / MIB:g} MiB"


def _read_bytes(path: Path, allowance: int) -> bytes | PolicyIssue:
    """The file's bytes, refused before reading past ``min(MAX_FILE_BYTES, allowance)``
    (``allowance``: what is left of :data:`MAX_TOTAL_BYTES`).

    Opened without blocking and checked to be a regular file, so a FIFO or a device named
    as a policy is refused instead of hanging (or reading ``/dev/zero`` for ever)."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return PolicyIssue(file, 0, "", f"cannot read the file: {_reason(exc)}")
    with os.fdopen(fd, "rb") as stream:
        try:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode):
                return PolicyIssue(file, 0, "", "not a regular file; a policy is a YAML file or a directory of them")
            if info.st_size > MAX_FILE_BYTES:
                return _too_large(file, info.st_size)
            if info.st_size > allowance:
                return _too_much(file)
            raw = stream.read(min(MAX_FILE_BYTES, allowance) + 1)  # the file may grow while we read
        except OSError as exc:
            return PolicyIssue(file, 0, "", f"cannot read the file: {_reason(exc)}")
    if len(raw) > MAX_FILE_BYTES:
        return _too_large(file, len(raw))
    if len(raw) > allowance:
        return _too_much(file)
    return raw


def _too_large(file: str, size: int) -> PolicyIssue:
    limit = f"{_mib(MAX_FILE_BYTES)} ({MAX_FILE_BYTES:,} bytes)"
    return PolicyIssue(file, 0, "", f"the file is {size:,} bytes; a policy file may be at most {limit}")


_TOO_MUCH = "the policy files together are larger than"


def _too_much(file: str) -> PolicyIssue:
    return PolicyIssue(file, 0, "", f"{_TOO_MUCH} {_mib(MAX_TOTAL_BYTES)} ({MAX_TOTAL_BYTES:,} bytes)")


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
# What YAML allows in a stream (PyYAML's Reader.NON_PRINTABLE): tab, newlines, printable text.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _decode(file: str, raw: bytes) -> str | PolicyIssue:
    """``raw`` as text, or the one issue that says why it is not a policy file's UTF-8 text."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            what = f"the file is {encoding} text (it starts with a {encoding} byte-order mark)"
            return PolicyIssue(file, 1, "", f"{what}; save it as UTF-8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        if raw.count(b"\x00") * 4 >= len(raw):  # ASCII text in UTF-16/32 is one NUL in every 2 or 4 bytes
            what = "the file contains NUL bytes: it looks like UTF-16 or UTF-32 text"
            return PolicyIssue(file, line, "", f"{what}; save it as UTF-8")
        return PolicyIssue(file, line, "", "the file contains a NUL byte; a policy file is UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return PolicyIssue(file, line, "", "the file is not valid UTF-8 text")
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        what = f"the file contains the control character U+{ord(bad.group()):04X}"
        return PolicyIssue(file, line, "", f"{what}, which YAML does not allow")
    return text


def _read_source(path: Path, allowance: int) -> tuple[int, _Source | list[PolicyIssue]]:
    """Read, decode and parse one file, reading at most ``allowance`` bytes: ``(bytes
    counted against the allowance, the parsed file or its issues)``; the count exceeds
    ``allowance`` when the file does not fit in it."""
    raw = _read_bytes(path, allowance)
    if isinstance(raw, PolicyIssue):
        return (allowance + 1 if raw.message.startswith(_TOO_MUCH) else 0), [raw]
    return len(raw), _parse_source(str(path), raw)


def _parse_source(file: str, raw: bytes) -> _Source | list[PolicyIssue]:
    text = _decode(file, raw)
    if isinstance(text, PolicyIssue):
        return [text]
    try:
        loader = _PolicyYamlLoader(text)
    except yaml.YAMLError as exc:  # pragma: no cover - _decode refuses what the Reader refuses
        return [PolicyIssue(file, 0, "", f"invalid YAML: {exc}")]
    try:
        document = loader.load_document()
    except _Refused as exc:
        return [PolicyIssue(file, exc.line, dotted_key(exc.loc), exc.message)]
    except yaml.MarkedYAMLError as exc:
        return [_yaml_issue(file, exc)]
    except yaml.YAMLError as exc:
        return [PolicyIssue(file, 0, "", f"invalid YAML: {exc}")]
    except (RecursionError, MemoryError):
        # The limits above should make these impossible; if one still happens, it is a
        # refusal like any other, never an exception escaping a reload.
        return [PolicyIssue(file, 0, "", "the file is too large or too deeply nested to read")]
    finally:
        loader.dispose()
    if loader.issues:
        return [PolicyIssue(file, line, dotted_key(loc), message) for line, loc, message in loader.issues]
    if document is None:
        return [PolicyIssue(file, 0, "", "the file is empty; expected a mapping of policy settings")]
    if not isinstance(document, dict):
        return [
            PolicyIssue(
                file,
                loader.root_line,
                "",
                f"the file must contain a mapping of policy settings, got {describe(document)}",
            )
        ]
    return _Source(file, raw, document, loader.lines)


def _yaml_issue(file: str, exc: yaml.MarkedYAMLError) -> PolicyIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 0
    context = exc.context
    if context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
        context += f" (line {exc.context_mark.line + 1})"
    what = ", ".join(part for part in (context, exc.problem) if part)
    return PolicyIssue(file, line, "", f"invalid YAML: {what}")


class _Refused(Exception):
    """A document past a limit (too many nodes, too deep, an alias bomb): stop building."""

    def __init__(self, line: int, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.line, self.loc, self.message = line, loc, message


_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT = (_TAG + name for name in ("str", "null", "bool", "int", "float"))
_SEQ, _MAP, _MERGE = (_TAG + name for name in ("seq", "map", "merge"))
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_INT_TEXT = re.compile(r"[-+]?[0-9]+")
_DECIMAL_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}


class _PolicyYamlLoader(Reader, Scanner, Parser, Composer, BaseResolver):
    """PyYAML's reader, scanner, parser and composer, with our own resolver and builder.

    :meth:`load_document` returns the document with plain dicts, lists and scalars (floats
    as :class:`Decimal`, mapping keys as their literal text), and fills :attr:`lines`
    (location -> 1-based line of the key or list item) and :attr:`issues` (duplicate keys,
    keys that are not scalars, recursive aliases, unusable scalars:
    ``(line, location, message)``). It raises :class:`_Refused` past a limit: more than
    :data:`MAX_NODES` nodes composed, nesting deeper than :data:`MAX_DEPTH` (checked while
    composing, so PyYAML's recursive composer never gets deep), or more than
    :data:`MAX_ALIAS_NODES` nodes built through aliases (the "billion laughs").

    Only PyYAML's constructors are not used: every scalar is converted here, so no
    constructor can raise what a policy error should say (``2024-13-45`` is text, not a
    broken date; ``!!binary`` is refused, not decoded).
    """

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)
        self.lines: dict[Loc, int] = {}
        self.issues: list[tuple[int, Loc, str]] = []
        self.root_line = 0
        self._composed = 0  # nodes made by the composer
        self._depth = 0  # the composer's current nesting
        self._built: set[int] = set()  # ids of nodes built once: building one again is an alias
        self._open: set[int] = set()  # collections being built: meeting one again is a recursive alias
        self._checked: set[int] = set()  # ids of mappings whose own keys were checked
        self._alias_lines: dict[tuple[int, int], int] = {}  # (id(list), index) -> line of an alias item
        self._alias: tuple[int, Loc] | None = None  # the outermost alias being expanded: (line, loc)
        self._alias_nodes = 0

    # -- scanning and composing: bounded --------------------------------------------------

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner reads ahead while a "[" or "{" may still start a key, with a cost that
        # grows with the square of the flow nesting: refuse deep flow nesting right here.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(self.line + 1, (), f"nested more than {MAX_DEPTH} levels deep")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):  # an alias makes no new node; keep where it is
            if isinstance(parent, yaml.SequenceNode):
                self._alias_lines[(id(parent), index)] = line
        else:
            self._composed += 1
            if self._composed > MAX_NODES:
                raise _Refused(line, (), f"the file has more than {MAX_NODES:,} YAML nodes (keys, values, items)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # the document itself is depth 1
                raise _Refused(line, (), f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    # -- building: bounded -------------------------------------------------------------

    def load_document(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self.root_line = node.start_mark.line + 1
        return self._build(node, ())

    def _line(self, node: yaml.Node, loc: Loc) -> int:
        return self.lines.get(loc, node.start_mark.line + 1)

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        if len(loc) > MAX_DEPTH:  # only through aliases: the composer refuses deeper text
            line = self._alias[0] if self._alias is not None else self._line(node, loc)
            raise _Refused(line, loc, f"nested more than {MAX_DEPTH} levels deep")
        again = id(node) in self._built
        entering_alias = again and self._alias is None
        if entering_alias:
            self._alias = (self._line(node, loc), loc)
        try:
            self._count()
            self._built.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                return self._scalar(node, loc, report=not again)
            if id(node) in self._open:
                self.issues.append((self._line(node, loc), loc, "recursive alias"))
                return None
            self._open.add(id(node))
            try:
                if isinstance(node, yaml.SequenceNode):
                    if not again:
                        self._collection_tag(node, _SEQ, loc)
                    items = []
                    for index, child in enumerate(node.value):
                        where = self._alias_lines.get((id(node), index), child.start_mark.line + 1)
                        self.lines[(*loc, index)] = where
                        items.append(self._build(child, (*loc, index)))
                    return items
                assert isinstance(node, yaml.MappingNode)
                if not again:
                    self._collection_tag(node, _MAP, loc)
                return self._build_mapping(node, loc)
            finally:
                self._open.discard(id(node))
        finally:
            if entering_alias:
                self._alias = None

    def _count(self) -> None:
        """One more node built; past MAX_ALIAS_NODES built through aliases, refuse at the alias."""
        if self._alias is None:
            return
        self._alias_nodes += 1
        if self._alias_nodes > MAX_ALIAS_NODES:
            line, loc = self._alias
            raise _Refused(
                line,
                loc,
                f"aliases expand to more than {MAX_ALIAS_NODES:,} YAML nodes (keys, values, items); "
                "write the values out, or share less through anchors",
            )

    def _collection_tag(self, node: yaml.Node, expected: str, loc: Loc) -> None:
        if node.tag != expected:
            self.issues.append((self._line(node, loc), loc, _unsupported_tag(node.tag)))

    def _build_mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in self._entries(node, loc).items():
            self.lines[(*loc, key)] = key_node.start_mark.line + 1
            result[key] = self._build(value_node, (*loc, key))
        return result

    def _entries(self, node: yaml.MappingNode, loc: Loc) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's ``key -> (key node, value node)`` with ``<<`` merges applied as the
        YAML merge key spec says: the mapping's own keys override merged ones, and of several
        merged mappings (``<<: [*a, *b]``, or several ``<<`` keys) the first listed wins. A
        key's position is its first appearance in (merged entries, then own entries).
        Duplicates among the mapping's own keys are issues (merged keys may be overridden).

        (PyYAML 6.0.4's own ``flatten_mapping`` decides between merged keys by the identity
        of the key strings, so its answer for ``<<: [*a, *b]`` depends on string interning.)"""
        report = id(node) not in self._checked  # a mapping's own keys are checked once
        self._checked.add(id(node))
        merged: list[tuple[str, tuple[yaml.Node, yaml.Node]]] = []
        own: list[tuple[str, tuple[yaml.Node, yaml.Node]]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                merged += self._merged_entries(value_node, loc, line, report=report)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                if report:
                    self.issues.append((line, loc, "mapping keys must be plain names, not lists or mappings"))
                continue
            key = str(key_node.value)
            if report:
                self._text(key, line, (*loc, key))
                if key in first_line:
                    self.issues.append((line, (*loc, key), f"duplicate key; first defined on line {first_line[key]}"))
            first_line.setdefault(key, line)
            own.append((key, (key_node, value_node)))
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, pair in merged:
            self._count()
            entries.setdefault(key, pair)  # of the merged mappings, the first listed wins
        for key, pair in own:
            self._count()
            entries[key] = pair  # the mapping's own keys override merged ones
        return entries

    def _merged_entries(
        self, value: yaml.Node, loc: Loc, line: int, *, report: bool
    ) -> list[tuple[str, tuple[yaml.Node, yaml.Node]]]:
        listed = value.value if isinstance(value, yaml.SequenceNode) else [value]
        sources = [source for source in listed if isinstance(source, yaml.MappingNode)]
        if len(sources) != len(listed):
            if report:
                self.issues.append((line, loc, "a merge key (<<) takes a mapping or a list of mappings"))
            return []
        if len(loc) > MAX_DEPTH:
            raise _Refused(line, loc, f"merge keys (<<) nested more than {MAX_DEPTH} levels deep")
        out: list[tuple[str, tuple[yaml.Node, yaml.Node]]] = []
        for source in sources:
            if id(source) in self._open:
                if report:
                    self.issues.append((line, loc, "recursive alias"))
                continue
            entering_alias = self._alias is None and id(source) in self._built
            if entering_alias:
                self._alias = (line, loc)
            self._built.add(id(source))
            self._open.add(id(source))
            try:
                out += self._entries(source, (*loc, "<<")).items()
            finally:
                self._open.discard(id(source))
                if entering_alias:
                    self._alias = None
        return out

    # -- scalars -------------------------------------------------------------------------

    def _scalar(self, node: yaml.ScalarNode, loc: Loc, *, report: bool) -> Any:
        """The scalar's value; an unusable one is an issue (reported on its first build only)."""
        tag, text = node.tag, str(node.value)
        problem = ""
        value: Any = None
        if tag == _STR:
            value, problem = text, _text_problem(text)
        elif tag == _NULL:
            value = None
        elif tag == _BOOL:
            if text in _TRUE | _FALSE:
                value = text in _TRUE
            else:
                problem = f"{describe(text)} is not a boolean (true or false)"
        elif tag in (_INT, _FLOAT):
            value, problem = _number(text, integer=tag == _INT)
        else:
            problem = _unsupported_tag(tag)
        if problem and report:
            self.issues.append((self._line(node, loc), loc, problem))
        return value

    def _text(self, text: str, line: int, loc: Loc) -> None:
        problem = _text_problem(text)
        if problem:
            self.issues.append((line, loc, problem))


def _unsupported_tag(tag: str) -> str:
    shown = "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag
    return f"the YAML tag {describe(shown)} is not supported; write plain values"


def _text_problem(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a "\ud800" escape: a lone surrogate is not Unicode text
        return "contains an escaped surrogate (\\ud800 to \\udfff), which is not valid text"
    return ""


def _number(text: str, *, integer: bool) -> tuple[int | Decimal | None, str]:
    """``(value, "")``: an integer or the exact decimal of the operator's digits; else
    ``(None, problem)``. The text is bounded first, so no conversion is ever slow or huge."""
    if len(text) > MAX_NUMBER_CHARS:
        return None, f"a number of {len(text):,} characters is too long (at most {MAX_NUMBER_CHARS})"
    digits = text.replace("_", "")
    if integer:
        if _INT_TEXT.fullmatch(digits):
            return int(digits), ""
        return None, f"{describe(text)} is not a decimal integer"
    special = _SPECIAL_FLOATS.get(digits.lower())
    if special is None and not _DECIMAL_TEXT.fullmatch(digits):
        return None, f"{describe(text)} is not a decimal number"
    try:
        return Decimal(special or digits), ""
    except InvalidOperation:  # an exponent beyond even Decimal's range
        return None, f"{describe(text)} is out of range"


# Implicit types of plain (unquoted) scalars: the YAML 1.2 core schema's decimal forms,
# read exactly. Everything else is text: yes/no/on/off, 010, 0x10, 0b1, 1:30, dates.
_PolicyYamlLoader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)\Z"), ["~", "n", "N", ""])
_PolicyYamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)\Z"), list("tTfF"))
_PolicyYamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)\Z"), list("-+0123456789"))
_PolicyYamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))\Z""",
        re.VERBOSE,
    ),
    list("-+.0123456789"),
)
_PolicyYamlLoader.add_implicit_resolver(_MERGE, re.compile(r"^<<\Z"), ["<"])


# --- merging ------------------------------------------------------------------------------


def _owner(loc: Loc) -> Loc:
    """The unit of ownership of ``loc`` in a merge: a tier / price pattern, else a top-level key."""
    return loc[:2] if loc and loc[0] in MERGED_SECTIONS and len(loc) >= 2 else loc[:1]


def _merge(
    sources: list[_Source],
) -> tuple[dict[str, Any], dict[Loc, tuple[str, int]], list[PolicyIssue]]:
    """Merge parsed files into one document; also return where every location comes from."""
    merged: dict[str, Any] = {}
    defined_at: dict[Loc, tuple[str, int]] = {}  # owner -> (file, line) of its first definition
    issues: list[PolicyIssue] = []

    def claim(source: _Source, owner: Loc) -> bool:
        line = source.lines[owner]
        if owner in defined_at:
            first_file, first_line = defined_at[owner]
            issues.append(
                PolicyIssue(
                    source.file,
                    line,
                    dotted_key(owner),
                    f"also defined in {first_file}:{first_line}; each tier, price pattern and "
                    "top-level setting may be defined in one file only",
                )
            )
            return False
        defined_at[owner] = (source.file, line)
        return True

    where: dict[Loc, tuple[str, int]] = {}
    for source in sources:
        accepted: set[Loc] = set()
        for key, value in source.data.items():
            section = merged.get(key)
            if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(section, dict | None):
                target: dict[str, Any] = merged.setdefault(key, {})
                # A later file may add entries to the section, but not replace it by a non-mapping.
                defined_at.setdefault((key,), (source.file, source.lines[(key,)]))
                where.setdefault((key,), (source.file, source.lines[(key,)]))
                for name, entry in value.items():
                    if claim(source, (key, name)):
                        target[name] = entry
                        accepted.add((key, name))
            elif claim(source, (key,)):
                merged[key] = value
                accepted.add((key,))
        for loc, line in source.lines.items():
            if _owner(loc) in accepted:
                where[loc] = (source.file, line)
    return merged, where, issues


# --- issues -------------------------------------------------------------------------------


def _raise_if(issues: list[PolicyIssue]) -> None:
    if issues:
        raise _policy_error(issues)


def _policy_error(issues: list[PolicyIssue]) -> PolicyError:
    """Issues in reading order: by file, then line (stable within a line); at most
    :data:`MAX_ISSUES`, the rest counted in the last one, so a hostile file cannot make
    the error (and ``GetPolicyStatus.last_error``) huge."""
    ordered = sorted(issues, key=lambda issue: (issue.file, issue.line))
    if len(ordered) > MAX_ISSUES:
        rest = ordered[MAX_ISSUES - 1 :]
        more = PolicyIssue(rest[0].file, rest[0].line, "", f"and {len(rest):,} more issues from here on")
        ordered = [*ordered[: MAX_ISSUES - 1], more]
    return PolicyError(ordered)


def _locate(loc: Loc, where: dict[Loc, tuple[str, int]], label: str) -> tuple[str, int]:
    """File and line of ``loc``, else of its nearest ancestor (a missing key is reported at
    its parent); a top-level key that is nowhere is reported at ``label``, line 0."""
    for end in range(len(loc), 0, -1):
        found = where.get(loc[:end])
        if found is not None:
            return found
    return label, 0


def _issue(loc: Loc, message: str, where: dict[Loc, tuple[str, int]], label: str) -> PolicyIssue:
    file, line = _locate(loc, where, label)
    return PolicyIssue(file, line, dotted_key(loc), message)


def _unknown_key(loc: Loc) -> str:
    allowed = allowed_keys(loc[:-1])
    if not allowed:
        return "unknown key"
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; expected one of: {', '.join(allowed)}"


_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}


def _from_pydantic(err: ErrorDetails, where: dict[Loc, tuple[str, int]], label: str) -> PolicyIssue:
    loc: Loc = tuple(err["loc"])
    if loc and loc[-1] == "[key]":  # the key itself is wrong: report it at its own line
        loc = loc[:-1]
    kind = err["type"]
    if kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "string_too_short":
        message = "must not be empty"
    elif kind in _TYPE_MESSAGES:
        given = err["input"]
        hint = number_hint(given) if kind == "int_type" and isinstance(given, str) else ""
        message = f"{_TYPE_MESSAGES[kind]}, got {describe(given)}{hint}"
    else:
        message = err["msg"]
    return _issue(loc, message, where, label)


def _content_version(sources: list[_Source]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        name = Path(source.file).name.encode()
        digest.update(b"%d:%s%d:" % (len(name), name, len(source.raw)))
        digest.update(source.raw)
    return digest.hexdigest()[:VERSION_HEX_CHARS]
