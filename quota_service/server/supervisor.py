"""``quota-service serve --workers N``: one supervisor, N ``serve`` worker processes on one port.

The supervisor owns what must exist once: the listening address (checked free exactly as a
plain ``serve`` checks it, then held by a bound, never listening, ``SO_REUSEPORT`` socket so
the port stays ours while a worker restarts; the kernel only hands connections to listening
sockets, i.e. to the workers), the embedded Redis (started once, its URL passed to every
worker; never N of them), the ``--port-file`` (written once every worker is serving) and the
Prometheus endpoint (``--metrics-port``: prometheus-client multiprocess mode over a temporary
``PROMETHEUS_MULTIPROC_DIR`` every worker writes to; one view, see :func:`_serve_metrics`).
``--http`` is reserved the same way and served by every worker (``SO_REUSEPORT``): the
dashboard, the JSON API, health and ``/metrics`` (each worker's ``/metrics`` sums every
worker's files); the live event stream of any worker reads the one shared ledger.

Workers are ordinary ``serve`` processes (the same command line, plus ``--reuse-port``, the
supervisor's ``--redis-url``, their own port file, no metrics server) with ``QUOTA_WORKER_ID``
set, which puts ``worker=<id>`` in every log line. Worker 1 starts first and alone (it
migrates the ledger's schema; an invalid option or policy makes it exit 2, and the
supervisor then exits with that code, leaving nothing behind), the others once it serves.

A worker that dies is restarted after a backoff (0.5 s, doubling to 30 s; back to 0.5 s once
it has lived 60 s), logged with its exit status. SIGTERM/SIGINT: SIGTERM to every worker,
wait for their graceful drain (each drains as a plain ``serve`` does), stop the embedded Redis,
exit 0. SIGHUP is forwarded (every worker reloads its policy). On Linux every worker gets
SIGTERM from the kernel if the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from quota_service.server.app import ConfigurationError, ListenAddress, ensure_free
from quota_service.store.embedded import EmbeddedRedis, EmbeddedRedisError

log = logging.getLogger("quota_service.supervisor")

BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 30.0
#: A worker that lived this long before dying is restarted after the first backoff again.
HEALTHY_AFTER: Final = 60.0
START_TIMEOUT: Final = 60.0
#: A worker's drain: 5 s for in-flight calls plus up to ~10 s of withdraw retries, plus slack.
STOP_TIMEOUT: Final = 30.0
POLL: Final = 0.05

WORKER_ID_ENV: Final = "QUOTA_WORKER_ID"


def worker_count(value: str) -> int:
    """``--workers``: a positive count, or ``0``/``auto`` for the number of usable cores."""
    text = value.strip().lower()
    if text in ("", "auto", "0"):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    count = int(text)
    if count < 0 or count > 256:
        raise ValueError(f"--workers must be 0 (auto) to 256, not {value}")
    return count


def _load_libc() -> Any:
    # Loaded at import, in the parent: the forked child must not import or dlopen anything
    # before exec (another thread may hold the import lock at fork time; the child would hang).
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC: Final = _load_libc() if sys.platform == "linux" else None


def die_with_parent() -> None:
    """A ``preexec_fn``: in the child, before exec, ask for SIGTERM (a graceful drain) when
    the parent dies (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere). Used for the workers
    and by the benchmark for its children."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    id: int
    port_file: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs the workers; :meth:`run` returns the exit status."""

    argv: Sequence[str]  # the ``serve`` command line as given (options only, no "serve")
    workers: int
    listen: str
    redis_url: str
    data_dir: str
    metrics_port: int
    port_file: str
    http: str = ""  # --http HOST:PORT: every worker serves it too, sharing the port like --listen
    appendfsync: str = "everysec"  # --redis-appendfsync of the embedded Redis the workers share
    http_port_file: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="quota-supervisor-")))
    _slots: list[Worker] = field(default_factory=list)
    _stop: bool = False
    _hup: bool = False
    _http_listen: str = ""  # --http with a concrete port (held like --listen's)

    # -- the worker command ----------------------------------------------------------------

    def _command(self, worker: Worker, listen: str, redis_url: str) -> list[str]:
        # argparse: a later option wins, so these override whatever argv (or the env) said.
        return [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            *self.argv,
            "--workers",
            "1",
            "--reuse-port",
            "--listen",
            listen,
            "--redis-url",
            redis_url,
            "--metrics-port",
            "0",
            "--port-file",
            str(worker.port_file),
            *(("--http", self._http_listen, "--http-port-file", "") if self._http_listen else ()),
        ]

    def _env(self, worker: Worker, multiproc_dir: Path | None) -> dict[str, str]:
        env = {**os.environ, WORKER_ID_ENV: str(worker.id)}
        env.pop("QUOTA_WORKERS", None)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if multiproc_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
        return env

    def _spawn(self, worker: Worker, listen: str, redis_url: str, multiproc_dir: Path | None) -> None:
        worker.port_file.unlink(missing_ok=True)
        worker.process = subprocess.Popen(
            self._command(worker, listen, redis_url),
            env=self._env(worker, multiproc_dir),
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent if _LIBC is not None else None,
        )
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker=%d started (pid %d)", worker.id, worker.process.pid)

    def _wait_serving(self, slots: Iterable[Worker]) -> int | None:
        """Wait until every worker of ``slots`` wrote its port file; the exit status of one
        that exited instead (``None``: all serve)."""
        pending = list(slots)
        deadline = time.monotonic() + START_TIMEOUT
        while pending:
            if self._stop:
                return 0
            for worker in list(pending):
                assert worker.process is not None
                code = worker.process.poll()
                if code is not None:
                    log.error("worker=%d exited with %s while starting", worker.id, code)
                    return code if code else 1
                with contextlib.suppress(OSError):
                    if worker.port_file.read_text().strip():
                        pending.remove(worker)
            if time.monotonic() > deadline:
                log.error("workers %s did not start within %.0f s", [w.id for w in pending], START_TIMEOUT)
                return 1
            time.sleep(POLL)
        return None

    # -- signals -------------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._hup = True

    def _signal_all(self, sig: int) -> None:
        for worker in self._slots:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._slots:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker=%d did not drain within %.0f s; killing it", worker.id, STOP_TIMEOUT)
                worker.process.kill()
                worker.process.wait()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, self._on_stop),
                (signal.SIGINT, self._on_stop),
                (signal.SIGHUP, self._on_hup),
            )
        }
        embedded: EmbeddedRedis | None = None
        reservation: socket.socket | None = None
        http_reservation: socket.socket | None = None
        metrics_server: Any = None
        multiproc_dir: Path | None = None
        try:
            # Exactly as a plain serve: a port in use leaves nothing behind (exit 2).
            ensure_free(self.listen)
            reservation, listen = _reserve(self.listen)
            if self.http:
                ensure_free(self.http)
                http_reservation, self._http_listen = _reserve(self.http)
            redis_url = self.redis_url
            if not redis_url:
                embedded = EmbeddedRedis(data_dir=Path(self.data_dir), persistence=True, appendfsync=self.appendfsync)
                embedded.start()
                redis_url = embedded.url
                log.info("embedded redis-server at %s, shared by %d workers", redis_url, self.workers)
            if self.metrics_port or self.http:
                # Every worker's /metrics (--http) shows the sum of all workers, as --metrics-port does.
                multiproc_dir = self.workdir / "metrics"
                multiproc_dir.mkdir()
            self._slots = [Worker(i, self.workdir / f"worker-{i}.port") for i in range(1, self.workers + 1)]
            # Worker 1 alone first (it migrates the ledger, and reports bad options), then the rest.
            for batch in (self._slots[:1], self._slots[1:]):
                for worker in batch:
                    self._spawn(worker, listen, redis_url, multiproc_dir)
                failed = self._wait_serving(batch)
                if failed is not None:
                    return failed
            if self._stop:
                return 0
            if self.metrics_port and multiproc_dir is not None:
                metrics_server = _serve_metrics(self.metrics_port, self.listen, multiproc_dir, self._live_workers)
            port = int(listen.rsplit(":", 1)[1])
            log.info("%d workers serving on %s (pids %s)", self.workers, listen, self._pids())
            if self.port_file:
                tmp = Path(self.port_file + ".tmp")
                tmp.write_text(f"{port}\n")
                tmp.replace(self.port_file)
            if self.http_port_file and self._http_listen:
                tmp = Path(self.http_port_file + ".tmp")
                tmp.write_text(self._http_listen.rsplit(":", 1)[1] + "\n")
                tmp.replace(self.http_port_file)
            self._loop(listen, redis_url, multiproc_dir)
            return 0
        finally:
            log.info("draining %d workers", len(self._slots))
            self._stop_all()
            if metrics_server is not None:
                metrics_server.shutdown()
            if reservation is not None:
                reservation.close()
            if http_reservation is not None:
                http_reservation.close()
            if embedded is not None:
                embedded.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("stopped")

    def _loop(self, listen: str, redis_url: str, multiproc_dir: Path | None) -> None:
        while not self._stop:
            if self._hup:
                self._hup = False
                log.info("SIGHUP: forwarding to every worker (policy reload)")
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for worker in self._slots:
                process = worker.process
                if process is not None and process.poll() is not None:
                    lived = now - worker.started_at
                    if lived >= HEALTHY_AFTER:
                        worker.backoff = BACKOFF_FIRST
                    log.warning(
                        "worker=%d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                        worker.id,
                        process.pid,
                        _describe_status(process.returncode),
                        lived,
                        worker.backoff,
                    )
                    if multiproc_dir is not None:
                        _mark_dead(process.pid, multiproc_dir)
                    worker.process = None
                    worker.restart_at = now + worker.backoff
                    worker.backoff = min(worker.backoff * 2, BACKOFF_MAX)
                elif process is None and worker.restart_at is not None and now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker, listen, redis_url, multiproc_dir)
            time.sleep(POLL)

    def _pids(self) -> list[int]:
        return [w.process.pid for w in self._slots if w.process is not None]

    def _live_workers(self) -> list[tuple[int, int]]:
        return [(w.id, w.process.pid) for w in self._slots if w.process is not None and w.process.poll() is None]


def _describe_status(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _reserve(listen: str) -> tuple[socket.socket | None, str]:
    """Bind (never listen) an ``SO_REUSEPORT`` socket on ``listen``, so the port stays ours
    between worker restarts and port 0 becomes one concrete port every worker binds. Returns
    it (``None`` when the address is not a plain ``HOST:PORT``) and the address to give to
    the workers."""
    address = ListenAddress.parse(listen)
    if address is None:
        if listen.rsplit(":", 1)[-1] == "0":
            raise ConfigurationError(f"--workers needs a concrete port or HOST:0, not {listen}")
        return None, listen
    host = address.host or "0.0.0.0"
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve {listen}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"{listen} is already in use") from None
        raise ConfigurationError(f"cannot bind {listen}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    return sock, str(ListenAddress(address.host, port))


def _mark_dead(pid: int, directory: Path) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _serve_metrics(port: int, listen: str, directory: Path, live: Any) -> Any:
    """One ``/metrics`` for every worker: prometheus-client's multiprocess collector sums the
    workers' counters and histograms (a dead worker's counts stay, so totals never go back),
    plus ``quota_worker_rpcs_total{worker,pid}``: the RPCs each live worker answered (from
    its own histogram file), which shows how the kernel spread the connections."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(_PerWorker(directory, live))
    addr = "127.0.0.1" if listen.startswith("127.") else "0.0.0.0"
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server


