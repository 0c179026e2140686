"""``make bench``: quota-service side by side with a no-op floor, a design floor and the
``limits`` library baseline.

One run, one process tree: a private redis-server (never the shared one on 6379), the gRPC
servers as child processes (floor, design floor, ``limits`` in a servicer, the real
``quota-service serve`` with the shipped policies, with ``--workers 1`` and ``--workers 2``)
and, for each measurement cell, a load-generator child process (:mod:`bench.loadgen`)
driving one of them at 1 and at 32 concurrent calls, for two subject pools: ``hot`` (2,000
subjects round robin, warmed by one dry run each) and ``cold`` (drawn at random from
100,000, most never seen). Then the same load generator pinned to one core (``taskset -c
0``; the servers not pinned) against the design floor and quota-service with 1 and 2
workers, at the highest concurrency: its own rows. Rounds are interleaved and the median per
cell is reported. Redis is flushed before every cell, so no subject comes near its caps.
The report prints the ratios of issue 8 and says which targets are met; it never fails on
a target.

Progress goes to stderr; the report (markdown) to stdout; ``--json PATH`` writes the numbers.
Exit status: 0, or 1 when some answer was neither ALLOW nor WARN (a benchmark that measures
denials or errors is wrong), 2 when a server did not start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import grpc
import redis

from bench.workload import FEATURE, MODEL, PROVIDER
from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.server.store_identity import IDENTITY_KEY
from quota_service.server.supervisor import die_with_parent
from quota_service.store.embedded import find_redis_server, free_port

ROOT: Final = Path(__file__).resolve().parents[1]
#: Every system, in the order of a round; "design2" only with --with-two-step, "limits" only
#: when the bench extra (the limits library) is installed.
SYSTEMS: Final = ("floor", "design", "design2", "limits", "quota", "quota2")
LABELS: Final = {
    "floor": "floor (no-op gRPC)",
    "design": "design floor (+1 EVALSHA)",
    "design2": "design floor, 2 steps (+2 EVALSHA)",
    "limits": "limits library (3 hits)",
    "quota": "quota-service",
    "quota2": "quota-service, 2 workers",
}
#: Subject pools: (how subjects are picked, default count).
POOLS: Final = {"hot": ("roundrobin", 2000), "cold": ("random", 100_000)}
#: The floor does not read the subject: measured on the hot pool only.
SUBJECT_BLIND: Final = frozenset({"floor"})
#: Measured again with the load generator pinned to one core (taskset -c 0).
PINNED_SYSTEMS: Final = ("design", "quota", "quota2")
PINNED_SUFFIX: Final = "@pinned"
#: Issue 8's targets (reported, never enforced).
TARGET_OVER_DESIGN: Final = 1.0
TARGET_OVER_LIMITS: Final = 1.5
TARGET_P50_AT_1: Final = 1.3
TARGET_P99_AT_MAX: Final = 1.5
OK_OUTCOMES: Final = frozenset({"ALLOW", "WARN"})
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0


class BenchError(RuntimeError):
    """A server or the load generator failed; the message says which and shows its log."""


# -- child processes ---------------------------------------------------------------------


@dataclass
class Children:
    """Every process the benchmark started; :meth:`stop_all` ends each of them by its pid."""

    workdir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(
        self, name: str, args: Sequence[str], *, stdout: int | IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(args),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                # Own session: a Ctrl-C reaches only the benchmark, which then stops its children in order.
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        self.processes.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = [(n, p) for n, p in self.processes if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self.processes)):
            self.stop(process)


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _wait_port(children: Children, name: str, process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode} while starting:\n{children.log_tail(name)}")
        with contextlib.suppress(OSError, ValueError):
            text = port_file.read_text().strip()
            if text:
                return int(text)
        time.sleep(0.05)
    raise BenchError(f"{name} wrote no port within {START_TIMEOUT:g}s:\n{children.log_tail(name)}")


def _wait_ready(target: str) -> None:
    """One dry-run CheckAndReserve, retried until it answers (bounded)."""
    request = quota_pb2.CheckAndReserveRequest(
        subject="bench-ready", feature=FEATURE, provider=PROVIDER, model=MODEL, usage={"tokens": 1}, dry_run=True
    )
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        while True:
            try:
                stub.CheckAndReserve(request, timeout=2.0, wait_for_ready=True)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def start_redis(children: Children) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free 127.0.0.1 port, no persistence; returns it and its URL."""
    directory = children.workdir / "redis"
    directory.mkdir(exist_ok=True)
    for _ in range(5):  # another process may take the free port before redis binds it
        port = free_port()
        process = children.spawn(
            "redis",
            [
                find_redis_server(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + START_TIMEOUT
        with redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) as client:
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    client.ping()
                    return process, url
                except redis.ConnectionError:
                    time.sleep(0.05)
        children.stop(process)
    raise BenchError(f"redis-server did not start:\n{children.log_tail('redis')}")


def start_server(
    children: Children,
    system: str,
    redis_url: str,
    policies: Path,
    channels: int = 1,
    name: str = "",
    extra_args: Sequence[str] = (),
) -> Server:
    """Start ``system`` (a name of :data:`SYSTEMS`); ``name`` (default: ``system``) names its
    log and port file, so one system may run twice. ``extra_args``: more ``serve`` options
    (quota-service only, e.g. ``--ledger-url none``)."""
    name = name or system
    port_file = children.workdir / f"{name}.port"
    if system in ("quota", "quota2"):
        args = [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            "--policies",
            str(policies),
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "WARNING",
            "--no-watch",
            "--workers",
            "2" if system == "quota2" else "1",
            "--data-dir",
            str(children.workdir / f"{name}-data"),
            *extra_args,
        ]
    elif system == "floor":
        args = [sys.executable, "-m", "bench.servers", "--mode", "floor", "--port-file", str(port_file)]
    elif system == "limits":
        args = [sys.executable, "-m", "bench.servers", "--mode", "limits", "--redis-url", redis_url]
        args += ["--port-file", str(port_file)]
    else:
        steps = "2" if system == "design2" else "1"
        args = [sys.executable, "-m", "bench.servers", "--mode", "design", "--steps", steps]
        args += ["--redis-url", redis_url, "--port-file", str(port_file)]
    process = children.spawn(name, args)
    port = _wait_port(children, name, process, port_file)
    _wait_ready(f"127.0.0.1:{port}")
    return Server(name, process, port)


# -- measurement ---------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a live process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int | None) -> list[int]:
    """``pid`` and its direct children (a supervisor's workers)."""
    if pid is None:
        return []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(c) for c in children)]


