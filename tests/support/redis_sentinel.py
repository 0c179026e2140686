"""``LocalSentinel``: a real Redis master, its replica and three Sentinels (quorum 2), for tests.

The master and the replica are :class:`~quota_service.store.embedded.EmbeddedRedis`
processes; each Sentinel is ``redis-server <sentinel.conf> --sentinel`` (what
``redis-sentinel`` runs) on a free port, with ``down-after-milliseconds`` of
``down_after_ms``. :meth:`start` returns once every Sentinel knows the master, the replica
(synced) and the other Sentinels, so a failover can be elected. :meth:`stop` stops every
process, also after a failed start.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from quota_service.store.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server, free_port

SERVICE = "quota"


class LocalSentinel:
    def __init__(self, base_dir: Path, *, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self._base_dir = base_dir
        self._count = sentinels
        self._down_after_ms = down_after_ms
        self.master: EmbeddedRedis | None = None
        self.replica: EmbeddedRedis | None = None
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}"

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        return [n for n in (self.master, self.replica) if n is not None]

    def master_address(self) -> tuple[str, int]:
        """The master's address as a Sentinel that answers says it."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as sentinel:
                    host, master_port = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)  # type: ignore[no-untyped-call]
                    return str(host), int(master_port)
            except redis.RedisError:
                continue
        raise EmbeddedRedisError("no Sentinel answers")

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Block until every Sentinel names a master other than ``old_port`` and that master
        says it is one; returns the ``time.monotonic()`` instant it was first seen so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = set()
                for port in self.sentinel_ports:
                    with redis.Redis(port=port, decode_responses=True, socket_timeout=0.5) as sentinel:
                        reply = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)  # type: ignore[no-untyped-call]
                        ports.add(int(reply[1]))
                if len(ports) == 1 and old_port not in ports:
                    [new_port] = ports
                    with redis.Redis(port=new_port, decode_responses=True, socket_timeout=0.5) as new_master:
                        if new_master.info("replication").get("role") == "master":
                            return time.monotonic()
            except redis.RedisError:
                pass
            time.sleep(0.01)
        raise EmbeddedRedisError(f"no failover away from port {old_port} within {timeout}s")

    def start(self, timeout: float = 30.0) -> LocalSentinel:
        try:
            self.master = EmbeddedRedis(data_dir=self._base_dir / "master", persistence=False).start()
            self.replica = EmbeddedRedis(
                data_dir=self._base_dir / "replica",
                persistence=False,
                extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
            ).start()
            for index in range(self._count):
                self._start_sentinel(index)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._sentinels = []
        for node in self.nodes:
            node.stop()

    def _start_sentinel(self, index: int) -> None:
        assert self.master is not None
        directory = self._base_dir / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile sentinel.log\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self._down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        with open(directory / "sentinel.out", "ab") as output:
            process = subprocess.Popen(
                [find_redis_server(), str(config), "--sentinel"],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._sentinels.append(process)
        self.sentinel_ports.append(port)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._sentinel_ready(port) for port in self.sentinel_ports):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError("the Sentinels did not find each other and the replica in time")
            time.sleep(0.1)

    def _sentinel_ready(self, port: int) -> bool:
        with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as sentinel:
            replicas = sentinel.execute_command("SENTINEL", "replicas", SERVICE)  # type: ignore[no-untyped-call]
            peers = sentinel.execute_command("SENTINEL", "sentinels", SERVICE)  # type: ignore[no-untyped-call]
        states = [r if isinstance(r, dict) else dict(zip(r[::2], r[1::2], strict=True)) for r in replicas]
        synced = [r for r in states if r.get("master-link-status") == "ok"]
        return len(synced) == 1 and len(peers) == self._count - 1
