"""A validated CheckAndReserve request of the shipped free tier's kind, for in-process tests."""

from __future__ import annotations

from quota_service.policy.validation import QuotaRequest, build_request


def ask(who: str, tokens: float = 100, request_id: str = "req-1", **extra: object) -> QuotaRequest:
    """``tokens`` of ``blog_writer`` on ``openai/gpt-4o-mini`` (priced, so a cost is asked too)."""
    return build_request(
        subject=who,
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": tokens},
        request_id=request_id,
        **extra,  # type: ignore[arg-type]
    )
