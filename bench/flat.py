"""``make bench-flat``: is quota-service's cost flat in the number of subjects and of overrides?

Issue 8's flat-cost targets, measured side by side in one run under the load generator of
``bench.run`` (:mod:`bench.loadgen`), against one private redis-server (a free port, never
6379) and ``quota-service serve --workers 1`` with the shipped policies: two identical
processes, one on Redis database 0 (the large pool, loaded once for every round) and one on
database 1 (the small pool, reloaded at the start of each round):

* **small pool**: ``--small`` subjects (1,000), drawn at random, their state prefilled;
* **large pool**: ``--large`` subjects (1,000,000), drawn at random, their state prefilled;
* **large pool + overrides**: the large pool with ``--overrides`` (100,000) overrides stored,
  one per subject on every ``large / overrides``-th subject (10 %), so the measured calls hit
  an overridden subject in that share of calls.

Prefill (before the measured window, never measured): one real ``CheckAndReserve`` (with a
request_id) for a template subject; every key it leaves in the subject's own slot
(``{flat-template}``: the three counter hashes, the open record, the open set, the shared
plan text) is DUMPed and RESTOREd, with its remaining TTL, under each pool subject's hash
tag (a bench-only Lua loop, :data:`PREFILL_LUA`, pipelined). So every pool subject really exists in Redis with one
open reservation, as if it had made one call minutes ago. The company-wide twins of that
call (``{__global__}`` record and open-set entry, counter) are not copied.

Overrides: the first one through the real admin store (``RedisAdminStore.note_overridden`` +
``RedisCounterStore.set_override``: the override index ZADD and ``config_write.lua``), the
rest through the same ``config_write.lua`` (EVALSHA, pipelined) and the same index ZADD,
with the same override JSON: ``tokens`` per ``day`` raised to ``--override-tokens`` (2,000;
the tier's cap is 1,000), no expiry. The audit stream entry of the admin RPC is not written.
A dry run for the first and the last overridden subject must answer that cap. Before the
large cell of the next round they are deleted again.

Then the three cells (``--concurrency``, default 32), ``--rounds`` interleaved (median), and a
markdown report: req/s, p50, p99, server and Redis CPU, Redis ``EVALSHA`` and ``HGETALL``
calls per request over the window (``INFO commandstats``, which also counts the commands run
inside scripts: an ``HGETALL`` is ``config_get.lua`` reading ``o:{S}``), the memory of the prefill, the
ratios large/small and overrides/none, and the targets (each within +-10 %: MET or NOT MET;
never enforced). Exit status: 0, 1 when some answer was neither ALLOW nor WARN, 2 when a
server did not start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import redis

from bench.loadgen import _request
from bench.run import (
    OK_OUTCOMES,
    ROOT,
    BenchError,
    Children,
    Server,
    _progress,
    cpu_seconds,
    machine_info,
    redis_server_version,
    run_cell,
    run_main,
    start_redis,
    start_server,
)
from bench.workload import SUBJECT_PREFIX
from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.admin import override_units
from quota_service.policy.domain import OverrideRecord
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.admin_store import OVERRIDE_INDEX_KEY, RedisAdminStore
from quota_service.store.embedded import find_redis_server
from quota_service.store.redis_store import RedisCounterStore, script_source

TEMPLATE_SUBJECT: Final = "flat-template"
#: The cells of a round, in order: (name, pool, overrides?).
CELLS: Final = ("small", "large", "overrides")
#: Flat means within this fraction of 1.0 (issue 8: "+-10 %").
TARGET_TOLERANCE: Final = 0.10
#: Commands per pipelined batch of the bulk load.
BATCH: Final = 5000
OVERRIDE_METRIC: Final = "tokens"
OVERRIDE_WINDOW: Final = Window.DAY
SETTLE_CPU_PCT: Final = 15.0
SETTLE_TIMEOUT: Final = 30.0


# -- bulk load ---------------------------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def pipelined(url: str, commands: Iterable[bytes]) -> int:
    """Send RESP-encoded ``commands`` on one connection, ``BATCH`` at a time, reading every
    reply (an error reply raises). Returns how many were sent."""
    pool = redis.ConnectionPool.from_url(url)
    connection = pool.get_connection()
    sent = 0
    try:
        batch: list[bytes] = []

        def flush() -> None:
            connection.send_packed_command([b"".join(batch)], check_health=False)
            for _ in batch:
                reply = connection.read_response()
                if isinstance(reply, redis.ResponseError):
                    raise reply
            batch.clear()

        for command in commands:
            batch.append(command)
            sent += 1
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    finally:
        pool.release(connection)
        pool.disconnect()
    return sent


@dataclass(frozen=True)
class TemplateKey:
    kind: str  # the key's first letter
    rest: str  # what follows the hash tag, e.g. ":tokens:day:2026-12-01"
    pttl: int  # ms, 0 = no expiry
    payload: bytes  # DUMP
    type: str
    size: int  # MEMORY USAGE, bytes


def capture_template(url: str, server: Server) -> list[TemplateKey]:
    """One real CheckAndReserve for the template subject; the keys it left in its own slot."""
    request = _request(0, 1, 10.0, "flat-template", False)
    request.subject = TEMPLATE_SUBJECT
    with grpc.insecure_channel(server.target) as channel:
        reply = quota_pb2_grpc.QuotaServiceStub(channel).CheckAndReserve(request, timeout=5.0)
    if reply.decision not in (quota_pb2.ALLOW, quota_pb2.WARN):
        raise BenchError(f"template call answered {quota_pb2.Decision.Name(reply.decision)}: {reply.message}")
    tag = keys.tag(TEMPLATE_SUBJECT)
    found: list[TemplateKey] = []
    with redis.Redis.from_url(url) as client:
        for raw in sorted(client.scan_iter(match=f"*{tag}*", count=1000)):
            key = raw.decode()
            kind, _, rest = key.partition(":" + tag)
            pttl = int(client.pttl(key))
            payload = client.dump(key)
            if payload is None:
                continue
            found.append(
                TemplateKey(
                    kind=kind,
                    rest=rest,
                    pttl=max(pttl, 0),
                    payload=bytes(payload),  # type: ignore[arg-type]
                    type=client.type(key).decode(),
                    size=int(client.memory_usage(key) or 0),
                )
            )
    if not found:
        raise BenchError("the template call left no keys in its slot")
    return found


#: Server-side bulk load (a bench-only script, run on the private standalone Redis): RESTOREs
#: every template key under the hash tag of each subject ``<prefix><first>`` ... ``<prefix><last - 1>``.
#: ARGV: prefix, first, last, then (kind, rest, pttl, payload) per template key.
PREFILL_LUA: Final = """
local prefix, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = first, last - 1 do
  local tag = ':{' .. prefix .. string.format('%d', i) .. '}'
  for j = 4, #ARGV, 4 do
    redis.call('RESTORE', ARGV[j] .. tag .. ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], 'REPLACE')
  end
