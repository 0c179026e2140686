"""Generate the sync client (``quota_client/client.py``) from the async one (``aio.py``).

The asyncio client is the one source of both; this is the one place the sync twin comes
from (``make sync-client``), the way httpcore writes ``_sync/`` from ``_async/``.
``tests/unit/test_generated_code.py`` regenerates in memory and fails when the committed
``client.py`` differs.

What it does, on the tokens of ``aio.py`` (stdlib :mod:`tokenize`, so code and prose are
told apart and nothing else is touched):

1. the ``async`` and ``await`` keywords are dropped with the blank after them
   (``async def`` -> ``def``, ``async with`` -> ``with``, ``await x`` -> ``x``);
2. every name in :data:`RENAMES` becomes its sync twin, in code and, as a whole word, in
   docstrings and comments (where ``async with`` / ``await`` are dropped too);
3. the few async-only sentences in :data:`PHRASES` get their sync wording;
4. the module docstring is replaced by :data:`MODULE_DOCSTRING` and :data:`HEADER` goes on top.

It refuses (exit 1) when a rename or a phrase no longer occurs in ``aio.py`` (a stale rule),
or when a name in the output still says ``async`` / ``aio`` (a difference a rename cannot
express: give it an async/sync pair in ``quota_client._common`` or ``quota_client._wire``,
the way ``async_sleep`` / ``sleep`` and ``open_async_channel`` / ``open_channel`` are). The
output is not reformatted: ``make lint`` checks it like any module, so a line that ruff
would reflow in ``client.py`` is reflowed in ``aio.py``.

Why not the ``unasync`` package: it maps a ``_async/`` directory onto ``_sync/`` under the
same file name (here ``aio.py`` and ``client.py`` are public module names in one package),
rewrites only identifiers (a docstring would keep saying ``AsyncReservation`` and
``async with``), renames every ``AsyncX`` to ``SyncX`` unless told otherwise, has no check
mode, and imports setuptools at run time. httpcore itself generates with a small script of
its own (``scripts/unasync.py``, with ``--check``); this is that, on tokens instead of lines.

Usage: python scripts/gen_sync_client.py [--check]
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "python" / "src" / "quota_client"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "client.py"

HEADER = (
    "# generated from aio.py by scripts/gen_sync_client.py; do not edit.\n"
    "# Change clients/python/src/quota_client/aio.py and run `make sync-client`.\n"
)

MODULE_DOCSTRING = '''"""The synchronous client: :class:`QuotaClient` and its guard, :class:`Reservation`.

