"""Guard an OpenAI-style chat completion with quota-service.

The pattern for every paid call: estimate -> reserve -> call the provider -> commit the
actual usage. DENY stops the call before any money is spent; WARN lets it through and
tells the user they are close to their limit; an exception in between releases the hold.

    python examples/chat_completion.py [--target HOST:PORT] [--subject USER] [--prompt TEXT]

The target defaults to $QUOTA_TARGET, else 127.0.0.1:50051 (``make run`` serves there).
The provider below is a stand-in with the shape of the OpenAI SDK's response, so the
example runs offline; swap in ``openai.OpenAI().chat.completions.create``.

Exit status: 0 done, 2 denied, 3 quota-service unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from quota_client import QuotaClient, QuotaDenied, QuotaUnavailable, QuotaWarning

FEATURE = "blog_writer"
PROVIDER, MODEL = "openai", "gpt-4o-mini"


# -- a stand-in for the provider's SDK ------------------------------------------------------


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Choice:
    message: Message


@dataclass
class ChatCompletion:
    choices: list[Choice]
    usage: Usage


def count_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token); use tiktoken in real code."""
    return max(1, len(text) // 4)


def fake_chat_completion(*, model: str, messages: list[dict[str, str]], max_tokens: int) -> ChatCompletion:
    prompt = " ".join(m["content"] for m in messages)
    reply = f"Here is a draft about {prompt[:40]!r}: " + "lorem ipsum " * 8
    completion_tokens = min(max_tokens, count_tokens(reply))
    prompt_tokens = count_tokens(prompt) + 4 * len(messages)  # chat formatting overhead
    return ChatCompletion(
        choices=[Choice(Message("assistant", reply))],
        usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
    )


# -- the guarded call -----------------------------------------------------------------------


def tell_user(warning: QuotaWarning) -> None:
    """The 80 % notice: the call goes ahead, the user hears they are close to the limit."""
    print(f"warning: {warning.message}")


def write_draft(client: QuotaClient, subject: str, prompt: str, max_tokens: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    # Estimate high: the prompt plus the most the model may answer. The difference is refunded.
    estimate = count_tokens(prompt) + 4 * len(messages) + max_tokens
    print(f"estimate: {estimate} tokens")

    with client.reserve(subject, FEATURE, provider=PROVIDER, model=MODEL, tokens=estimate, on_warning=tell_user) as r:
        print(f"decision: {r.decision.value} (reservation {r.reservation_id or 'unverified'})")
        resp = fake_chat_completion(model=MODEL, messages=messages, max_tokens=max_tokens)
        r.commit(tokens=resp.usage.total_tokens)

    print(f"committed: {resp.usage.total_tokens} tokens (estimate was {estimate})")
    return resp.choices[0].message.content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("QUOTA_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--subject", default="demo-user")
    parser.add_argument("--prompt", default="Write an intro for a post about sourdough starters.")
    parser.add_argument("--max-tokens", type=int, default=150)
    args = parser.parse_args(argv)

    with QuotaClient(args.target) as client:
        try:
            reply = write_draft(client, args.subject, args.prompt, args.max_tokens)
        except QuotaDenied as denied:
            print(f"denied: {denied.reason.value}: {denied.message} (retry after {denied.retry_after}s)")
            return 2
        except QuotaUnavailable as err:
            print(f"unavailable: {err}")
            return 3
        print(f"reply: {reply[:60]}...")
        tokens = client.get_usage(args.subject).limit("tokens", "day")
        if tokens is not None:
            print(f"tokens today: used={tokens.used:g} held={tokens.held:g} max={tokens.max:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