class _PerWorker:
    def __init__(self, directory: Path, live: Any) -> None:
        self._directory = directory
        self._live = live

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        family = CounterMetricFamily(
            "quota_worker_rpcs",
            "RPCs answered by each live worker (its quota_rpc_seconds count)",
            labels=["worker", "pid"],
        )
        for worker_id, pid in self._live():
            path = self._directory / f"histogram_{pid}.db"
            total = 0.0
            if path.exists():
                with contextlib.suppress(Exception):
                    for metric in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
                        if metric.name == "quota_rpc_seconds":
                            total += sum(s.value for s in metric.samples if s.name == "quota_rpc_seconds_count")
            family.add_metric([str(worker_id), str(pid)], total)
        yield family


def supervise(argv: Sequence[str], args: Any, workers: int) -> int:
    """Run the supervisor for ``serve`` options ``argv`` (parsed: ``args``)."""
    worker_id = "supervisor"
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {worker_id} %(name)s: %(message)s",
    )
    supervisor = Supervisor(
        argv=list(argv),
        workers=workers,
        listen=args.listen,
        redis_url=args.redis_url,
        data_dir=args.data_dir,
        metrics_port=args.metrics_port,
        appendfsync=args.redis_appendfsync,
        port_file=args.port_file,
        http=args.http,
        http_port_file=args.http_port_file,
    )
    try:
        return supervisor.run()
    except (ConfigurationError, EmbeddedRedisError) as exc:
        print(f"quota-service: {exc}", file=sys.stderr)
        return 2