@dataclass
class CpuProbe:
    """CPU of process groups (a server: its process and its direct children, the workers)."""

    pids: dict[str, list[int]]
    started: float = 0.0
    before: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self.started = time.monotonic()
        self.before = self._sample()

    def percent(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        after = self._sample()
        return {name: 100.0 * (after[name] - self.before[name]) / wall for name in self.pids}


def run_cell(
    children: Children,
    server: Server,
    redis_pid: int | None,
    *,
    concurrency: int,
    args: argparse.Namespace,
    prime: bool,
    pool: str = "hot",
    pinned: bool = False,
    subjects: int | None = None,
    pick: str | None = None,
    on_window: Callable[[str], None] | None = None,
    commit: bool = False,
) -> dict[str, Any]:
    """One load-generator process against one server; server and Redis CPU sampled over the
    measured window only. ``pinned``: the load generator runs under ``taskset -c 0``.
    ``subjects`` and ``pick`` default to those of ``pool`` (a name of :data:`POOLS`).
    ``on_window("start" | "end")`` is called as the measured window opens and closes."""
    if subjects is None:
        subjects = args.pool_sizes[pool]
    if pick is None:
        pick = POOLS[pool][0]
    command = [
        *(["taskset", "-c", "0"] if pinned else []),
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        server.target,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--subjects",
        str(subjects),
        "--tokens",
        str(args.tokens),
        "--pick",
        pick,
        "--channels",
        str(args.channels),
    ]
    if commit:
        command.append("--commit")
    if prime:
        command.append("--prime")
        if len(with_children(server.process.pid)) > 2:  # a supervisor and its workers
            command.append("--prime-all-channels")
    probe = CpuProbe({"server": with_children(server.process.pid), "redis": with_children(redis_pid)[:1]})
    name = f"loadgen-{server.name}-{pool}-{concurrency}{'-pinned' if pinned else ''}"
    process = children.spawn(name, command, stdout=subprocess.PIPE)
    budget = args.warmup + args.duration + (subjects * args.channels / 50 if prime else 0) + 60.0
    watchdog = threading.Timer(budget, process.kill)
    watchdog.start()
    cpu: dict[str, float] = {}
    report_line = ""
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode().strip()
            if line == "window-start":
                probe.start()
                if on_window is not None:
                    on_window("start")
            elif line == "window-end":
                cpu = probe.percent()
                if on_window is not None:
                    on_window("end")
            elif line.startswith("{"):
                report_line = line
        process.wait()
    finally:
        watchdog.cancel()
        children.stop(process)
    if process.returncode != 0 or not report_line:
        raise BenchError(f"{name} failed ({process.returncode}):\n{children.log_tail(name)}")
    report: dict[str, Any] = json.loads(report_line)
    report["server_cpu_pct"] = cpu.get("server", 0.0)
    report["redis_cpu_pct"] = cpu.get("redis", 0.0)
    report["system"] = server.name + (PINNED_SUFFIX if pinned else "")
    report["pool"] = pool
    return report


# -- report ------------------------------------------------------------------------------------


def machine_info(redis_binary_version: str) -> dict[str, Any]:
    import google.protobuf

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "redis_py": redis.__version__,
        "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
        "redis_server": redis_binary_version,
        "loadavg_at_start": list(os.getloadavg()),
    }


