"""What a ``--redis-url`` names: one Redis, a Redis Cluster by its seed nodes, or a Sentinel-watched master.

=====================================================  ===========================================
URL                                                    what
=====================================================  ===========================================
``redis://[user:pass@]host[:port][/db]``               one Redis (``rediss://``: TLS)
``unix:///path/to/redis.sock``                         one Redis on a Unix socket
``redis+cluster://[user:pass@]h1:p1,h2:p2,h3:p3``      Redis Cluster, discovered from any seed that
                                                       answers (``rediss+cluster://``: TLS)
``redis+sentinel://[user:pass@]h1:p1,h2:p2/name[/db]`` the master the Sentinels call ``name``
                                                       (``rediss+sentinel://``: TLS to Redis)
=====================================================  ===========================================

A port left out is 6379 (26379 for a Sentinel). Hosts may be names, IPv4 addresses or
bracketed IPv6 addresses (``[::1]:7000``). User and password are percent-decoded; for a
Sentinel URL they are Redis' (the Sentinels are asked without them). Anything else (another
scheme, an empty host list, a bad port, a query string on a cluster or Sentinel URL) is a
:class:`ValueError` naming the URL without its password. Pure: nothing is connected here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

__all__ = ["DEFAULT_PORT", "DEFAULT_SENTINEL_PORT", "Deployment", "RedisTarget", "parse_redis_url", "redacted"]

DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379

_SINGLE_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_CLUSTER_SCHEMES: Final = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}
_FORMS: Final = "redis://, rediss://, unix://, redis+cluster://h1:p1,h2:p2,... or redis+sentinel://h1:p1,.../master"


class Deployment(enum.StrEnum):
    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``--redis-url``.

    ``url``: for :attr:`Deployment.SINGLE`, the URL as given (redis-py reads it); ``seeds``:
    the cluster's seed nodes or the Sentinels, in the order given; ``service``: the master's
    name at the Sentinels; ``db``: the database of a Sentinel-watched master (0 otherwise).
    """

    deployment: Deployment
    url: str = ""
    seeds: tuple[tuple[str, int], ...] = ()
    tls: bool = False
    username: str | None = None
    password: str | None = None
    service: str = ""
    db: int = 0


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, hosts = rest.split("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{hosts}"


def _refuse(url: str, why: str) -> ValueError:
    return ValueError(f"unsupported Redis URL {redacted(url)!r}: {why}; use {_FORMS}")


def _host_port(url: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _refuse(url, f"bad address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise _refuse(url, f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _refuse(url, f"bad port in {text!r}")
    return host, int(port_text)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, sep, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None)


def _seeds(url: str, hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    parts = [part.strip() for part in hosts.split(",")]
    if not any(parts):
        raise _refuse(url, "no host given")
    if not all(parts):
        raise _refuse(url, "an empty host in the list")
    seeds = tuple(_host_port(url, part, default_port) for part in parts)
    return tuple(dict.fromkeys(seeds))  # a seed given twice is one seed


def parse_redis_url(url: str) -> RedisTarget:
    """What ``url`` names (see the module docstring); :class:`ValueError` when it names nothing we serve."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _refuse(url, "no scheme")
    if scheme in _SINGLE_SCHEMES:
        return RedisTarget(Deployment.SINGLE, url=url, tls=scheme == "rediss")
    if scheme not in _CLUSTER_SCHEMES and scheme not in _SENTINEL_SCHEMES:
        raise _refuse(url, f"unknown scheme {scheme!r}")
    if "?" in rest or "#" in rest:
        raise _refuse(url, "no query string or fragment on a cluster or Sentinel URL")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    username, password = _credentials(userinfo)
    hosts, _, path = location.partition("/")
    if scheme in _CLUSTER_SCHEMES:
        if path.strip("/"):
            raise _refuse(url, "a cluster has no database or path (it is always db 0)")
        return RedisTarget(
            Deployment.CLUSTER,
            seeds=_seeds(url, hosts, DEFAULT_PORT),
            tls=_CLUSTER_SCHEMES[scheme],
            username=username,
            password=password,
        )
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise _refuse(url, "no master name after the Sentinels (redis+sentinel://h1:p1,h2:p2/mymaster)")
    if db_text and not db_text.isdigit():
        raise _refuse(url, f"bad database {db_text!r}")
    return RedisTarget(
        Deployment.SENTINEL,
        seeds=_seeds(url, hosts, DEFAULT_SENTINEL_PORT),
        tls=_SENTINEL_SCHEMES[scheme],
        username=username,
        password=password,
        service=unquote(service),
        db=int(db_text or 0),
    )
