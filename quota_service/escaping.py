"""Text for a person's screen: every character that could act on a terminal or hide itself
shown as an escape. Used by every operator-facing output (``quotactl`` tables, gRPC status
messages), so a reason or a name can never forge a row, move a cursor or hide text.
"""

from __future__ import annotations

import unicodedata

__all__ = ["visible"]

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` with every character that could act on a terminal or hide itself shown as
    an escape: ``\\n``, ``\\r``, ``\\t``, ``\\x1b`` (C0, DEL, C1 controls), ``\\u202e``
    (format characters: bidi overrides, zero-width spaces, ...; line separators),
    ``\\U000e0041`` beyond the BMP. Everything else, backslashes included, is shown as it
    is: the point is that the operator sees every character, not that the text can be
    decoded back (``--json`` gives the exact value)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _INVISIBLE_CATEGORIES else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
