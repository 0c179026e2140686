"""The reference servers of the benchmark, one process each.

``python -m bench.servers --mode floor --port-file F``
    A no-op grpc.aio QuotaService: CheckAndReserve returns a canned ALLOW of realistic
    size (:func:`bench.workload.canned_allow`). The cost of gRPC + protobuf + asyncio in
    Python, nothing else.

``python -m bench.servers --mode design --redis-url URL --port-file F [--steps 2]``
    The floor plus exactly one EVALSHA per call of ``bench/design_reserve.lua``, a script of
    the same shape as quota-service's ``reserve.lua`` (7 KEYS, 12 ARGV: open set, request
    key, record hash, config hash and three counter hashes of one ``{subject}`` hash tag),
    through redis.asyncio with hiredis. The least a one-script-per-request design can cost.
    ``--steps 2`` adds a second EVALSHA on the company-wide counter (``{__global__}`` slot),
    the least quota-service's two-step design (subject, then global) can cost.

``python -m bench.servers --mode limits --redis-url URL --port-file F``
    The pick-instead baseline: the ``limits`` library (PyPI, ``limits[async-redis]``, the
    bench-only extra) inside the same grpc.aio servicer. Per CheckAndReserve three ``hit`` calls
    with its fixed-window strategy, in order, stopping at the first refusal: tokens per day
    (cost = tokens), cost per month and the company-wide cost per day (cost = micro-dollars,
    identifier ``__global__``). Fixed window is the fair analogue of ours: quota-service's
    windows are calendar windows, i.e. one counter per window (``INCRBY`` + expiry, one
    round trip per hit); limits' moving window stores one list entry per unit of cost, so a
    cost of thousands of micro-dollars would push thousands of entries per call. Like any
    three independent hits, a refusal by a later hit leaves the earlier ones charged (no
    all-or-nothing); the benchmark never comes near a cap, so it is never exercised.

All use the grpc.aio server options of quota-service's ``create_server``. SIGTERM/SIGINT
stop them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc
from redis.asyncio import BlockingConnectionPool, Redis

from bench.workload import FEATURE, MODEL, PROVIDER, canned_allow, canned_deny
from quota.v1 import quota_pb2, quota_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

LUA_PATH: Final = Path(__file__).with_name("design_reserve.lua")
SERVER_OPTIONS: Final = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 1 << 20)]
TTL_MS: Final = 300_000
GRACE_MS: Final = 3_600_000
#: micro-dollars per token of openai/gpt-4o-mini in policies/alpha.yaml ($0.60 per 1M tokens)
MICRO_USD_PER_TOKEN: Final = 0.6


class _CheckOnly(quota_pb2_grpc.QuotaServiceServicer):
    """The benchmark calls CheckAndReserve only; the other RPCs answer UNIMPLEMENTED."""

    async def Commit(self, request: quota_pb2.CommitRequest, context: Context) -> quota_pb2.CommitResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "benchmark floor: CheckAndReserve only")

    async def Release(self, request: quota_pb2.ReleaseRequest, context: Context) -> quota_pb2.ReleaseResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "benchmark floor: CheckAndReserve only")

    async def GetUsage(self, request: quota_pb2.GetUsageRequest, context: Context) -> quota_pb2.GetUsageResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "benchmark floor: CheckAndReserve only")


class FloorServicer(_CheckOnly):
    """Answers every CheckAndReserve with the same canned ALLOW."""

    def __init__(self) -> None:
        self._allow = canned_allow()

    async def CheckAndReserve(
        self, request: quota_pb2.CheckAndReserveRequest, context: Context
    ) -> quota_pb2.CheckAndReserveResponse:
        return self._allow


#: (metric, window, window_id, resets_at, expire_at, cap units, block units)
CounterSpec = tuple[str, str, str, int, int, int, int]


class DesignFloorServicer(_CheckOnly):
    """The floor plus one reserve-shaped EVALSHA per call (the subject's step).

    ``steps=2`` adds a second EVALSHA of the same script on the company-wide counter in its
    own ``{__global__}`` slot, as quota-service's design requires for global caps
    (diagnostic: ``python -m bench.run --with-two-step``)."""

    def __init__(self, client: Redis, steps: int = 1) -> None:
        if steps not in (1, 2):
            raise ValueError("steps must be 1 or 2")
        self._client = client
        self._steps = steps
        self._script = client.register_script(LUA_PATH.read_text(encoding="utf-8"))
        self._allow = canned_allow()
        self._deny = canned_deny()
        now = datetime.now(UTC)
        day = now.strftime("%Y-%m-%d")
        month = now.strftime("%Y-%m")
        day_end = int((datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)).timestamp())
        month_end = int((datetime(now.year, now.month, 1, tzinfo=UTC) + timedelta(days=32)).replace(day=1).timestamp())
        self._counters: list[CounterSpec] = [
            ("tokens", "day", day, day_end, day_end + 86_400, 1000, 950),
            ("cost_usd", "month", month, month_end, month_end + 86_400, 10_000_000, 9_500_000),
            ("cost_usd", "day", day, day_end, day_end + 86_400, 5_000_000, 5_000_000),
        ]
        self._global_counters: list[CounterSpec] = [
            ("cost_usd", "day", day, day_end, day_end + 86_400, 200_000_000, 200_000_000),
        ]
        self._meta = json.dumps(
            {
                "feature": FEATURE,
                "model": MODEL,
                "provider": PROVIDER,
                "rates": '{"tokens": "6E-7"}',
                "tier": "free_alpha",
            },
            sort_keys=True,
        )

    async def _step(
        self,
        scope: str,
        counters: list[CounterSpec],
        asks: list[int],
        *,
        rid: str,
        request_id: str,
        now_ms: int,
        config_version: str,
        has_global: bool,
    ) -> str:
        """One reserve-shaped EVALSHA on one scope's keys; returns the script's status."""
        tag = "{" + scope + "}"
        counter_keys = [f"q:{tag}:{metric}:{window}:{wid}" for metric, window, wid, *_ in counters]
        charges = json.dumps(
            [
                [key, c[0], str(ask), c[1], c[2], str(c[3]), str(c[4]), str(c[5]), str(c[6])]
                for key, c, ask in zip(counter_keys, counters, asks, strict=True)
            ]
        )
        script_keys = [f"z:{tag}:open", f"i:{tag}:{request_id or rid}", f"r:{tag}:{rid}", f"c:{tag}", *counter_keys]
        args: list[str | int] = [
            now_ms,
            rid,
            now_ms + TTL_MS,
            GRACE_MS,
            100,
            f"r:{tag}:",
            "1" if request_id else "0",
            "0",
            config_version,
            self._meta,
            "1" if has_global else "0",
            charges,
        ]
        reply = await self._script(keys=script_keys, args=args)
        return str(reply[0])

    async def CheckAndReserve(
        self, request: quota_pb2.CheckAndReserveRequest, context: Context
    ) -> quota_pb2.CheckAndReserveResponse:
        subject = request.subject
        tokens = int(request.usage.get("tokens", 0.0))
        cost = -(-int(tokens * MICRO_USD_PER_TOKEN * 1000) // 1000)  # micro-dollars, rounded up
        rid = "rsv_" + base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=") + "." + secrets.token_hex(16)
        now_ms = int(time.time() * 1000)
        status = await self._step(
            subject,
            self._counters,
            [tokens, cost, cost],
            rid=rid,
            request_id=request.request_id,
            now_ms=now_ms,
            config_version="0",
            has_global=self._steps == 2,
        )
        if status == "reserved" and self._steps == 2:
            status = await self._step(
                "__global__",
                self._global_counters,
                [cost],
                rid=rid,
                request_id=rid,
                now_ms=now_ms,
                config_version="",
                has_global=False,
            )
        return self._allow if status == "reserved" else self._deny


class LimitsServicer(_CheckOnly):
    """Three fixed-window ``hit`` calls of the ``limits`` library per call, then the canned answer."""

    def __init__(self, redis_url: str) -> None:
        from limits import RateLimitItemPerDay, RateLimitItemPerMonth
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter

        uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
        self.storage = RedisStorage(uri)
        self._limiter = FixedWindowRateLimiter(self.storage)
        self._tokens_day = RateLimitItemPerDay(1000)
        self._cost_month = RateLimitItemPerMonth(10_000_000)  # micro-dollars
        self._global_day = RateLimitItemPerDay(200_000_000)
        self._allow = canned_allow()
        self._deny = canned_deny()

    async def CheckAndReserve(
        self, request: quota_pb2.CheckAndReserveRequest, context: Context
    ) -> quota_pb2.CheckAndReserveResponse:
        subject = request.subject
        tokens = int(request.usage.get("tokens", 0.0))
        cost = -(-int(tokens * MICRO_USD_PER_TOKEN * 1000) // 1000)
        hit = self._limiter.hit
        granted = (
            await hit(self._tokens_day, subject, "tokens", cost=tokens)
            and await hit(self._cost_month, subject, "cost_usd", cost=cost)
            and await hit(self._global_day, "__global__", "cost_usd", cost=cost)
        )
        return self._allow if granted else self._deny


def _write_port(port_file: str, port: int) -> None:
    """Atomically, so the parent never reads a half-written file."""
    tmp = Path(port_file + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)


async def serve(mode: str, redis_url: str, listen: str, port_file: str, steps: int = 1) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    client: Redis | None = None
    if mode == "design":
        pool = BlockingConnectionPool.from_url(redis_url, max_connections=256, timeout=5.0, decode_responses=True)
        client = Redis.from_pool(pool)
        await client.ping()
        servicer: quota_pb2_grpc.QuotaServiceServicer = DesignFloorServicer(client, steps)
    elif mode == "limits":
        limits_servicer = LimitsServicer(redis_url)
        await limits_servicer.storage.check()
        servicer = limits_servicer
    else:
        servicer = FloorServicer()
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"could not bind {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if port_file:
        _write_port(port_file, port)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)
        if client is not None:
            await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("floor", "design", "limits"), required=True)
    parser.add_argument("--redis-url", default="", help="required for --mode design")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", default="")
    parser.add_argument(
        "--steps", type=int, choices=(1, 2), default=1, help="design: EVALSHAs per call (2 adds the global step)"
    )
    args = parser.parse_args(argv)
    if args.mode in ("design", "limits") and not args.redis_url:
        parser.error(f"--mode {args.mode} needs --redis-url")
    if not args.listen.startswith("127.0.0.1:"):
        parser.error("the benchmark servers listen on 127.0.0.1 only")
    asyncio.run(serve(args.mode, args.redis_url, args.listen, args.port_file, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
