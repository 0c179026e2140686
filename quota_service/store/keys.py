"""Redis key layout and reservation ids.

Every key of one subject carries the hash tag ``{S}`` (``S`` the subject id, or
``__global__`` for company-wide keys), so one Lua script touches one cluster slot. Key
kinds are one letter (mirrored in ``lua/lib.lua``'s ``KEY`` table; a unit test checks both
agree); what each key holds, how long it lives and why:

===========================================  ================================================================
key                                          holds; lives
===========================================  ================================================================
``q:{S}:<metric>:<window>:<window_id>``      hash ``used``, ``held`` (units). Until the window's end plus the
                                             store's ``retention_seconds`` (1 day): late commits land on it.
``r:{S}:<name>``                             one request's record (see :mod:`quota_service.store.protocol`):
                                             while its reservation is **open** (or **expired**, i.e. settled
                                             at its estimate), a hash with everything a settlement needs;
                                             once **committed or released**, or for a **denied** request, a
                                             tombstone string of about 60 bytes with just what replays and
                                             repeated settlements read. It is the request_id's recorded answer
                                             too: ``name`` is derived from (subject, request_id). Open: as long
                                             as the counters it holds on (the sweep must find it); expired:
                                             ``max(now, expires) + grace``; tombstone: ``max(now, expires) +
                                             grace``. In ``{__global__}``, ``name`` is the whole nonce of the
                                             reservation id, and the record is deleted once committed or
                                             released (replays answer from the subject's record).
``z:{S}:open``                               zset: names of the open records, scored by expires_ms (the sweep
                                             settles them at their estimate). As long as its longest record.
``a:{S}:<digest>``                           the shared part of records, content-addressed: the estimated
                                             metrics, rates, meta and the recorded ``answer`` text. As long as
                                             the longest record naming it (many requests share one).
``l:{S}:<digest>``                           a tombstone's plan digest and counters (``<metric>:<window>:
                                             <window_id>@<resets_at>`` each; own, then company-wide),
                                             content-addressed. As long as the longest tombstone naming it.
``c:{S}``                                    hash: subject config (``tier``, ``version``). No expiry.
``o:{S}``                                    hash: overrides, field ``<metric>:<window>`` -> JSON. No expiry.
``x:{T}``                                    stream: the **outbox** of the slot's usage records and threshold
                                             crossings, appended by the same script call as the counter change
                                             each describes; drained into the ledger by the usage relay (entries
                                             deleted once stored). Bounded by the store's ``outbox_cap``.
``e:{T}``                                    zset: the slot's **due index**, scope -> the earliest expiry of its
                                             open records (the reaper settles expired ones without waiting for
                                             the subject's next request).
===========================================  ================================================================

``T`` is a **slot tag**: on one Redis the fixed ``~`` (one outbox, one index); on Redis
Cluster a short string in the same hash slot as the scope (:func:`slot_tag`), so the
script that changes a subject's counters may append to its slot's outbox, and a relay
finds every outbox among 16,384 keys rather than one per subject.

Subject ids never contain ``{``, ``}``, whitespace or control characters (validated at
the edge), so the tag is exactly ``S``.

A reservation id is ``rsv_<base64url(subject)>.<nonce>``: the subject tells the server
which slot to look in; the nonce is 32 characters of ``[A-Za-z0-9_-]``: the record's name
(16) and its generation (16, random). With a request_id, the name is derived from
(subject, request_id) (a replay returns the id anyway, so this leaks nothing), which
makes the record its request_id's answer; the random generation keeps the id
unguessable and tells a reservation from a later one of the same request_id (made after
the first was forgotten).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

from quota_service.errors import InvalidRequest, shown
from quota_service.policy.domain import CounterRef

RESERVATION_PREFIX: Final = "rsv_"
#: The longest reservation id this service issues: the prefix, base64 of a subject of at most
#: 256 bytes (344 characters), a dot and the nonce.
MAX_RESERVATION_ID_CHARS: Final = 400
#: Characters of a reservation id's nonce: the record name, then the generation.
NONCE_CHARS: Final = 32
NAME_CHARS: Final = 16
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{32}")

#: Key kinds (the first letter of every key); mirrored in lua/lib.lua's KEY table.
COUNTER: Final = "q"
RECORD: Final = "r"
OPEN: Final = "z"
PLAN: Final = "a"
LAYOUT: Final = "l"
CONFIG: Final = "c"
OVERRIDES: Final = "o"
OUTBOX: Final = "x"
DUE: Final = "e"
GRANT: Final = "f"
BOARD: Final = "t"
#: The slot tag of the one outbox and due index of a single Redis.
SINGLE_TAG: Final = "~"
#: Hash slots of Redis Cluster.
SLOTS: Final = 16384


def tag(scope: str) -> str:
    return "{" + scope + "}"


def _key(kind: str, scope: str, name: str) -> str:
    return f"{kind}:{{{scope}}}:{name}"


def counter_name(ref: CounterRef) -> str:
    """The part of a counter's key after its scope: ``<metric>:<window>:<window_id>``."""
    # ``Window`` is a StrEnum: it formats as its value (no enum property lookup per call).
    return f"{ref.metric}:{ref.window}:{ref.window_id}"


