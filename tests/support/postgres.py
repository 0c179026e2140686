"""``LocalPostgres``: a real, throwaway PostgreSQL server for tests, from the system's binaries.

Never the shared server on 5432: every session initialises its own cluster in a temporary
directory (``initdb``), starts it with ``pg_ctl`` on a free port of 127.0.0.1 (and a Unix
socket in the same directory) with trust authentication, and removes everything at
:meth:`stop`, also after a failed start.

The binaries come from ``pg_config --bindir``, else ``/usr/lib/postgresql/<n>/bin``, else
``PATH``; :func:`find_postgres_bindir` returns ``None`` when there are none (the fixture then
skips with the reason). PostgreSQL refuses to run as root: as root, the binaries run as the
``postgres`` system user (``runuser -u postgres --``; the user is created when missing) and
the directory is handed to that user.

Durability is traded for speed (``fsync=off``, ``synchronous_commit=off``,
``full_page_writes=off``): a crashed test server is thrown away anyway. :meth:`stop_server` /
:meth:`start_server` stop and restart the same cluster on the same port (outage tests).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from quota_service.store.embedded import free_port

PG_USER = "postgres"
_HOST = "127.0.0.1"


class LocalPostgresError(RuntimeError):
    """The test PostgreSQL server could not be initialised, started or stopped."""


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; ``None`` when absent."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


class LocalPostgres:
    """One PostgreSQL cluster with database ``postgres`` (superuser ``postgres``, trust auth)."""

    def __init__(self, bindir: Path, *, startup_timeout: float = 30.0) -> None:
        self._bindir = bindir
        self._startup_timeout = startup_timeout
        self._as_root = os.geteuid() == 0
        self.base_dir: Path | None = None
        self.port = 0
        self.startup_seconds = 0.0  # initdb + first start, measured by start()
        self.databases = 0  # how many test databases the fixtures made (their names: t1, t2, ...)

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<database>``: what ``ledger_from_url`` takes."""
        return f"postgresql://{PG_USER}@{_HOST}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
        except subprocess.CalledProcessError as exc:
            raise LocalPostgresError(
                f"{' '.join(command)} failed ({exc.returncode}): {exc.stderr or exc.stdout}"
            ) from exc

    def start(self) -> LocalPostgres:
        began = time.monotonic()
        try:
            self.base_dir = Path(tempfile.mkdtemp(prefix="quota-pg-"))
            if self._as_root:
                user = _ensure_user()
                os.chown(self.base_dir, user.pw_uid, user.pw_gid)
            self._run(
                str(self._bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            self.port = free_port()
            self.start_server()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def start_server(self) -> None:
        """Start (or restart after :meth:`stop_server`) the cluster on :attr:`port`; returns when it accepts
        connections."""
        assert self.base_dir is not None
        options = (
            f"-h {_HOST} -p {self.port} -k {self.base_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.base_dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(self._startup_timeout)),
            "start",
            timeout=self._startup_timeout + 10,
        )

    def stop_server(self) -> None:
        """Stop the server now (``-m fast``: open connections are cut); the data stays for :meth:`start_server`."""
        assert self.base_dir is not None
        self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        if self.base_dir is None or not self.data_dir.exists():
            return False
        try:
            self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "status", timeout=10)
        except LocalPostgresError:
            return False
        return True

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command with ``psql`` (next to the server binaries, else on PATH); its output."""
        psql = self._bindir / "psql"
        binary = str(psql) if os.access(psql, os.X_OK) else (shutil.which("psql") or "psql")
        out = self._run(
            binary, "-X", "-q", "-A", "-t", "-h", _HOST, "-p", str(self.port), "-U", PG_USER, "-d", database, "-c", sql
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self.base_dir is None:
            return
        if self.running:
            with contextlib.suppress(LocalPostgresError, subprocess.TimeoutExpired):
                self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
