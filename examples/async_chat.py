"""The asyncio client, both forms: ``async with client.reserve(...)`` and the decorator.

    python examples/async_chat.py [--target HOST:PORT] [--subject USER]

The target defaults to $QUOTA_TARGET, else 127.0.0.1:50051. The provider is a stand-in,
so the example runs offline. Exit status: 0 done, 2 denied, 3 quota-service unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

from quota_client import AsyncQuotaClient, QuotaDenied, QuotaUnavailable, QuotaWarning


@dataclass
class Reply:
    text: str
    total_tokens: int


async def fake_chat(prompt: str, max_tokens: int) -> Reply:
    """Stand-in for an async provider SDK: the reply and its token usage."""
    await asyncio.sleep(0.01)
    completion = min(max_tokens, 40)
    return Reply(f"An outline for {prompt!r}...", len(prompt) // 4 + completion)


async def warn_user(warning: QuotaWarning) -> None:
    print(f"warning: {warning.message}")


async def run(target: str, subject: str) -> int:
    async with AsyncQuotaClient(target, on_warning=warn_user) as client:
        # 1. The guard as a context manager.
        prompt, max_tokens = "Plan five posts about home baking", 120
        estimate = len(prompt) // 4 + max_tokens
        async with client.reserve(subject, "blog_writer", provider="openai", model="gpt-4o-mini", tokens=estimate) as r:
            reply = await fake_chat(prompt, max_tokens)
            await r.commit(tokens=reply.total_tokens)
        print(f"guarded call: {r.decision.value}, committed {reply.total_tokens} of {estimate} tokens")

        # 2. The decorator: the subject comes from the `user_id` argument, the estimate from
        #    the arguments, the actual usage from the return value.
        @client.guard(
            "basic_seo",
            subject="user_id",
            provider="openai",
            model="gpt-4o-mini",
            estimate=lambda user_id, text: {"tokens": len(text) // 4 + 60},
            actual=lambda reply: {"tokens": reply.total_tokens},
        )
        async def seo_keywords(user_id: str, text: str) -> Reply:
            return await fake_chat(f"keywords for {text}", 60)

        result = await seo_keywords(subject, "A beginner's guide to sourdough")
        print(f"decorated call: committed {result.total_tokens} tokens")

        tokens = (await client.get_usage(subject)).limit("tokens", "day")
        if tokens is not None:
            print(f"tokens today: used={tokens.used:g} held={tokens.held:g} max={tokens.max:g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("QUOTA_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--subject", default="demo-user")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.target, args.subject))
    except QuotaDenied as denied:
        print(f"denied: {denied.reason.value}: {denied.message} (retry after {denied.retry_after}s)")
        return 2
    except QuotaUnavailable as err:
        print(f"unavailable: {err}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