def redis_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


Summary = dict[str, dict[str, dict[str, dict[str, Any]]]]  # variant -> pool -> concurrency -> cell


def variant_label(variant: str) -> str:
    system, _, pinned = variant.partition("@")
    return LABELS[system] + (", load generator on 1 core" if pinned else "")


def variants() -> list[str]:
    return [*SYSTEMS, *(s + PINNED_SUFFIX for s in PINNED_SYSTEMS)]


def summarize(cells: list[dict[str, Any]], concurrencies: Sequence[int]) -> Summary:
    """Median per (system variant, pool, concurrency) over the rounds; answers summed."""
    summary: Summary = {}
    for variant in variants():
        for pool in POOLS:
            for c in concurrencies:
                runs = [
                    cell
                    for cell in cells
                    if cell["system"] == variant and cell["pool"] == pool and cell["concurrency"] == c
                ]
                if not runs:
                    continue
                outcomes: Counter[str] = Counter()
                for cell in runs:
                    outcomes.update(cell["outcomes"])
                ok = sum(n for k, n in outcomes.items() if k in OK_OUTCOMES)
                deny = outcomes.get("DENY", 0)
                summary.setdefault(variant, {}).setdefault(pool, {})[str(c)] = {
                    "rps": statistics.median(cell["rps"] for cell in runs),
                    "p50_ms": statistics.median(cell["p50_ms"] for cell in runs),
                    "p99_ms": statistics.median(cell["p99_ms"] for cell in runs),
                    "server_cpu_pct": statistics.median(cell["server_cpu_pct"] for cell in runs),
                    "redis_cpu_pct": statistics.median(cell["redis_cpu_pct"] for cell in runs),
                    "client_cpu_pct": statistics.median(cell["client_cpu_pct"] for cell in runs),
                    "rounds": len(runs),
                    "ok": ok,
                    "warn": outcomes.get("WARN", 0),
                    "deny": deny,
                    "errors": sum(outcomes.values()) - ok - deny,
                    "outcomes": dict(sorted(outcomes.items())),
                }
    return summary


