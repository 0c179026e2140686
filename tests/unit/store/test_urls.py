"""parse_redis_url: every ``--redis-url`` form, and the refusals (pure: nothing connects)."""

from __future__ import annotations

import pytest

from quota_service.store.urls import Deployment, RedisTarget, parse_redis_url, redacted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "tls"),
    [("redis://127.0.0.1:6379/0", False), ("rediss://u:p@h:6380", True), ("unix:///tmp/r.sock", False)],
)
def test_one_redis_keeps_the_url_for_redis_py(url: str, tls: bool) -> None:
    assert parse_redis_url(url) == RedisTarget(Deployment.SINGLE, url=url, tls=tls)


def test_cluster_seeds_in_order_with_default_ports_and_ipv6() -> None:
    target = parse_redis_url("redis+cluster://h1:7000,h2,[::1]:7002,h1:7000")
    assert target.deployment is Deployment.CLUSTER
    assert target.seeds == (("h1", 7000), ("h2", 6379), ("::1", 7002))  # a repeated seed is one
    assert not target.tls and target.username is None and target.password is None


def test_cluster_credentials_are_percent_decoded_and_tls_chosen_by_scheme() -> None:
    target = parse_redis_url("rediss+cluster://app:p%40ss%3Aword@h1:7000,h2:7001/")
    assert (target.tls, target.username, target.password) == (True, "app", "p@ss:word")
    assert target.seeds == (("h1", 7000), ("h2", 7001))
    assert parse_redis_url("redis+cluster://:secret@h1:7000").password == "secret"


def test_sentinel_names_the_master_and_the_database() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2,s3:26380/mymaster/2")
    assert target == RedisTarget(
        Deployment.SENTINEL,
        seeds=(("s1", 26379), ("s2", 26379), ("s3", 26380)),
        password="pw",
        service="mymaster",
        db=2,
    )
    assert parse_redis_url("rediss+sentinel://s1/cache").tls


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "no scheme"),
        ("127.0.0.1:6379", "no scheme"),
        ("http://h:1", "unknown scheme 'http'"),
        ("redis+cluster://", "no host given"),
        ("redis+cluster://h1:7000,,h2:7001", "an empty host in the list"),
        ("redis+cluster://h1:70000", "bad port"),
        ("redis+cluster://h1:x", "bad port"),
        ("redis+cluster://:7000", "no host"),
        ("redis+cluster://[::1:7000", "bad address"),
        ("redis+cluster://h1:7000/3", "a cluster has no database"),
        ("redis+cluster://h1:7000?ssl=true", "no query string"),
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/m/x", "bad database 'x'"),
    ],
)
def test_refusals_say_why_and_list_the_forms(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="unsupported Redis URL") as refused:
        parse_redis_url(url)
    assert why in str(refused.value) and "redis+cluster://h1:p1,h2:p2" in str(refused.value)


def test_a_refusal_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as refused:
        parse_redis_url("redis+cluster://app:hunter2@h1:x")
    assert "hunter2" not in str(refused.value) and "app:***@h1:x" in str(refused.value)
    assert redacted("redis://:hunter2@h:1/0") == "redis://***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
