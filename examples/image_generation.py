"""Guard an image generation call with quota-service.

Reserve the number of images asked for, generate, then commit the number actually
delivered (a safety filter may drop some: those are refunded). If the provider fails,
leaving the block with its exception releases the whole reservation.

    python examples/image_generation.py [--target HOST:PORT] [--subject USER] [--count N]

The target defaults to $QUOTA_TARGET, else 127.0.0.1:50051. The provider is a stand-in,
so the example runs offline. Exit status: 0 done, 2 denied, 3 quota-service unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys

from quota_client import QuotaClient, QuotaDenied, QuotaUnavailable

FEATURE = "blog_writer"  # a hero image for a blog post
PROVIDER, MODEL = "stability", "sd3-medium"


class ProviderError(Exception):
    pass


def fake_generate_images(prompt: str, n: int, *, fail: bool = False) -> list[bytes]:
    """Stand-in for the provider: returns PNG bytes; a 'safety filter' drops every third image."""
    if fail:
        raise ProviderError("provider returned 503")
    return [b"\x89PNG fake image %d" % i for i in range(n) if i % 3 != 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("QUOTA_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--subject", default="demo-user")
    parser.add_argument("--prompt", default="a jar of bubbling sourdough starter, morning light")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--fail", action="store_true", help="make the stand-in provider fail")
    args = parser.parse_args(argv)

    with QuotaClient(args.target) as client:
        try:
            with client.reserve(args.subject, FEATURE, provider=PROVIDER, model=MODEL, images=args.count) as r:
                print(f"decision: {r.decision.value}: reserved {args.count} image(s)")
                if r.warning:
                    print(f"warning: {r.warning.message}")
                images = fake_generate_images(args.prompt, args.count, fail=args.fail)
                r.commit(images=len(images))
            print(f"committed: {len(images)} image(s) (estimate was {args.count})")
        except ProviderError as err:
            print(f"provider failed: {err}; reservation released")
        except QuotaDenied as denied:
            print(f"denied: {denied.reason.value}: {denied.message} (retry after {denied.retry_after}s)")
            return 2
        except QuotaUnavailable as err:
            print(f"unavailable: {err}")
            return 3
        status = client.get_usage(args.subject).limit("images", "day")
        if status is not None:
            print(f"images today: used={status.used:g} held={status.held:g} max={status.max:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