end
return last - first
"""
#: Subjects per call of PREFILL_LUA (about 12,000 RESTOREs: Redis is blocked ~20-40 ms per call).
PREFILL_CHUNK: Final = 2000


def prefill_commands(sha: str, template: Sequence[TemplateKey], subjects: int) -> Iterable[bytes]:
    """EVALSHA of PREFILL_LUA, one per PREFILL_CHUNK subjects."""
    tail: list[bytes] = []
    for t in template:
        tail += [t.kind.encode(), t.rest.encode(), str(t.pttl).encode(), t.payload]
    for first in range(0, subjects, PREFILL_CHUNK):
        last = min(subjects, first + PREFILL_CHUNK)
        yield _resp(b"EVALSHA", sha.encode(), b"0", SUBJECT_PREFIX.encode(), b"%d" % first, b"%d" % last, *tail)


def override_body(now_s: int, max_units: int) -> tuple[OverrideRecord, str]:
    """The record and the JSON ``RedisCounterStore.set_override`` writes for it (the same text)."""
    record = OverrideRecord(
        subject=TEMPLATE_SUBJECT,
        metric=OVERRIDE_METRIC,
        window=OVERRIDE_WINDOW,
        max_units=max_units,
        expires_at=0,
        reason="bench.flat",
        created_at=now_s,
        created_by="bench",
    )
    body = json.dumps(
        {
            "max_units": str(record.max_units),
            "expires_at": record.expires_at,
            "reason": record.reason,
            "created_at": record.created_at,
            "created_by": record.created_by,
        }
    )
    return record, body


async def _real_override(url: str, record: OverrideRecord) -> None:
    counters = RedisCounterStore.from_url(url, timeout_seconds=5.0)
    try:
        admin = RedisAdminStore(counters=counters)
        await admin.note_overridden(record.subject, record.created_at)
        await counters.set_override(record)
    finally:
        await counters.close()


def overridden_subjects(large: int, overrides: int) -> range:
    """Every ``large // overrides``-th subject of the large pool (the first ``overrides``)."""
    step = max(1, large // overrides) if overrides else 1
    return range(0, step * overrides, step)


def write_overrides(url: str, large: int, overrides: int, max_units: int) -> dict[str, Any]:
    """The first override through the real admin store, the rest pipelined through the same
    script; checks the bulk-written hashes equal the real one."""
    subjects = overridden_subjects(large, overrides)
    now_s = int(time.time())
    record, body = override_body(now_s, max_units)
    first = f"{SUBJECT_PREFIX}{subjects[0]}"
    started = time.perf_counter()
    asyncio.run(_real_override(url, dataclasses.replace(record, subject=first)))
    field = f"{OVERRIDE_METRIC}:{OVERRIDE_WINDOW.value}".encode()
    with redis.Redis.from_url(url) as client:
        sha = str(client.script_load(script_source("config_write")))
        real = client.hgetall(keys.overrides_key(first))

    def commands() -> Iterable[bytes]:
        for i in subjects[1:]:
            subject = f"{SUBJECT_PREFIX}{i}".encode()
            yield _resp(b"ZADD", OVERRIDE_INDEX_KEY.encode(), str(now_s).encode(), subject)
            yield _resp(
                b"EVALSHA",
                sha.encode(),
                b"2",
                b"c:{%s}" % subject,
                b"o:{%s}" % subject,
                b"set_override",
                field,
                body.encode(),
                str(now_s).encode(),
            )

    pipelined(url, commands())
    seconds = time.perf_counter() - started
    with redis.Redis.from_url(url) as client:
        last = f"{SUBJECT_PREFIX}{subjects[-1]}"
        copy = client.hgetall(keys.overrides_key(last))
        if len(subjects) > 1 and copy != real:
            raise BenchError(f"bulk override of {last} {copy!r} differs from the real one {real!r}")
        indexed = int(client.zcard(OVERRIDE_INDEX_KEY))
    return {"overrides": overrides, "seconds": seconds, "indexed": indexed, "every": subjects.step}


def remove_overrides(url: str, large: int, overrides: int) -> None:
    """Undo :func:`write_overrides` (the subjects' config and override hashes, the index): the
    large pool as prefilled. Not the admin delete path (no version bump, no message): a
    replica's cached config of those subjects is found stale on its next reserve."""

    def commands() -> Iterable[bytes]:
        for i in overridden_subjects(large, overrides):
            subject = f"{SUBJECT_PREFIX}{i}".encode()
            yield _resp(b"DEL", b"c:{%s}" % subject, b"o:{%s}" % subject)
        yield _resp(b"DEL", OVERRIDE_INDEX_KEY.encode())

    pipelined(url, commands())


def command_calls(url: str) -> Counter[str]:
    """Redis' ``INFO commandstats`` calls per command (since its start)."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def sample_calls(samples: dict[str, Counter[str]], url: str, when: str) -> None:
    samples[when] = command_calls(url)


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


def prefill(url: str, template: Sequence[TemplateKey], subjects: int) -> dict[str, Any]:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        sha = str(client.script_load(PREFILL_LUA))
    before = used_memory(url)
    started = time.perf_counter()
    pipelined(url, prefill_commands(sha, template, subjects))
    seconds = time.perf_counter() - started
    after = used_memory(url)
    with redis.Redis.from_url(url) as client:
        # the slot-wide keys (the outbox the servers' relays keep, the reaper's due index) are not a subject's
        shared = (keys.outbox_key(keys.SINGLE_TAG), keys.due_key(keys.SINGLE_TAG))
        dbsize = int(client.dbsize()) - int(client.exists(*shared))
        sample = f"{template[0].kind}:{{{SUBJECT_PREFIX}{subjects - 1}}}{template[0].rest}"
        if dbsize != subjects * len(template) or not client.exists(sample):
            raise BenchError(f"prefill left {dbsize} keys for {subjects} x {len(template)} (no {sample}?)")
    return {
        "subjects": subjects,
        "seconds": seconds,
        "keys": dbsize,
        "used_memory_bytes": after,
        "bytes": after - before,
        "bytes_per_subject": (after - before) / subjects,
    }


def check_overrides(server: Server, large: int, overrides: int, cap: int) -> None:
    """A dry run for the first and the last overridden subject answers the override's cap."""
    subjects = overridden_subjects(large, overrides)
    with grpc.insecure_channel(server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        for i in {subjects[0], subjects[-1]}:
            reply = stub.CheckAndReserve(_request(0, 1, 1.0, "", True, subject=i), timeout=5.0)
            caps = [
                limit.max
                for limit in reply.limits
                if limit.metric == OVERRIDE_METRIC and limit.window == OVERRIDE_WINDOW.value
            ]
            if cap not in caps:
                raise BenchError(f"{SUBJECT_PREFIX}{i}: the service answers {OVERRIDE_METRIC} caps {caps}, not {cap}")


def settle(server: Server, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the server's CPU falls under SETTLE_CPU_PCT over 0.5 s (it hears one config
    message per override written); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(server.process.pid)
        time.sleep(0.5)
        if 100.0 * (cpu_seconds(server.process.pid) - before) / 0.5 < SETTLE_CPU_PCT:
            break
    return time.monotonic() - started


# -- report ----------------------------------------------------------------------------------


def cell_label(cell: str, args: argparse.Namespace) -> str:
    if cell == "small":
        return f"{args.small:,} subjects, 0 overrides"
    if cell == "large":
        return f"{args.large:,} subjects, 0 overrides"
    return f"{args.large:,} subjects, {args.overrides:,} overrides"


RATIOS: Final = (
    ("large_over_small", "large", "small", "{large} / {small} subjects"),
    ("overrides_over_none", "overrides", "large", "{overrides} / 0 overrides"),
)


def summarize(cells: list[dict[str, Any]], concurrencies: Sequence[int]) -> dict[str, dict[str, dict[str, Any]]]:
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name in CELLS:
        for c in concurrencies:
            runs = [cell for cell in cells if cell["cell"] == name and cell["concurrency"] == c]
            if not runs:
                continue
            outcomes: Counter[str] = Counter()
            for cell in runs:
                outcomes.update(cell["outcomes"])
            ok = sum(n for k, n in outcomes.items() if k in OK_OUTCOMES)
            deny = outcomes.get("DENY", 0)
            summary.setdefault(name, {})[str(c)] = {
                key: statistics.median(cell[key] for cell in runs)
                for key in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "server_cpu_pct",
                    "redis_cpu_pct",
                    "client_cpu_pct",
                    "hgetall_per_request",
                    "evalsha_per_request",
                )
            } | {
                "rounds": len(runs),
                "ok": ok,
                "deny": deny,
                "errors": sum(outcomes.values()) - ok - deny,
                "outcomes": dict(sorted(outcomes.items())),
            }
    return summary


def ratios(summary: dict[str, dict[str, dict[str, Any]]], concurrencies: Sequence[int]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for key, a, b, _ in RATIOS:
        for c in concurrencies:
            try:
                top, bottom = summary[a][str(c)], summary[b][str(c)]
            except KeyError:
                continue
            for what in ("rps", "p50_ms", "p99_ms"):
                if bottom[what]:
                    table.setdefault(f"{key}:{what}", {})[str(c)] = top[what] / bottom[what]
    return table


def render(
    machine: dict[str, Any],
    config: dict[str, Any],
    args: argparse.Namespace,
    summary: dict[str, dict[str, dict[str, Any]]],
    ratio_table: dict[str, dict[str, float]],
    loads: dict[str, Any],
) -> list[str]:
    lines = [
        "## quota-service flat-cost benchmark",
        "",
        f"machine: {machine['cpu_count']} cores ({machine['cpus_usable']} usable), {machine['platform']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
        f"versions: Python {machine['python']}, grpcio {machine['grpc']}, protobuf {machine['protobuf']}, "
        f"redis-py {machine['redis_py']} (hiredis: {'yes' if machine['hiredis'] else 'NO'}), "
        f"redis-server {machine['redis_server']}",
        f"load: quota-service --workers 1; {config['rounds']} interleaved round(s), per cell {config['warmup']:g} s "
        f"warm-up + {config['duration']:g} s measured; CheckAndReserve of {config['tokens']:g} tokens, fresh "
        f"request_id per call, subjects drawn at random from the pool (the small pool primed by one dry run "
        f"per subject), {config['channels']} channels; median of the rounds",
    ]
    for what, load in loads.items():
        if what == "template":
            continue
        if what.startswith("prefill"):
            lines.append(
                f"prefill ({load['subjects']:,} subjects, one reservation's keys each): {load['keys']:,} keys in "
                f"{load['seconds']:.1f} s, +{load['bytes'] / 2**20:,.1f} MiB of Redis used_memory "
                f"({load['bytes_per_subject']:,.0f} bytes per subject)"
            )
        else:
            lines.append(
                f"overrides: {load['overrides']:,} ({OVERRIDE_METRIC}/{OVERRIDE_WINDOW.value} = "
                f"{args.override_tokens:,}) on every {load['every']}-th subject "
                f"({100.0 * load['overrides'] / args.large:.0f} % of the large pool), written in "
                f"{load['seconds']:.1f} s, +{load['bytes'] / 2**20:,.1f} MiB ({load['bytes_per_override']:,.0f} "
                f"bytes per override); server settled {load['settle_seconds']:.1f} s"
            )
    template = loads.get("template", [])
    if template:
        shapes = ", ".join(f"{t['kind']}:{{S}}{t['rest']} ({t['type']}, {t['size']} B)" for t in template)
        lines.append(f"template keys per subject: {shapes}")
    lines += [
        "",
        "| cell | concurrency | req/s | p50 ms | p99 ms | server CPU % | redis CPU % | client CPU % "
        "| EVALSHA per call | HGETALL per call | ALLOW+WARN | DENY | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in CELLS:
        for c, cell in summary.get(name, {}).items():
            lines.append(
                f"| {cell_label(name, args)} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} "
                f"| {cell['server_cpu_pct']:.0f} | {cell['redis_cpu_pct']:.0f} | {cell['client_cpu_pct']:.0f} "
                f"| {cell['evalsha_per_request']:.2f} | {cell['hgetall_per_request']:.2f} "
                f"| {cell['ok']} | {cell['deny']} | {cell['errors']} |"
            )
    names = {"small": f"{args.small:,}", "large": f"{args.large:,}", "overrides": f"{args.overrides:,}"}
    lines += ["", "| ratio | concurrency | req/s | p50 | p99 |", "| --- | ---: | ---: | ---: | ---: |"]
    for key, _, _, label in RATIOS:
        for c in config["concurrency"]:
            row = [ratio_table.get(f"{key}:{what}", {}).get(str(c)) for what in ("rps", "p50_ms", "p99_ms")]
            if row[0] is None:
                continue
            text = " | ".join("" if v is None else f"{v:.2f}" for v in row)
            lines.append(f"| {label.format(**names)} | {c} | {text} |")
    lines += ["", f"targets (issue 8: flat cost, req/s ratio within 1 +- {TARGET_TOLERANCE:.2f}; never enforced):"]
    for key, _, _, label in RATIOS:
        for c in config["concurrency"]:
            value = ratio_table.get(f"{key}:rps", {}).get(str(c))
            if value is None:
                continue
            met = abs(value - 1.0) <= TARGET_TOLERANCE + 1e-12
            lines.append(
                f"target: {label.format(**names)} (req/s) at {c}: {value:.2f} -> {'MET' if met else 'NOT MET'}"
            )
    for name, cells in summary.items():
        for c, cell in cells.items():
            if cell["deny"] or cell["errors"]:
                lines.append(
                    f"WARNING: {cell_label(name, args)} at {c}: answers other than ALLOW/WARN: {cell['outcomes']}"
                )
    return lines


def targets(ratio_table: dict[str, dict[str, float]], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    found = []
    for key, _, _, _ in RATIOS:
        for c in concurrencies:
            value = ratio_table.get(f"{key}:rps", {}).get(str(c))
            if value is not None:
                found.append(
                    {"ratio": key, "concurrency": c, "value": value, "met": abs(value - 1.0) <= TARGET_TOLERANCE}
                )
    return found


# -- main --------------------------------------------------------------------------------------


def _concurrencies(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or any(v < 1 or v > 1024 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of concurrencies in [1, 1024]")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m bench.flat", description=doc)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported (default 2)")
    parser.add_argument("--concurrency", type=_concurrencies, default=[32], help="comma-separated (default 32)")
    parser.add_argument("--small", type=int, default=1000, help="subjects of the small pool (default 1000)")
    parser.add_argument("--large", type=int, default=1_000_000, help="subjects of the large pool (default 1000000)")
    parser.add_argument("--overrides", type=int, default=100_000, help="overrides stored (default 100000)")
    parser.add_argument(
        "--override-tokens", type=int, default=2000, help="each override's tokens per day (default 2000)"
    )
    parser.add_argument("--channels", type=int, default=8, help="channels per load generator (default 8)")
    parser.add_argument("--tokens", type=float, default=10.0, help="tokens asked per call (default 10)")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies", help="quota-service's policy files")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 20:
        parser.error("out of range: 0 < duration <= 600, 0 <= warmup <= 60, 1 <= rounds <= 20")
    if not 1 <= args.small <= args.large or not 1 <= args.overrides <= args.large:
        parser.error("need 1 <= --small <= --large and 1 <= --overrides <= --large")
    if args.tokens <= 0 or not 1 <= args.channels <= 64 or args.override_tokens < 1:
        parser.error("--tokens > 0, 1 <= --channels <= 64, --override-tokens >= 1")
    return args


def _db_url(url: str, db: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="quota-bench-flat-"))
    children = Children(workdir)
    failed = True
    try:
        _progress(f"bench.flat: starting a private redis-server (logs in {workdir})")
        redis_process, url = start_redis(children)
        machine = machine_info(redis_server_version(find_redis_server()))
        # One Redis, two databases, one quota-service on each (identical processes): the large
        # pool is loaded once for every round, the small one reloaded (flushed) per round.
        urls = {"small": _db_url(url, 1), "large": _db_url(url, 0)}
        servers = {
            pool: start_server(children, "quota", urls[pool], args.policies, name=f"quota-{pool}")
            for pool in ("small", "large")
        }
        _progress(f"bench.flat: quota-service serving on {', '.join(s.target for s in servers.values())}")
        template = capture_template(urls["large"], servers["large"])
        loads: dict[str, Any] = {
            "template": [{"kind": t.kind, "rest": t.rest, "type": t.type, "size": t.size} for t in template]
        }
        max_units = override_units(OVERRIDE_METRIC, float(args.override_tokens))

        def load_pool(pool: str) -> None:
            subjects = args.small if pool == "small" else args.large
            load = prefill(urls[pool], template, subjects)
            loads.setdefault(f"prefill-{pool}", load)
            _progress(
                f"bench.flat: prefilled {subjects:,} subjects in {load['seconds']:.1f} s "
                f"(+{load['bytes'] / 2**20:,.1f} MiB of Redis used_memory)"
            )

        load_pool("large")
        cells: list[dict[str, Any]] = []
        for round_no in range(1, args.rounds + 1):
            for name in CELLS:
                if name == "small":
                    load_pool("small")
                elif name == "large" and round_no > 1:
                    remove_overrides(urls["large"], args.large, args.overrides)
                elif name == "overrides":
                    before = used_memory(url)
                    load = write_overrides(urls["large"], args.large, args.overrides, max_units)
                    load["bytes"] = used_memory(url) - before
                    load["bytes_per_override"] = load["bytes"] / args.overrides
                    load["settle_seconds"] = settle(servers["large"])
                    check_overrides(servers["large"], args.large, args.overrides, args.override_tokens)
                    loads.setdefault("overrides", load)
                    _progress(f"bench.flat: {args.overrides:,} overrides written in {load['seconds']:.1f} s")
                server = servers["small" if name == "small" else "large"]
                for c in args.concurrency:
                    samples: dict[str, Counter[str]] = {}
                    cell = run_cell(
                        children,
                        server,
                        redis_process.pid,
                        concurrency=c,
                        args=args,
                        prime=name == "small" and round_no == 1,
                        subjects=args.small if name == "small" else args.large,
                        pick="random",
                        pool=name,
                        on_window=functools.partial(sample_calls, samples, url),
                    )
                    completed = max(cell["rps"] * args.duration, 1.0)
                    delta = samples.get("end", Counter()) - samples.get("start", Counter())
                    delta["info"] -= 1  # the sample's own
                    cell["hgetall_per_request"] = delta.get("hgetall", 0) / completed
                    cell["evalsha_per_request"] = delta.get("evalsha", 0) / completed
                    cell["redis_commands"] = dict(sorted((k, n) for k, n in delta.items() if n > 0))
                    cell["cell"] = name
                    cell["round"] = round_no
                    cells.append(cell)
                    _progress(
                        f"bench.flat: round {round_no} {cell_label(name, args):<40} c={c:<3} {cell['rps']:8.0f} req/s "
                        f"p50 {cell['p50_ms']:6.2f} ms p99 {cell['p99_ms']:6.2f} ms "
                        f"server CPU {cell['server_cpu_pct']:3.0f}% answers {cell['outcomes']}"
                    )
        config = {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "duration": args.duration,
            "concurrency": args.concurrency,
            "channels": args.channels,
            "tokens": args.tokens,
            "small": args.small,
            "large": args.large,
            "overrides": args.overrides,
            "override_tokens": args.override_tokens,
        }
        summary = summarize(cells, args.concurrency)
        ratio_table = ratios(summary, args.concurrency)
        print("\n".join(render(machine, config, args, summary, ratio_table, loads)), flush=True)
        if args.json is not None:
            document = {
                "machine": machine,
                "config": config,
                "loads": loads,
                "median": summary,
                "ratios": ratio_table,
                "targets": targets(ratio_table, args.concurrency),
                "cells": cells,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        failed = False
        invalid = any(cell["deny"] or cell["errors"] for cs in summary.values() for cell in cs.values())
        return 1 if invalid else 0
    except KeyboardInterrupt:
        failed = False
        raise
    finally:
        children.stop_all()
        if args.keep_logs or failed:
            _progress(f"bench.flat: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench.flat", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