def _value(summary: Summary, variant: str, pool: str, c: int, key: str) -> float:
    try:
        return float(summary[variant][pool][str(c)][key])
    except KeyError:
        return float("nan")


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def ratios(summary: Summary, concurrencies: Sequence[int]) -> dict[str, dict[str, float]]:
    """Named ratios, each by ``<pool>@<concurrency>``. req/s ratios (higher is better) and
    latency ratios (``p50``/``p99``: lower is better)."""
    low, top = min(concurrencies), max(concurrencies)
    table: dict[str, dict[str, float]] = {}

    def rps(name: str, a: str, b: str, pools: Sequence[str] = tuple(POOLS), at: Sequence[int] = concurrencies) -> None:
        row = {
            f"{pool}@{c}": _div(_value(summary, a, pool, c, "rps"), _value(summary, b, pool, c, "rps"))
            for pool in pools
            for c in at
        }
        row = {k: v for k, v in row.items() if v == v}  # drop the cells not measured (NaN)
        if row:
            table[name] = row

    def latency(name: str, a: str, b: str, key: str, c: int) -> None:
        row = {
            f"{pool}@{c}": _div(_value(summary, a, pool, c, key), _value(summary, b, pool, c, key)) for pool in POOLS
        }
        row = {k: v for k, v in row.items() if v == v}
        if row:
            table[name] = row

    for quota in ("quota", "quota2"):
        rps(f"{quota}_over_design", quota, "design")
        rps(f"{quota}_over_limits", quota, "limits")
        latency(f"{quota}_p50_over_design", quota, "design", "p50_ms", low)
        latency(f"{quota}_p99_over_design", quota, "design", "p99_ms", top)
    rps("quota2_over_quota", "quota2", "quota")
    rps("quota2_over_quota_pinned", "quota2" + PINNED_SUFFIX, "quota" + PINNED_SUFFIX, at=(top,))
    rps("quota_over_design_pinned", "quota" + PINNED_SUFFIX, "design" + PINNED_SUFFIX, at=(top,))
    rps("quota2_over_design_pinned", "quota2" + PINNED_SUFFIX, "design" + PINNED_SUFFIX, at=(top,))
    rps("limits_over_design", "limits", "design")
    rps("design_over_floor", "design", "floor", pools=("hot",))
    rps("quota_over_floor", "quota", "floor", pools=("hot",))
    if "design2" in summary:
        rps("quota_over_design2", "quota", "design2")
        rps("design2_over_design", "design2", "design")
    return table


RATIO_NAMES: Final = {
    "quota_over_design": "quota-service / design floor (req/s)",
    "quota2_over_design": "quota-service, 2 workers / design floor (req/s)",
    "quota_over_limits": "quota-service / limits library (req/s)",
    "quota2_over_limits": "quota-service, 2 workers / limits library (req/s)",
    "quota_p50_over_design": "quota-service p50 / design floor p50",
    "quota2_p50_over_design": "quota-service, 2 workers p50 / design floor p50",
    "quota_p99_over_design": "quota-service p99 / design floor p99",
    "quota2_p99_over_design": "quota-service, 2 workers p99 / design floor p99",
    "quota2_over_quota": "2 workers / 1 worker (req/s)",
    "quota2_over_quota_pinned": "2 workers / 1 worker, load generator on 1 core (req/s)",
    "quota_over_design_pinned": "quota-service / design floor, load generator on 1 core (req/s)",
    "quota2_over_design_pinned": "quota-service, 2 workers / design floor, load generator on 1 core (req/s)",
    "limits_over_design": "limits library / design floor (req/s)",
    "design_over_floor": "design floor / floor (req/s)",
    "quota_over_floor": "quota-service / floor (req/s)",
    "quota_over_design2": "quota-service / design floor, 2 steps (req/s)",
    "design2_over_design": "design floor, 2 steps / design floor (req/s)",
}


