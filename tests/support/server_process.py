"""A real ``quota-service serve`` child process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_POLICIES = ROOT / "policies"
ADMIN_TOKEN = "e2e-admin-token"


class ServerProcess:
    """A ``quota-service serve`` child process. ``stop()`` then ``start()`` comes back on
    the same port, so clients' channels reconnect to it."""

    def __init__(
        self,
        *,
        redis_url: str,
        workdir: Path,
        policies: Path = SHIPPED_POLICIES,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        probe_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.redis_url = redis_url
        # TLS servers: the readiness probe must speak TLS (a plaintext probe cannot).
        self.probe_credentials = probe_credentials
        self.policies = policies
        self.workdir = workdir
        self.extra_args = extra_args
        self.env = env or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self.admin_token = ADMIN_TOKEN

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            "--policies",
            str(self.policies),
            "--redis-url",
            self.redis_url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--port-file",
            str(port_file),
            "--admin-token",
            self.admin_token,
            # Every server its own data dir (the ledger's SQLite file lives there by default).
            "--data-dir",
            str(self.workdir / "data"),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None:
                raise RuntimeError(f"quota-service exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"quota-service did not start within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.wait_healthy(deadline - time.monotonic())

    def wait_healthy(self, timeout: float) -> None:
        channel = (
            grpc.secure_channel(self.target, self.probe_credentials)
            if self.probe_credentials is not None
            else grpc.insecure_channel(self.target)
        )
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + max(timeout, 1.0)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
