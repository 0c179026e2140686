"""``LocalRedisCluster``: a real Redis Cluster of local ``redis-server`` processes, for tests.

Each master is an :class:`~quota_service.store.embedded.EmbeddedRedis` started with
``--cluster-enabled yes`` on a free port whose cluster-bus port (port + 10000) is free too.
The slots are assigned with ``redis-cli --cluster create`` (``CLUSTER ADDSLOTSRANGE`` and
``CLUSTER MEET`` when ``redis-cli`` is missing); :meth:`start` returns once every node
reports ``cluster_state:ok``. :meth:`stop` stops every process, also after a failed start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from quota_service.store.embedded import EmbeddedRedis, EmbeddedRedisError, free_port

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000


def _command(client: redis.Redis, *args: str | int) -> str:
    """A raw command's reply as text (``CLUSTER INFO`` / ``NODES`` / ``ADDSLOTSRANGE`` / ``MEET``)."""
    return str(client.execute_command(*args))  # type: ignore[no-untyped-call]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port whose cluster-bus port is free as well."""
    for _ in range(100):
        port = free_port()
        if port + BUS_PORT_OFFSET < 65536 and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise EmbeddedRedisError("no free port pair (port, port + 10000) for a cluster node")


class LocalRedisCluster:
    """``masters`` redis-server processes forming one cluster, no replicas."""

    def __init__(self, base_dir: Path, *, masters: int = 3, startup_timeout: float = 20.0) -> None:
        self._base_dir = base_dir
        self._masters = masters
        self._startup_timeout = startup_timeout
        self.nodes: list[EmbeddedRedis] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<first node's port>``: what ``RedisCounterStore.from_url`` takes."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> LocalRedisCluster:
        try:
            self._start_nodes()
            self._assign_slots()
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def clients(self) -> list[redis.Redis]:
        """One plain client per master (the caller closes them)."""
        return [redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in self.ports]

    def flushall(self) -> None:
        for client in self.clients():
            with client:
                client.flushall()

    # -- internals ---------------------------------------------------------------------------

    def _start_nodes(self) -> None:
        for index in range(self._masters):
            for attempt in range(5):
                port = _cluster_port()
                node = EmbeddedRedis(
                    port=port,
                    data_dir=self._base_dir / f"node-{index}",
                    persistence=False,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
                try:
                    node.start()
                except EmbeddedRedisError:
                    if attempt == 4:
                        raise
                    continue  # lost the race for the port: pick another
                self.nodes.append(node)
                break

    def _assign_slots(self) -> None:
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        redis_cli = shutil.which("redis-cli")
        if redis_cli:
            subprocess.run(
                [redis_cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=self._startup_timeout,
            )
            return
        clients = self.clients()
        try:
            share = CLUSTER_SLOTS // len(clients)
            for index, client in enumerate(clients):
                first = index * share
                last = CLUSTER_SLOTS - 1 if index == len(clients) - 1 else first + share - 1
                _command(client, "CLUSTER", "ADDSLOTSRANGE", first, last)
            for client in clients[1:]:
                _command(client, "CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        finally:
            for client in clients:
                client.close()

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        clients = self.clients()
        try:
            while True:
                states = [_command(client, "CLUSTER", "INFO") for client in clients]
                if all("cluster_state:ok" in state for state in states) and all(
                    len(_command(client, "CLUSTER", "NODES").strip().splitlines()) == len(clients) for client in clients
                ):
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"the local cluster did not reach cluster_state:ok: {states}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
