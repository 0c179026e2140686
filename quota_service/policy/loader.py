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

YAML details: floats are read as exact :class:`~decimal.Decimal` of their literal text
(``0.95`` -> ``Decimal("0.95")``); mapping keys are read as their literal text (``on:`` is
the key ``"on"``, not ``True``); a key repeated in one mapping is an error (PyYAML would
silently keep the last); anchors, aliases and ``<<`` merge keys work.

This module is the only one in the package that imports :mod:`yaml`, and the one place
where YAML and pydantic errors become :class:`PolicyIssue`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from quota_service.errors import PolicyError, PolicyIssue
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.compiler import compile_policy
from quota_service.policy.model import Loc, PolicyModel, allowed_keys, describe, semantic_issues

__all__ = ["POLICY_SUFFIXES", "dotted_key", "load_policy", "policy_files"]

POLICY_SUFFIXES = (".yaml", ".yml")
#: Top-level sections whose entries several files of a directory may contribute to.
MERGED_SECTIONS = ("tiers", "prices")
VERSION_HEX_CHARS = 16

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
    for file in files:
        source = _read_source(file)
        if isinstance(source, _Source):
            sources.append(source)
        else:
            issues += source
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


def _read_source(path: Path) -> _Source | list[PolicyIssue]:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [PolicyIssue(file, 0, "", f"cannot read the file: {_reason(exc)}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [PolicyIssue(file, line, "", "the file is not valid UTF-8 text")]
    loader = _PolicyYamlLoader(text)
    try:
        document = loader.load_document()
    except yaml.MarkedYAMLError as exc:
        return [_yaml_issue(file, exc)]
    except yaml.YAMLError as exc:
        return [PolicyIssue(file, 0, "", f"invalid YAML: {exc}")]
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


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    """A YAML float as the exact decimal its text says (``0.95`` -> ``Decimal("0.95")``)."""
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node)).replace("_", "").lower()
    specials = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}
    try:
        return Decimal(specials.get(text, text))
    except InvalidOperation:  # YAML 1.1 base-60 floats ("1:30.5"): rare, read through float
        return Decimal(repr(loader.construct_yaml_float(node)))


class _PolicyYamlLoader(yaml.SafeLoader):
    """SafeLoader that builds the document itself, to know where every key is.

    :meth:`load_document` returns the document with plain dicts, lists and scalars (floats
    as :class:`Decimal`, mapping keys as their literal text), and fills :attr:`lines`
    (location -> 1-based line of the key or list item) and :attr:`issues` (duplicate keys,
    keys that are not scalars, recursive aliases: ``(line, location, message)``).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[Loc, int] = {}
        self.issues: list[tuple[int, Loc, str]] = []
        self.root_line = 0
        self._flattened: set[int] = set()
        self._open: set[int] = set()

    def load_document(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self.root_line = node.start_mark.line + 1
        return self._build(node, ())

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self.construct_object(node, deep=True)
        if id(node) in self._open:
            self.issues.append((self.lines.get(loc, node.start_mark.line + 1), loc, "recursive alias"))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, child in enumerate(node.value):
                    self.lines[(*loc, index)] = child.start_mark.line + 1
                    items.append(self._build(child, (*loc, index)))
                return items
            assert isinstance(node, yaml.MappingNode)
            return self._build_mapping(node, loc)
        finally:
            self._open.discard(id(node))

    def _build_mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        if id(node) not in self._flattened:
            # Duplicates among the mapping's own keys; keys brought in by "<<" may be overridden.
            first_line: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    where = (*loc, key_node.value)
                    self.issues.append(
                        (line, where, f"duplicate key; first defined on line {first_line[key_node.value]}")
                    )
                else:
                    first_line[key_node.value] = line
            self.flatten_mapping(node)
            self._flattened.add(id(node))
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append((line, loc, "mapping keys must be plain names, not lists or mappings"))
                continue
            key = str(key_node.value)
            self.lines[(*loc, key)] = line
            result[key] = self._build(value_node, (*loc, key))
        return result


_PolicyYamlLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


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
    """Issues in reading order: by file, then line (stable within a line)."""
    return PolicyError(sorted(issues, key=lambda issue: (issue.file, issue.line)))


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
        message = f"{_TYPE_MESSAGES[kind]}, got {describe(err['input'])}"
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
