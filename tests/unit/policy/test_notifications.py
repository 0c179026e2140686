"""notifications.webhooks and ledger_retention_days: parsed, validated, compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota.v1 import events_pb2
from quota_service.errors import PolicyError
from quota_service.policy.loader import load_policy
from quota_service.policy.notifications import EVENT_KIND_NAMES, WebhookSpec

BASE = """\
version: 1
default_tier: free
tiers:
  free: {features: ["*"], limits: {tokens: {day: 10}}}
  pro: {features: ["*"], limits: {tokens: {day: 100}}}
"""


def load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE + extra)
    return load_policy(path)


def errors(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, extra)
    return [str(issue) for issue in caught.value.issues]


def test_kind_names_are_the_contracts() -> None:
    wire = [name for name, number in events_pb2.EventKind.items() if number]
    assert list(EVENT_KIND_NAMES) == wire


def test_webhooks_compile(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
ledger_retention_days: 90
notifications:
  webhooks:
    - url: https://backend.example/hooks/quota
      secret_env: QUOTA_WEBHOOK_SECRET
      kinds: [THRESHOLD_CROSSED, EVENT_KIND_STOP_CHANGED, STOP_CHANGED]
      tiers: [free]
    - {name: audit, url: "http://127.0.0.1:9000/x", secret_env: OTHER}
""",
    )
    assert policy.ledger_retention_days == 90  # type: ignore[attr-defined]
    assert policy.notifications.webhooks == (  # type: ignore[attr-defined]
        WebhookSpec(
            name="backend.example",
            url="https://backend.example/hooks/quota",
            secret_env="QUOTA_WEBHOOK_SECRET",
            kinds=("THRESHOLD_CROSSED", "STOP_CHANGED"),
            tiers=("free",),
        ),
        WebhookSpec(name="audit", url="http://127.0.0.1:9000/x", secret_env="OTHER"),
    )


def test_defaults(tmp_path: Path) -> None:
    policy = load(tmp_path, "")
    assert policy.notifications.webhooks == ()  # type: ignore[attr-defined]
    assert policy.ledger_retention_days == 0  # type: ignore[attr-defined]


def test_bad_notifications_name_file_line_and_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """\
ledger_retention_days: 0
notifications:
  webhooks:
    - url: ftp://backend.example/hooks
      secret_env: whsec_c2VjcmV0=
      kinds: [THRESHOLDS]
      secret: whsec_c2VjcmV0
    - url: https://user:pw@backend.example/
      secret_env: A
  email: []
""",
    )
    file = str(tmp_path / "policy.yaml")
    assert found == [
        f"{file}:6: ledger_retention_days: must be a whole number of days from 1 to 36500, got 0",
        f"{file}:9: notifications.webhooks[0].url: webhook URL 'ftp://backend.example/hooks' "
        "must start with http:// or https://",
        f"{file}:10: notifications.webhooks[0].secret_env: 'whsec_c2VjcmV0=' is not an environment variable name "
        "(letters, digits and '_', not starting with a digit, at most 128 characters); name the variable that "
        "holds the secret, never the secret itself",
        f"{file}:11: notifications.webhooks[0].kinds[0]: unknown event kind 'THRESHOLDS'; expected one of: "
        + ", ".join(EVENT_KIND_NAMES),
        f"{file}:12: notifications.webhooks[0].secret: unknown key (did you mean 'secret_env'?); "
        "expected one of: name, url, secret_env, kinds, tiers",
        f"{file}:13: notifications.webhooks[1].url: webhook URL 'https://user:pw@backend.example/' carries "
        "credentials (user:password@); secrets never go in a policy file: the receiver checks the "
        "webhook-signature instead",
        f"{file}:15: notifications.email: unknown key; expected one of: webhooks",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("javascript:alert(1)", "must start with http:// or https://"),
        ("https:///nohost", "has no host"),
        ("https://a.example:99999/", "has an invalid host or port"),
        ("https://a.example/ x", "contains spaces or control characters"),
    ],
)
def test_urls_refused(tmp_path: Path, url: str, message: str) -> None:
    found = errors(tmp_path, f'notifications: {{webhooks: [{{url: "{url}", secret_env: S}}]}}\n')
    assert len(found) == 1 and message in found[0] and "notifications.webhooks[0].url" in found[0]


def test_semantic_checks(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """\
notifications:
  webhooks:
    - {url: "https://a.example/", secret_env: S, tiers: [gold], name: one}
    - {url: "https://a.example/", secret_env: S, name: one}
""",
    )
    assert [f.split(": ", 1)[1] for f in found] == [
        "notifications.webhooks[0].tiers[0]: tier 'gold' is not defined (defined: free, pro)",
        "notifications.webhooks[1].url: the same URL as webhooks[0]; list each endpoint once",
        "notifications.webhooks[1].name: the same name as webhooks[0]",
    ]


def test_notifications_in_two_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE + "notifications: {webhooks: []}\n")
    (tmp_path / "b.yaml").write_text("notifications: {webhooks: []}\n")
    with pytest.raises(PolicyError, match="also defined in"):
        load_policy(tmp_path)