def targets(ratio_table: dict[str, dict[str, float]], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    """Issue 8's targets, for quota-service with 1 and with 2 workers: (what, value, met)."""
    low, top = min(concurrencies), max(concurrencies)
    found: list[dict[str, Any]] = []
    for quota in ("quota", "quota2"):
        checks = [
            (f"{quota}_over_design", "hot", top, ">=", TARGET_OVER_DESIGN),
            (f"{quota}_over_design", "cold", top, ">=", TARGET_OVER_DESIGN),
            (f"{quota}_over_limits", "hot", top, ">=", TARGET_OVER_LIMITS),
            (f"{quota}_over_limits", "cold", top, ">=", TARGET_OVER_LIMITS),
            (f"{quota}_p50_over_design", "hot", low, "<=", TARGET_P50_AT_1),
            (f"{quota}_p50_over_design", "cold", low, "<=", TARGET_P50_AT_1),
            (f"{quota}_p99_over_design", "hot", top, "<=", TARGET_P99_AT_MAX),
            (f"{quota}_p99_over_design", "cold", top, "<=", TARGET_P99_AT_MAX),
        ]
        for key, pool, c, op, bound in checks:
            value = ratio_table.get(key, {}).get(f"{pool}@{c}")
            if value is None:
                continue
            met = value >= bound if op == ">=" else value <= bound
            found.append(
                {"ratio": key, "pool": pool, "concurrency": c, "op": op, "bound": bound, "value": value, "met": met}
            )
    return found


def render(
    machine: dict[str, Any],
    config: dict[str, Any],
    summary: Summary,
    ratio_table: dict[str, dict[str, float]],
    concurrencies: Sequence[int],
    target_list: list[dict[str, Any]],
) -> str:
    sizes = config["pool_sizes"]
    how = {"roundrobin": "round robin, warmed", "random": "drawn at random"}
    pools_text = "; ".join(f"{pool}: {sizes[pool]:,} subjects {how[POOLS[pool][0]]}" for pool in config["pools"])
    lines = [
        "## quota-service benchmark",
        "",
        f"machine: {machine['cpu_count']} cores ({machine['cpus_usable']} usable), {machine['platform']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
        f"versions: Python {machine['python']}, grpcio {machine['grpc']}, protobuf {machine['protobuf']}, "
        f"redis-py {machine['redis_py']} (hiredis: {'yes' if machine['hiredis'] else 'NO'}), "
        f"redis-server {machine['redis_server']}, limits {machine.get('limits') or 'not installed'}",
        f"load: {config['rounds']} interleaved round(s), per cell {config['warmup']:g} s warm-up + "
        f"{config['duration']:g} s measured; CheckAndReserve of {config['tokens']:g} tokens, fresh request_id "
        f"per call, {config['channels']} channels (TCP connections) per load generator when concurrency allows; "
        f"median of the rounds",
        f"subjects: {pools_text}",
        "",
        "| system | subjects | concurrency | req/s | p50 ms | p99 ms | server CPU % | redis CPU % | client CPU % "
        "| ALLOW+WARN | DENY | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in variants():
        for pool in POOLS:
            for c in concurrencies:
                cell = summary.get(variant, {}).get(pool, {}).get(str(c))
                if cell is None:
                    continue
                lines.append(
                    f"| {variant_label(variant)} | {pool} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} "
                    f"| {cell['p99_ms']:.2f} | {cell['server_cpu_pct']:.0f} | {cell['redis_cpu_pct']:.0f} "
                    f"| {cell['client_cpu_pct']:.0f} | {cell['ok']} | {cell['deny']} | {cell['errors']} |"
                )
    columns = [f"{pool}@{c}" for pool in POOLS for c in concurrencies]
    lines += ["", "| ratio | " + " | ".join(col.replace("@", " at ") for col in columns) + " |"]
    lines.append("| --- | " + " | ".join("---:" for _ in columns) + " |")
    for key, label in RATIO_NAMES.items():
        row = ratio_table.get(key)
        if not row:
            continue
        lines.append(f"| {label} | " + " | ".join(f"{row[col]:.2f}" if col in row else "" for col in columns) + " |")
    lines += ["", "targets (issue 8; reported, never enforced):"]
    for t in target_list:
        lines.append(
            f"target: {RATIO_NAMES[t['ratio']]} {t['op']} {t['bound']:.2f}, {t['pool']} at {t['concurrency']}: "
            f"{t['value']:.2f} -> {'MET' if t['met'] else 'NOT MET'}"
        )
    if not config.get("pinned"):
        lines.append("note: no rows with the load generator pinned (taskset not found, or --no-pinned)")
    if machine.get("limits") is None:
        lines.append("note: no limits-library rows: the bench extra is not installed (pip install -e '.[bench]')")
    for variant, pools in summary.items():
        for pool, cells in pools.items():
            for conc, cell in cells.items():
                if cell["deny"] or cell["errors"]:
                    lines.append(
                        f"WARNING: {variant_label(variant)} ({pool}) at {conc}: answers other than ALLOW/WARN: "
                        f"{cell['outcomes']} (the numbers measure denials or errors, not the service)"
                    )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def _positive_ints(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or any(v < 1 or v > 1024 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of concurrencies in [1, 1024]")
    return values


def _pools(text: str) -> list[str] | int:
    """``hot``, ``cold``, ``hot,cold``; or a number: the hot pool alone with that many subjects."""
    if text.strip().isdigit():
        return int(text)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in POOLS for name in names):
        raise argparse.ArgumentTypeError("hot, cold, hot,cold, or a number of hot subjects")
    return [pool for pool in POOLS if pool in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (default 4)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell (default 0.5)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median is reported (default 1)")
    parser.add_argument("--concurrency", type=_positive_ints, default=[1, 32], help="comma-separated (default 1,32)")
    parser.add_argument(
        "--subjects",
        type=_pools,
        default=["hot", "cold"],
        help="subject pools: hot (round robin, warmed), cold (random, mostly never seen), or hot,cold "
        "(default); a number N: the hot pool alone with N subjects",
    )
    parser.add_argument("--hot-subjects", type=int, default=POOLS["hot"][1], help="subjects of the hot pool (2000)")
    parser.add_argument(
        "--cold-subjects", type=int, default=POOLS["cold"][1], help="subjects of the cold pool (100000)"
    )
    parser.add_argument("--channels", type=int, default=8, help="channels per load generator (default 8)")
    parser.add_argument("--tokens", type=float, default=10.0, help="tokens asked per call (default 10)")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies", help="quota-service's policy files")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--with-two-step",
        action="store_true",
        help="also measure the design floor with a second (global) EVALSHA per call, as quota-service does",
    )
    parser.add_argument(
        "--no-pinned", dest="pinned", action="store_false", help="skip the rows with the load generator on one core"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 20:
        parser.error("out of range: 0 < duration <= 600, 0 <= warmup <= 60, 1 <= rounds <= 20")
    if isinstance(args.subjects, int):
        args.hot_subjects, args.subjects = args.subjects, ["hot"]
    if args.hot_subjects < 1 or args.cold_subjects < 1 or args.tokens <= 0 or not 1 <= args.channels <= 64:
        parser.error("--hot-subjects and --cold-subjects must be >= 1, --tokens > 0, 1 <= --channels <= 64")
    args.pool_sizes = {"hot": args.hot_subjects, "cold": args.cold_subjects}
    args.pinned = args.pinned and shutil.which("taskset") is not None and sys.platform == "linux"
    return args


def _limits_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("limits")
    except Exception:
        return None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell may start a background job with SIGINT ignored.
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="quota-bench-"))
    children = Children(workdir)
    failed = True
    try:
        _progress(f"bench: starting a private redis-server (logs in {workdir})")
        redis_process, redis_url = start_redis(children)
        machine = machine_info(redis_server_version(find_redis_server()))
        machine["limits"] = _limits_version()
        systems = [
            s
            for s in SYSTEMS
            if (s != "design2" or args.with_two_step) and (s != "limits" or machine["limits"] is not None)
        ]
        servers = {}
        for system in systems:
            servers[system] = start_server(children, system, redis_url, args.policies)
            _progress(f"bench: {LABELS[system]} serving on {servers[system].target}")
        plan: list[tuple[str, str, bool, int]] = []  # (system, pool, pinned, concurrency), one round
        for pool in args.subjects:
            for system in systems:
                if pool != "hot" and system in SUBJECT_BLIND:
                    continue
                plan += [(system, pool, False, c) for c in args.concurrency]
        if args.pinned:
            for pool in args.subjects:
                plan += [(s, pool, True, max(args.concurrency)) for s in PINNED_SYSTEMS if s in servers]
        cells: list[dict[str, Any]] = []
        primed: set[str] = set()
        with redis.Redis.from_url(redis_url) as admin:
            for round_no in range(1, args.rounds + 1):
                for system, pool, pinned, c in plan:
                    flush_keeping_identity(admin)
                    prime = pool == "hot" and system not in primed
                    cell = run_cell(
                        children,
                        servers[system],
                        redis_process.pid,
                        concurrency=c,
                        args=args,
                        prime=prime,
                        pool=pool,
                        pinned=pinned,
                    )
                    if prime:
                        primed.add(system)
                    cell["round"] = round_no
                    cells.append(cell)
                    _progress(
                        f"bench: round {round_no} {variant_label(cell['system']):<58} {pool:<4} c={c:<3} "
                        f"{cell['rps']:8.0f} req/s p50 {cell['p50_ms']:6.2f} ms p99 {cell['p99_ms']:6.2f} ms "
                        f"server CPU {cell['server_cpu_pct']:3.0f}% answers {cell['outcomes']}"
                    )
        config = {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "duration": args.duration,
            "concurrency": args.concurrency,
            "pools": args.subjects,
            "pool_sizes": args.pool_sizes,
            "channels": args.channels,
            "tokens": args.tokens,
            "policies": str(args.policies),
            "systems": systems,
            "pinned": args.pinned,
        }
        summary = summarize(cells, args.concurrency)
        ratio_table = ratios(summary, args.concurrency)
        target_list = targets(ratio_table, args.concurrency)
        print(render(machine, config, summary, ratio_table, args.concurrency, target_list), flush=True)
        if args.json is not None:
            document = {
                "machine": machine,
                "config": config,
                "median": summary,
                "ratios": ratio_table,
                "targets": target_list,
                "cells": cells,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        failed = False
        invalid = any(
            cell["deny"] or cell["errors"]
            for pools in summary.values()
            for cells_ in pools.values()
            for cell in cells_.values()
        )
        return 1 if invalid else 0
    except KeyboardInterrupt:
        failed = False  # nothing to diagnose
        raise
    finally:
        children.stop_all()
        if args.keep_logs or failed:
            _progress(f"bench: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def flush_keeping_identity(client: redis.Redis, *, db_only: bool = False) -> None:
    """Empty the benchmark's Redis between cells (``db_only``: the client's database only),
    but for the store identity: the servers would otherwise (rightly) take the flush for a
    Redis that lost its data and fail closed."""
    identity = client.get(IDENTITY_KEY)
    with client.pipeline(transaction=True) as atomic:  # MULTI: no server ever sees the store without it
        if db_only:
            atomic.flushdb()
        else:
            atomic.flushall()
        if identity is not None:
            atomic.set(IDENTITY_KEY, identity)
        atomic.execute()


def run_main(name: str, run: Callable[[], int]) -> int:
    """A benchmark's exit status: ``run()``'s, 130 when interrupted (SIGINT or SIGTERM; every
    child is stopped by then), 2 with one line when it cannot go on."""
    try:
        with _sigterm_as_interrupt():
            return run()
    except KeyboardInterrupt:
        _progress(f"{name}: interrupted; every child process was stopped")
        return 130
    except (BenchError, grpc.RpcError, redis.RedisError, OSError) as exc:
        _progress(f"{name}: {exc}")
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
