"""Redis key layout. Every key of one subject carries the hash tag ``{subject}``, so one
Lua script touches one cluster slot; company-wide keys live under ``{__global__}``.

=======================================  =========================================================
key                                      holds
=======================================  =========================================================
``q:{S}:<metric>:<window>:<window_id>``  hash ``used``, ``held`` (units); expires after the window
``r:{S}:<reservation_id>``               hash: the reservation record (state, charges, meta, ...)
``i:{S}:<request_id>``                   the reservation id (or denial record) of a request_id
``z:{S}:open``                           zset: open reservation ids scored by expires_at (ms)
``c:{S}``                                hash: subject config (``tier``, ``version``)
``o:{S}``                                hash: overrides, field ``<metric>:<window>`` -> JSON
=======================================  =========================================================

``S`` is the subject id or ``__global__``. Subject ids never contain ``{``, ``}``,
whitespace or control characters (validated at the edge), so the tag is exactly ``S``.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from quota_service.errors import InvalidRequest, shown
from quota_service.policy.domain import CounterRef

RESERVATION_PREFIX = "rsv_"
#: The longest reservation id this service issues: the prefix, base64 of a subject of at most
#: 256 bytes (344 characters), a dot and the nonce.
MAX_RESERVATION_ID_CHARS = 400


def tag(scope: str) -> str:
    return "{" + scope + "}"


def counter_key(ref: CounterRef) -> str:
    return f"q:{tag(ref.scope)}:{ref.metric}:{ref.window.value}:{ref.window_id}"


def reservation_key(scope: str, reservation_id: str) -> str:
    return f"r:{tag(scope)}:{reservation_id}"


def request_key(scope: str, request_id: str) -> str:
    return f"i:{tag(scope)}:{request_id}"


def open_set_key(scope: str) -> str:
    return f"z:{tag(scope)}:open"


def config_key(subject: str) -> str:
    return f"c:{tag(subject)}"


def overrides_key(subject: str) -> str:
    return f"o:{tag(subject)}"


def new_reservation_id(subject: str) -> str:
    """An opaque, unguessable id that still tells the server which slot to look in:
    ``rsv_<base64url(subject)>.<32 hex>``."""
    encoded = base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")
    return f"{RESERVATION_PREFIX}{encoded}.{secrets.token_hex(16)}"


def subject_of(reservation_id: str) -> str:
    """The subject a reservation id belongs to; :class:`InvalidRequest` if it is not one of ours."""
    if (
        len(reservation_id) > MAX_RESERVATION_ID_CHARS
        or not reservation_id.startswith(RESERVATION_PREFIX)
        or "." not in reservation_id
    ):
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is not a reservation id issued by this service")
    encoded, _, nonce = reservation_id[len(RESERVATION_PREFIX) :].rpartition(".")
    if len(nonce) != 32:
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed")
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        subject = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed") from exc
    if not subject:
        raise InvalidRequest(f"reservation_id {shown(reservation_id)} is malformed")
    return subject
