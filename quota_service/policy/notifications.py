"""The compiled ``notifications`` section and ``ledger_retention_days`` of a policy.

Pure values (no I/O, nothing of the ledger): the server turns each :class:`WebhookSpec`
into a ``quota_service.ledger.webhooks.WebhookEndpoint`` and reads its secret from the
environment variable ``secret_env`` (never from the file). Event kinds are kept as the
contract's names (``THRESHOLD_CROSSED``, ...): :data:`EVENT_KIND_NAMES` lists them in the
order of their numbers in ``proto/quota/v1/events.proto`` (a unit test checks they match).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVENT_KIND_NAMES", "EVENT_KIND_PREFIX", "Notifications", "WebhookSpec"]

#: ``quota.v1.EventKind`` names, 1 to 9 (``EVENT_KIND_UNSPECIFIED`` is no kind to ask for).
EVENT_KIND_NAMES: tuple[str, ...] = (
    "COMMITTED",
    "RELEASED",
    "EXPIRED",
    "CORRECTED",
    "DENIED",
    "THRESHOLD_CROSSED",
    "STOP_CHANGED",
    "ADMIN_CHANGE",
    "SHADOW_DIVERGED",
)
#: A kind may be written with the proto prefix too: ``EVENT_KIND_STOP_CHANGED``.
EVENT_KIND_PREFIX = "EVENT_KIND_"


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """One ``notifications.webhooks`` entry, validated: ``url`` is ``http(s)://host...``
    without credentials, ``secret_env`` an environment variable name, ``kinds`` event kind
    names without the prefix (empty: every kind), ``tiers`` tier names of the policy
    (empty: every tier). ``name``: the operator's label (default: the URL's host)."""

    name: str
    url: str
    secret_env: str
    kinds: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Notifications:
    """Where events are delivered; no webhooks: none."""

    webhooks: tuple[WebhookSpec, ...] = ()