def counter_key(ref: CounterRef) -> str:
    """``q:{<scope>}:<metric>:<window>:<window_id>`` (:func:`counter_name` after the scope)."""
    return f"{COUNTER}:{{{ref.scope}}}:{ref.metric}:{ref.window}:{ref.window_id}"


def record_key(scope: str, name: str) -> str:
    return _key(RECORD, scope, name)


def open_set_key(scope: str) -> str:
    return _key(OPEN, scope, "open")


def plan_key(scope: str, digest: str) -> str:
    return _key(PLAN, scope, digest)


def layout_key(scope: str, digest: str) -> str:
    return _key(LAYOUT, scope, digest)


def config_key(subject: str) -> str:
    return f"{CONFIG}:{tag(subject)}"


def overrides_key(subject: str) -> str:
    return f"{OVERRIDES}:{tag(subject)}"


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For every hash slot, the shortest decimal string found in it (computed once, about
    0.2 s: the first strings that cover all 16,384 slots)."""
    from redis.crc import key_slot  # the client library's own CRC16 (what the cluster uses)

    tags: list[str | None] = [None] * SLOTS
    missing, n = SLOTS, 0
    while missing:
        text = str(n)
        slot = key_slot(text.encode())
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_of(scope: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(tag(scope).encode()))


def slot_tag(scope: str) -> str:
    """The slot tag of ``scope``'s slot on Redis Cluster (see the table above)."""
    return _slot_tags()[slot_of(scope)]


def all_slot_tags() -> tuple[str, ...]:
    """Every slot's tag, in slot order (Redis Cluster)."""
    return _slot_tags()


def outbox_key(slot_tag_: str) -> str:
    return f"{OUTBOX}:{{{slot_tag_}}}"


def due_key(slot_tag_: str) -> str:
    return f"{DUE}:{{{slot_tag_}}}"


def board_key(slot_tag_: str, metric: str, window: str, window_id: str) -> str:
    """The slot's top spenders of one concrete day or month window (lib.lua note_used)."""
    return f"{BOARD}:{{{slot_tag_}}}:{metric}:{window}:{window_id}"


def grant_key(scope: str, name: str) -> str:
    """A fail-open grant's marker (charge.lua): its write-back happens once."""
    return _key(GRANT, scope, name)


def digest(text: str) -> str:
    """8 characters (48 bits) naming ``text`` among one subject's shared texts."""
    return base64.urlsafe_b64encode(hashlib.blake2b(text.encode(), digest_size=6).digest()).decode()


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    """Unpadded base64url (``base64.urlsafe_b64encode`` without its Python-level wrapper)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).decode().rstrip("=")


@functools.lru_cache(maxsize=4096)
def _subject_b64(subject: str) -> str:
    """A subject's part of its reservation ids (remembered for the subjects seen lately)."""
    return _b64(subject.encode())


def request_name(subject: str, request_id: str) -> str:
    """The record name of ``request_id``'s answer (16 characters, the same for every replay)."""
    raw = hashlib.blake2b(f"{subject}\0{request_id}".encode(), digest_size=12, person=b"quota-request").digest()
    return _b64(raw)


@dataclass(frozen=True, slots=True)
class ReservationName:
    """A reservation id taken apart: whose it is, its record's name and its generation."""

    subject: str
    name: str
    generation: str

    @property
    def nonce(self) -> str:
        return self.name + self.generation

    @property
    def reservation_id(self) -> str:
        return f"{RESERVATION_PREFIX}{_subject_b64(self.subject)}.{self.name}{self.generation}"


def new_reservation_id(subject: str, request_id: str = "") -> str:
    """An unguessable id for a new reservation of ``subject``: ``rsv_<base64url(subject)>.<nonce>``.

    With ``request_id``, the record name is :func:`request_name` (the store derives it
    anyway, see :func:`for_request`); the generation is always random."""
    name = request_name(subject, request_id) if request_id else _b64(secrets.token_bytes(12))
    return f"{RESERVATION_PREFIX}{_subject_b64(subject)}.{name}{_b64(secrets.token_bytes(12))}"


def for_request(reservation_id: str, request_id: str) -> ReservationName:
    """The reservation a command with ``reservation_id`` and ``request_id`` makes: the
    generation of ``reservation_id`` with the record name of ``request_id`` (unchanged
    without one). :class:`InvalidRequest` if the id is not one of ours."""
    parsed = parse(reservation_id)
    if not request_id:
        return parsed
    return ReservationName(parsed.subject, request_name(parsed.subject, request_id), parsed.generation)


def parse(reservation_id: str) -> ReservationName:
    """The parts of a reservation id; :class:`InvalidRequest` if it is not one of ours."""
    if (
        len(reservation_id) > MAX_RESERVATION_ID_CHARS
        or not reservation_id.startswith(RESERVATION_PREFIX)
        or "." not in reservation_id
    ):
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is not a reservation id issued by this service")
    encoded, _, nonce = reservation_id[len(RESERVATION_PREFIX) :].rpartition(".")
    if not _NONCE.fullmatch(nonce):
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed")
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        subject = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed") from exc
    if not subject:
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed")
    return ReservationName(subject, nonce[:NAME_CHARS], nonce[NAME_CHARS:])


def subject_of(reservation_id: str) -> str:
    """The subject a reservation id belongs to; :class:`InvalidRequest` if it is not one of ours."""
    return parse(reservation_id).subject
