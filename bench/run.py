"""``make bench``: quota-service side by side with a no-op floor and a design floor.

One run, one process tree: a private redis-server (never the shared one on 6379), three
gRPC servers as child processes (floor, design floor, the real ``quota-service serve``
with the shipped policies) and, for each measurement cell, a load-generator child process
(:mod:`bench.loadgen`) driving one of them at 1 and at 32 concurrent calls. Rounds are
interleaved (floor, design floor, quota-service, repeated ``--rounds`` times) and the
median per cell is reported, which resists the noise of a small shared machine. Redis is
flushed before every cell, so no subject comes near its caps.

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
from quota_service.store.embedded import find_redis_server, free_port

ROOT: Final = Path(__file__).resolve().parents[1]
TARGET_RATIO: Final = 0.80
#: Every system, in the order of a round; "design2" only with --with-two-step.
SYSTEMS: Final = ("floor", "design", "design2", "quota")
LABELS: Final = {
    "floor": "floor (no-op gRPC)",
    "design": "design floor (+1 EVALSHA)",
    "design2": "design floor, 2 steps (+2 EVALSHA)",
    "quota": "quota-service",
}
OK_OUTCOMES: Final = frozenset({"ALLOW", "WARN"})
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0


class BenchError(RuntimeError):
    """A server or the load generator failed; the message says which and shows its log."""


# -- child processes ---------------------------------------------------------------------


def _load_libc() -> Any:
    # Loaded in the parent: the forked child must not import or dlopen anything before exec
    # (another thread may hold the import lock at fork time, and the child would hang).
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC: Final = _load_libc() if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
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


def start_server(children: Children, system: str, redis_url: str, policies: Path) -> Server:
    port_file = children.workdir / f"{system}.port"
    if system == "quota":
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
        ]
    elif system == "floor":
        args = [sys.executable, "-m", "bench.servers", "--mode", "floor", "--port-file", str(port_file)]
    else:
        steps = "2" if system == "design2" else "1"
        args = [sys.executable, "-m", "bench.servers", "--mode", "design", "--steps", steps]
        args += ["--redis-url", redis_url, "--port-file", str(port_file)]
    process = children.spawn(system, args)
    port = _wait_port(children, system, process, port_file)
    _wait_ready(f"127.0.0.1:{port}")
    return Server(system, process, port)


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


@dataclass
class CpuProbe:
    pids: dict[str, int | None]
    started: float = 0.0
    before: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started = time.monotonic()
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def percent(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        return {name: 100.0 * (cpu_seconds(pid) - self.before[name]) / wall for name, pid in self.pids.items()}


def run_cell(
    children: Children,
    server: Server,
    redis_pid: int | None,
    *,
    concurrency: int,
    args: argparse.Namespace,
    prime: bool,
) -> dict[str, Any]:
    """One load-generator process against one server; server and Redis CPU sampled over the
    measured window only."""
    command = [
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
        str(args.subjects),
        "--tokens",
        str(args.tokens),
    ]
    if prime:
        command.append("--prime")
    probe = CpuProbe({"server": server.process.pid, "redis": redis_pid})
    name = f"loadgen-{server.name}-{concurrency}"
    process = children.spawn(name, command, stdout=subprocess.PIPE)
    budget = args.warmup + args.duration + args.subjects / 50 + 60.0
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
            elif line == "window-end":
                cpu = probe.percent()
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
    report["system"] = server.name
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


def summarize(cells: list[dict[str, Any]], concurrencies: Sequence[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """Median per (system, concurrency) over the rounds; answers summed."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for system in SYSTEMS:
        for c in concurrencies:
            runs = [cell for cell in cells if cell["system"] == system and cell["concurrency"] == c]
            if not runs:
                continue
            outcomes: Counter[str] = Counter()
            for cell in runs:
                outcomes.update(cell["outcomes"])
            ok = sum(n for k, n in outcomes.items() if k in OK_OUTCOMES)
            deny = outcomes.get("DENY", 0)
            summary.setdefault(system, {})[str(c)] = {
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


def ratios(summary: dict[str, dict[str, dict[str, Any]]], concurrencies: Sequence[int]) -> dict[str, dict[str, float]]:
    def ratio(a: str, b: str, c: int) -> float:
        try:
            return float(summary[a][str(c)]["rps"]) / float(summary[b][str(c)]["rps"])
        except (KeyError, ZeroDivisionError):
            return float("nan")

    table = {
        "quota_over_design": {str(c): ratio("quota", "design", c) for c in concurrencies},
        "design_over_floor": {str(c): ratio("design", "floor", c) for c in concurrencies},
        "quota_over_floor": {str(c): ratio("quota", "floor", c) for c in concurrencies},
    }
    if "design2" in summary:
        table["quota_over_design2"] = {str(c): ratio("quota", "design2", c) for c in concurrencies}
        table["design2_over_design"] = {str(c): ratio("design2", "design", c) for c in concurrencies}
    return table


def render(
    machine: dict[str, Any],
    config: dict[str, Any],
    summary: dict[str, dict[str, dict[str, Any]]],
    ratio_table: dict[str, dict[str, float]],
    concurrencies: Sequence[int],
) -> str:
    lines = [
        "## quota-service benchmark",
        "",
        f"machine: {machine['cpu_count']} cores ({machine['cpus_usable']} usable), {machine['platform']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
        f"versions: Python {machine['python']}, grpcio {machine['grpc']}, protobuf {machine['protobuf']}, "
        f"redis-py {machine['redis_py']} (hiredis: {'yes' if machine['hiredis'] else 'NO'}), "
        f"redis-server {machine['redis_server']}",
        f"load: {config['rounds']} interleaved round(s), per cell {config['warmup']:g} s warm-up + "
        f"{config['duration']:g} s measured; CheckAndReserve of {config['tokens']:g} tokens, "
        f"{config['subjects']} subjects round robin, fresh request_id per call; median of the rounds",
        "",
        "| system | concurrency | req/s | p50 ms | p99 ms | server CPU % | redis CPU % | client CPU % "
        "| ALLOW+WARN | DENY | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in SYSTEMS:
        for c in concurrencies:
            cell = summary.get(system, {}).get(str(c))
            if cell is None:
                continue
            lines.append(
                f"| {LABELS[system]} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} "
                f"| {cell['server_cpu_pct']:.0f} | {cell['redis_cpu_pct']:.0f} | {cell['client_cpu_pct']:.0f} "
                f"| {cell['ok']} | {cell['deny']} | {cell['errors']} |"
            )
    lines += ["", "| ratio (req/s) | " + " | ".join(f"at {c}" for c in concurrencies) + " |"]
    lines.append("| --- | " + " | ".join("---:" for _ in concurrencies) + " |")
    names = {
        "quota_over_design": "quota-service / design floor",
        "design_over_floor": "design floor / floor",
        "quota_over_floor": "quota-service / floor",
        "quota_over_design2": "quota-service / design floor, 2 steps",
        "design2_over_design": "design floor, 2 steps / design floor",
    }
    for key, label in names.items():
        if key not in ratio_table:
            continue
        lines.append(f"| {label} | " + " | ".join(f"{ratio_table[key][str(c)]:.2f}" for c in concurrencies) + " |")
    top = str(max(concurrencies))
    met = ratio_table["quota_over_design"][top]
    verdict = "MET" if met >= TARGET_RATIO else "NOT MET"
    lines += [
        "",
        f"target: quota-service / design floor >= {TARGET_RATIO:.2f} at concurrency {top}: {met:.2f} -> {verdict}",
    ]
    bad = {s: cells for s, cells in summary.items() if any(cell["deny"] or cell["errors"] for cell in cells.values())}
    for system, cells in bad.items():
        for conc, cell in cells.items():
            if cell["deny"] or cell["errors"]:
                lines.append(
                    f"WARNING: {LABELS[system]} at {conc}: answers other than ALLOW/WARN: {cell['outcomes']} "
                    "(the numbers measure denials or errors, not the service)"
                )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def _positive_ints(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or any(v < 1 or v > 1024 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of concurrencies in [1, 1024]")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported (default 2)")
    parser.add_argument("--concurrency", type=_positive_ints, default=[1, 32], help="comma-separated (default 1,32)")
    parser.add_argument("--subjects", type=int, default=2000, help="distinct subjects, round robin (default 2000)")
    parser.add_argument("--tokens", type=float, default=10.0, help="tokens asked per call (default 10)")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies", help="quota-service's policy files")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--with-two-step",
        action="store_true",
        help="also measure the design floor with a second (global) EVALSHA per call, as quota-service does",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 20:
        parser.error("out of range: 0 < duration <= 600, 0 <= warmup <= 60, 1 <= rounds <= 20")
    if args.subjects < 1 or args.tokens <= 0:
        parser.error("--subjects must be >= 1 and --tokens > 0")
    return args


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
        systems = [s for s in SYSTEMS if s != "design2" or args.with_two_step]
        servers = {}
        for system in systems:
            servers[system] = start_server(children, system, redis_url, args.policies)
            _progress(f"bench: {LABELS[system]} serving on {servers[system].target}")
        cells: list[dict[str, Any]] = []
        primed: set[str] = set()
        with redis.Redis.from_url(redis_url) as admin:
            for round_no in range(1, args.rounds + 1):
                for system in systems:
                    for c in args.concurrency:
                        admin.flushall()
                        cell = run_cell(
                            children,
                            servers[system],
                            redis_process.pid,
                            concurrency=c,
                            args=args,
                            prime=system not in primed,
                        )
                        primed.add(system)
                        cell["round"] = round_no
                        cells.append(cell)
                        _progress(
                            f"bench: round {round_no} {LABELS[system]:<35} c={c:<3} {cell['rps']:8.0f} req/s "
                            f"p50 {cell['p50_ms']:6.2f} ms p99 {cell['p99_ms']:6.2f} ms "
                            f"server CPU {cell['server_cpu_pct']:3.0f}% answers {cell['outcomes']}"
                        )
        config = {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "duration": args.duration,
            "concurrency": args.concurrency,
            "subjects": args.subjects,
            "tokens": args.tokens,
            "policies": str(args.policies),
            "systems": systems,
        }
        summary = summarize(cells, args.concurrency)
        ratio_table = ratios(summary, args.concurrency)
        print(render(machine, config, summary, ratio_table, args.concurrency), flush=True)
        if args.json is not None:
            document = {
                "machine": machine,
                "config": config,
                "median": summary,
                "ratios": ratio_table,
                "target": {"quota_over_design_at_max_concurrency": TARGET_RATIO},
                "cells": cells,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        failed = False
        invalid = any(cell["deny"] or cell["errors"] for cells_ in summary.values() for cell in cells_.values())
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return bench(args)
    except KeyboardInterrupt:
        _progress("bench: interrupted; every child process was stopped")
        return 130
    except (BenchError, grpc.RpcError, redis.RedisError, OSError) as exc:
        _progress(f"bench: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
