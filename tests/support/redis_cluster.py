"""``LocalRedisCluster``: a real Redis Cluster of local ``redis-server`` processes, for tests.

Each master is an :class:`~quota_service.store.embedded.EmbeddedRedis` started with
``--cluster-enabled yes`` on a free port whose cluster-bus port (port + 10000) is free too.
The slots are assigned with ``redis-cli --cluster create`` (``CLUSTER ADDSLOTSRANGE`` and
``CLUSTER MEET`` when ``redis-cli`` is missing); :meth:`start` returns once every node
reports ``cluster_state:ok``. :meth:`stop` stops every process, also after a failed start.

With ``replicas=N`` each master gets N replicas (``redis-cli --cluster create
--cluster-replicas N``), for failover tests: :meth:`kill` SIGKILLs a node,
:meth:`wait_promoted` waits until a replica took over its slots. ``node_timeout_ms``
(``cluster-node-timeout``) is how long a silent master goes before it is marked failed;
``require_full_coverage=False`` (``cluster-require-full-coverage no``) keeps the other
masters serving while a failed master's slots wait for its replica.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
    """``masters`` redis-server processes forming one cluster, each with ``replicas`` replicas."""

    def __init__(
        self,
        base_dir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        require_full_coverage: bool = True,
        startup_timeout: float = 20.0,
    ) -> None:
        self._base_dir = base_dir
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._require_full_coverage = require_full_coverage
        self._startup_timeout = startup_timeout
        self.nodes: list[EmbeddedRedis] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<first node's port>``: what ``RedisCounterStore.from_url`` takes."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def seeds_url(self) -> str:
        """``redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...``: every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def roles(self, skip: frozenset[int] = frozenset()) -> dict[int, str]:
        """Port -> ``master`` / ``slave`` / ``fail`` as the live nodes (but ``skip``) see it (CLUSTER NODES)."""
        for node in self.nodes:
            if not node.running or node.port in skip:
                continue
            try:
                with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=1) as client:
                    text = _command(client, "CLUSTER", "NODES")
            except redis.RedisError:
                continue
            roles: dict[int, str] = {}
            for line in text.strip().splitlines():
                fields = line.split()
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                flags = fields[2].split(",")
                roles[port] = "fail" if "fail" in flags else ("master" if "master" in flags else "slave")
            return roles
        raise EmbeddedRedisError("no cluster node answers")

    def masters(self) -> list[EmbeddedRedis]:
        roles = self.roles()
        return [node for node in self.nodes if node.running and roles.get(node.port) == "master"]

    def owner_of(self, key: str) -> EmbeddedRedis:
        """The master serving ``key``'s slot now."""
        with redis.Redis(host="127.0.0.1", port=self.masters()[0].port, decode_responses=True) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
                if int(first) <= slot <= int(last):
                    return next(node for node in self.nodes if node.port == int(master[1]))
        raise EmbeddedRedisError(f"no master serves the slot of {key!r}")

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL ``node`` (its files stay); :meth:`stop` cleans up after it."""
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
        while node.running:
            time.sleep(0.005)

    def wait_promoted(self, dead: EmbeddedRedis, timeout: float = 30.0) -> float:
        """Block until a replica of ``dead`` (killed, or frozen) is a master and every slot
        is served by another master; returns the ``time.monotonic()`` instant it was first
        seen so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, EmbeddedRedisError):
                roles = self.roles(skip=frozenset({dead.port}))
                live = {node.port for node in self.nodes if node.running and node is not dead}
                if roles.get(dead.port) != "master" and self._covered_by(live):
                    return time.monotonic()
            time.sleep(0.01)
        raise EmbeddedRedisError(f"no replica of port {dead.port} was promoted within {timeout}s")

    def _covered_by(self, live: set[int]) -> bool:
        node = next(n for n in self.nodes if n.port in live)
        with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=1) as client:
            slots = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        covered = sum(int(last) - int(first) + 1 for first, last, master, *_ in slots if int(master[1]) in live)
        return covered == CLUSTER_SLOTS

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
        for node in self.masters() if self._replicas else self.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port) as client:
                client.flushall()

    # -- internals ---------------------------------------------------------------------------

    def _start_nodes(self) -> None:
        for index in range(self._masters * (1 + self._replicas)):
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
                        str(self._node_timeout_ms),
                        "--cluster-require-full-coverage",
                        "yes" if self._require_full_coverage else "no",
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
        if self._replicas and not redis_cli:
            raise EmbeddedRedisError("a cluster with replicas needs redis-cli (redis-cli --cluster create)")
        if redis_cli:
            subprocess.run(
                [
                    redis_cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self._replicas),
                    "--cluster-yes",
                ],
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

    def _replicas_synced(self, clients: list[redis.Redis]) -> bool:
        """Every replica has its master link up (a replica never synced cannot take over)."""
        if not self._replicas:
            return True
        infos = [client.info("replication") for client in clients]
        replicas = [info for info in infos if info.get("role") == "slave"]
        return len(replicas) == self._masters * self._replicas and all(
            info.get("master_link_status") == "up" for info in replicas
        )

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        clients = self.clients()
        try:
            while True:
                states = [_command(client, "CLUSTER", "INFO") for client in clients]
                if (
                    all("cluster_state:ok" in state for state in states)
                    and all(
                        len(_command(client, "CLUSTER", "NODES").strip().splitlines()) == len(clients)
                        for client in clients
                    )
                    and self._replicas_synced(clients)
                ):
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"the local cluster did not reach cluster_state:ok: {states}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
