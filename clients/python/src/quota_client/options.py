"""Client options: retries, fail mode, TLS. All immutable; durations are seconds."""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from pathlib import Path


class FailMode(enum.StrEnum):
    """What a guarded call does when quota-service stays unreachable past the deadline.

    * ``CLOSED`` (default): raise :class:`~quota_client.errors.QuotaUnavailable`; the provider
      is not called. Right for money: nothing unmetered happens.
    * ``OPEN``: proceed, log a warning, and mark the decision ``unverified``; its commit and
      release are no-ops that log the usage that went unrecorded.
    """

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``.

    Only those two are ever retried (``DEADLINE_EXCEEDED`` because every call the clients
    make is idempotent: see ``quota_client._wire.retryable``). ``INTERNAL`` (a bug on the
    service, e.g. a Commit that hit damaged data), ``INVALID_ARGUMENT``,
    ``FAILED_PRECONDITION``, ``NOT_FOUND``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED``,
    ``RESOURCE_EXHAUSTED`` and every other status are raised at once, whatever this policy says.

    ``max_attempts`` counts the first try (1 = never retry). Before retry ``n`` (1-based)
    the client sleeps ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` scaled by
    a random factor in ``[1 - jitter, 1]``. Every retry carries the same ``request_id``, so
    the service counts it once. The client's ``deadline`` bounds the whole sequence: no retry
    starts when too little of the deadline would be left for it.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.initial_backoff >= 0 and self.max_backoff >= self.initial_backoff):
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if not self.multiplier >= 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError("retry is 1-based")
        exponent = min(retry - 1, 64)  # beyond that every delay is max_backoff anyway
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        draw = (rng or random).random()
        return ceiling * (1 - self.jitter * draw)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel; with a client certificate and key, mutual TLS.

    ``root_certificates``: PEM of the CAs to trust (``None``: the system's roots).
    ``certificate_chain`` / ``private_key``: the client's PEM certificate and key, both or
    neither. ``server_name``: the name to verify the server's certificate against when it
    differs from the target's host (sets ``grpc.ssl_target_name_override``).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mTLS needs both certificate_chain and private_key (or neither)")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        *,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read PEM files: ``ca`` to trust, ``cert``/``key`` for mTLS."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)


# Reconnect quickly after the service comes back: gRPC's own default backoff grows to 120 s,
# during which every call on the channel would fail fast with UNAVAILABLE.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


#: Channels (TCP connections) one client opens by default; see ``ClientBase`` and the README.
#: Not ``os.cpu_count()``: the client's cores say nothing about how many workers the
#: service runs. 4 lets the kernel spread one client over a ``--workers 2`` or ``4`` server
#: (all 4 on one of 2 workers: 1 in 8) at 4 idle HTTP/2 connections per client process;
#: a single client carrying heavy load should set ``channels`` to 2-4x the workers.
DEFAULT_CHANNELS = 4

#: The channel argument that makes each of a client's channels distinct: gRPC shares one
#: subchannel (one TCP connection) between channels whose arguments are all equal.
CHANNEL_INDEX_ARG = "quota.channel_index"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Everything a client was configured with (see :class:`~quota_client.QuotaClient`)."""

    deadline: float = 2.0
    attempt_timeout: float = 0.5
    retry: RetryPolicy = RetryPolicy()
    fail_mode: FailMode = FailMode.CLOSED
    tls: TlsConfig | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    require_commit: bool = False
    channel_options: tuple[tuple[str, str | int], ...] = DEFAULT_CHANNEL_OPTIONS
    channels: int = DEFAULT_CHANNELS

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        for name in ("deadline", "attempt_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
