"""``quota-service serve`` in embedded mode (no ``--redis-url``): a SIGKILL of the server
takes its redis-server with it, and a second serve on the same data dir is refused (exit 2,
one clear line) while the first runs; after the kill, a restart on that data dir serves
the counters the first one left."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import grpc
import psutil
import pytest
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def redis_children(server: ServerProcess) -> list[psutil.Process]:
    assert server.process is not None
    return [p for p in psutil.Process(server.process.pid).children() if p.name() == "redis-server"]


def wait_gone(pid: int, seconds: float) -> float:
    started = time.monotonic()
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        if time.monotonic() - started > seconds:
            pytest.fail(f"redis-server pid {pid} still runs {seconds} s after its serve was SIGKILLed")
        time.sleep(0.02)
    return time.monotonic() - started


def spend(server: ServerProcess, subject: str) -> quota_pb2.GetUsageResponse:
    with grpc.insecure_channel(server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        request = quota_pb2.CheckAndReserveRequest(
            subject=subject,
            feature="blog_writer",
            provider="openai",
            model="gpt-4o-mini",
            usage={"tokens": 10},
            request_id=uuid.uuid4().hex,
        )
        answer = stub.CheckAndReserve(request, timeout=5)
        stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 7}), timeout=5)
        return stub.GetUsage(quota_pb2.GetUsageRequest(subject=subject), timeout=5)


def tokens_used(usage: quota_pb2.GetUsageResponse) -> float:
    return next(limit.used for limit in usage.limits if limit.metric == "tokens" and limit.window == "day")


def test_sigkill_of_serve_takes_its_redis_and_a_second_serve_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared-data"
    first = ServerProcess(redis_url="", workdir=tmp_path / "first", extra_args=("--data-dir", str(data_dir)))
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    (tmp_path / "third").mkdir()
    first.start()
    try:
        [redis_process] = redis_children(first)
        assert tokens_used(spend(first, "alice")) == 7

        second = ServerProcess(redis_url="", workdir=tmp_path / "second", extra_args=("--data-dir", str(data_dir)))
        with pytest.raises(RuntimeError, match=r"(?s)exited with 2.*data dir .*shared-data is in use"):
            second.start(timeout=30)
        assert redis_process.is_running()  # the refusal touched nothing of the first's
        assert tokens_used(spend(first, "alice")) == 14

        first.stop(signal.SIGKILL)
        took = wait_gone(redis_process.pid, seconds=5.0)
        print(f"embedded redis-server gone {took:.3f} s after SIGKILL of serve")
    finally:
        first.stop(signal.SIGKILL)

    third = ServerProcess(redis_url="", workdir=tmp_path / "third", extra_args=("--data-dir", str(data_dir)))
    third.start()
    try:
        assert len(redis_children(third)) == 1
        assert tokens_used(spend(third, "alice")) == 21  # the append-only file survived, one server on it
    finally:
        third.stop()
