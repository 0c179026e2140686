"""Standard Webhooks signing and the endpoint model (no I/O)."""

from __future__ import annotations

import pytest

from quota_service.ledger import Event, EventKind, LedgerConfigError
from quota_service.ledger.webhooks import WebhookEndpoint, parse_secret, sign, webhook_headers

pytestmark = pytest.mark.unit

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signer_reproduces_the_specifications_example() -> None:
    key = parse_secret(VECTOR_SECRET)
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert parse_secret(VECTOR_SECRET.removeprefix("whsec_")) == key  # the prefix is optional
    headers = webhook_headers(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "content-type": "application/json",
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY) != VECTOR_SIGNATURE


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "", "whsec_====="])
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(LedgerConfigError, match="whsec_"):
        parse_secret(secret)


def test_endpoint_ids_and_filters() -> None:
    endpoint = WebhookEndpoint(
        url="https://backend.example/hooks/quota",
        secret_env="QUOTA_WEBHOOK_SECRET",
        kinds=frozenset({EventKind.THRESHOLD_CROSSED}),
        tiers=frozenset({"free_alpha"}),
    )
    same_url = WebhookEndpoint(url="https://backend.example/hooks/quota", secret_env="OTHER")
    assert endpoint.id == same_url.id and endpoint.id.startswith("ep_") and len(endpoint.id) == 19
    assert endpoint.id != WebhookEndpoint(url="https://backend.example/other", secret_env="S").id
    crossed = Event(id="thr_1", kind=EventKind.THRESHOLD_CROSSED, at_ms=1, tier="free_alpha")
    assert endpoint.wants(crossed)
    assert not endpoint.wants(Event(id="thr_2", kind=EventKind.THRESHOLD_CROSSED, at_ms=1, tier="pro_alpha"))
    assert not endpoint.wants(Event(id="com_3", kind=EventKind.COMMITTED, at_ms=1, tier="free_alpha"))
    assert same_url.wants(Event(id="com_3", kind=EventKind.COMMITTED, at_ms=1))  # no filter: everything