Same options, results, errors and guarantees as :mod:`quota_client.aio`; every call blocks.
A client is thread-safe. Generated from ``aio.py`` by ``scripts/gen_sync_client.py``.
"""'''

#: Async name -> sync twin: identifiers in code, whole words in docstrings and comments.
RENAMES: dict[str, str] = {
    # the public classes
    "AsyncQuotaClient": "QuotaClient",
    "AsyncReservation": "Reservation",
    # the context-manager protocol
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    # quota_pb2_grpc: the stub's type on a grpc.aio channel / on a blocking one
    "QuotaServiceAsyncStub": "QuotaServiceStub",
    # _wire: channels and callables of grpc.aio / of grpc
    "AsyncChannel": "Channel",
    "AsyncUnaryUnaryMultiCallable": "UnaryUnaryMultiCallable",
    "open_async_channel": "open_channel",
    "close_async_channel": "close_channel",
    # _common: asyncio.sleep / time.sleep, coroutine hooks, what guard() decorates
    "async_sleep": "sleep",
    "async_call_warning_hook": "call_warning_hook",
    "async_despite_cancel": "despite_cancel",
    "check_async_guarded": "check_guarded",
    "AsyncProviderCall": "ProviderCall",
    "AsyncGuardedCall": "GuardedCall",
}

#: Async-only wording in docstrings -> the sync wording (applied before the renames).
PHRASES: list[tuple[str, str]] = [
    (
        "An asyncio client of quota-service, bound to the event loop that first uses it.",
        "A blocking client of quota-service. Thread-safe; one per process is plenty.",
    ),
    (" (hooks may be plain or coroutine functions)", ""),
    ("an ``async def`` function (anything else", "a plain function (an ``async def`` one"),
    (" (``asyncio.CancelledError`` too)", ""),
]

_KEYWORDS = frozenset({"async", "await"})
_PROSE = frozenset({tokenize.STRING, tokenize.COMMENT} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)})
_PROSE_KEYWORDS = re.compile(r"\bawait\s+|\basync\s+(?=with\b|for\b)")
_ASYNC_NAME = re.compile(r"async|aio", re.IGNORECASE)


class StaleRules(Exception):
    """aio.py and the rules here no longer fit each other."""


class _Rewriter:
    """The renames and phrases of one run, and which of them were used."""

    def __init__(self, renames: Mapping[str, str], phrases: Sequence[tuple[str, str]]) -> None:
        self.renames = dict(renames)
        self.phrases = list(phrases)
        self.used: set[str] = set()
        self._words = re.compile(r"\b(" + "|".join(map(re.escape, sorted(renames, key=len, reverse=True))) + r")\b")

    def name(self, name: str) -> str:
        self.used.add(name)
        return self.renames[name]

    def prose(self, text: str) -> str:
        for old, new in self.phrases:
            if old in text:
                self.used.add(old)
                text = text.replace(old, new)
        text = _PROSE_KEYWORDS.sub("", text)
        return self._words.sub(lambda match: self.name(match.group(1)), text) if self.renames else text

    def unused(self) -> list[str]:
        return [old for old, _ in self.phrases if old not in self.used] + [
            name for name in self.renames if name not in self.used
        ]


def unasync(
    source: str,
    *,
    renames: Mapping[str, str] = RENAMES,
    phrases: Sequence[tuple[str, str]] = PHRASES,
    docstring: str = MODULE_DOCSTRING,
    header: str = HEADER,
) -> str:
    """The sync twin of ``source`` (the text of ``aio.py``), header included.

    Raises :class:`StaleRules` when a rule is unused or the output keeps an async name.
    """
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        row, col = position
        return starts[row - 1] + col

    rewriter = _Rewriter(renames, phrases)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []
    first = next(t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE))
    if first.type != tokenize.STRING:
        raise StaleRules("aio.py must open with its module docstring")
    edits.append((offset(first.start), offset(first.end), docstring))
    for index, token in enumerate(tokens):
        if token is first:
            continue
        if token.type == tokenize.NAME and token.string in _KEYWORDS:
            following = tokens[index + 1]
            if following.start[0] != token.end[0]:
                raise StaleRules(f"aio.py:{token.start[0]}: `{token.string}` must be followed on its line")
            edits.append((offset(token.start), offset(following.start), ""))
        elif token.type == tokenize.NAME and token.string in rewriter.renames:
            edits.append((offset(token.start), offset(token.end), rewriter.name(token.string)))
        elif token.type in _PROSE:
            begin, end = offset(token.start), offset(token.end)
            if source[begin:end] != token.string:  # e.g. a 3.12 f-string part with "{{"
                raise StaleRules(f"aio.py:{token.start[0]}: cannot rewrite this string; simplify it")
            rewritten = rewriter.prose(token.string)
            if rewritten != token.string:
                edits.append((begin, end, rewritten))
    if rewriter.unused():
        raise StaleRules(f"rules that no longer match aio.py (drop or fix them): {rewriter.unused()}")
    out = source
    for begin, end, text in sorted(edits, reverse=True):
        out = out[:begin] + text + out[end:]
    _check(out)
    return header + out


def _check(out: str) -> None:
    """The output is Python with no async syntax and no name that still says async/aio."""
    compile(out, "client.py", "exec")
    for token in tokenize.generate_tokens(io.StringIO(out).readline):
        if token.type == tokenize.NAME and (token.string in _KEYWORDS or _ASYNC_NAME.search(token.string)):
            raise StaleRules(
                f"client.py:{token.start[0]}: {token.string!r} has no sync twin: add it to RENAMES "
                "or give it an async/sync pair in quota_client._common or quota_client._wire"
            )


def generate() -> str:
    """The text ``client.py`` must have."""
    return unasync(SOURCE.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    try:
        expected = generate()
    except StaleRules as err:
        print(f"gen_sync_client: {err}", file=sys.stderr)
        return 1
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != expected:
            print(f"{TARGET.relative_to(ROOT)} is stale: run `make sync-client` and commit it", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(expected, encoding="utf-8")
    print(TARGET.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
