"""The embedded Redis' watchdog: stops a redis-server whose owner died without stopping it.

``python -m quota_service.store.watchdog --fd N --pid P [--start-time T]`` is started by
:class:`~quota_service.store.embedded.EmbeddedRedis` next to each redis-server it spawns.
It blocks on ``N``, the read end of a pipe whose only write end the owner holds:

* a byte arrives: the owner stopped the server itself (disarmed); the watchdog exits;
* end of file without a byte: the owner's process is gone (a SIGKILL, a crash: the kernel
  closes its descriptors): the watchdog sends SIGTERM to ``P`` (redis-server then fsyncs its
  append-only file and exits), waits up to :data:`TERM_WAIT_SECONDS`, then SIGKILL.

It is the fallback behind ``PR_SET_PDEATHSIG`` (Linux, set in the redis-server child when it is
spawned from the main thread; that signal follows the spawning *thread*), and the only guard
elsewhere. ``--start-time`` (field 22 of ``/proc/P/stat``) makes sure ``P`` is still the
process it was started for, not a later one that reused the pid; without ``/proc`` the pid
alone is trusted. Imports nothing of the package: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["DISARM", "TERM_WAIT_SECONDS", "main", "process_start_time"]

#: What the owner writes to say "stopped on purpose: exit without killing anything".
DISARM = b"d"
#: How long (seconds) redis-server may take to exit after SIGTERM before SIGKILL.
TERM_WAIT_SECONDS = 10.0


def process_start_time(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot); ``""`` without ``/proc``
    or when the process is gone. A zombie keeps it until reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return ""
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _alive(pid: int, start_time: str) -> bool:
    """``pid`` still runs and is the process we were started for (not a zombie)."""
    if start_time:
        if process_start_time(pid) != start_time:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                state = stat.read().decode("ascii", "replace")
        except OSError:
            return False
        return state[state.rfind(")") + 2 : state.rfind(")") + 3] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(pid: int, start_time: str, wait_seconds: float) -> str:
    """SIGTERM, then SIGKILL after ``wait_seconds``; what was done, for the log line."""
    if not _alive(pid, start_time):
        return "already gone"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if not _alive(pid, start_time):
            return "stopped by SIGTERM"
        time.sleep(0.05)
    if _alive(pid, start_time):
        os.kill(pid, signal.SIGKILL)
        return f"killed (SIGKILL: no exit within {wait_seconds:g}s of SIGTERM)"
    return "stopped by SIGTERM"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quota_service.store.watchdog")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--start-time", default="")
    parser.add_argument("--term-wait", type=float, default=TERM_WAIT_SECONDS)
    args = parser.parse_args(argv)
    # A Ctrl-C reaches the whole foreground group; the owner handles it and disarms us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        got = os.read(args.fd, 1)
    except OSError:
        got = b""
    if got:
        return 0
    outcome = _stop(args.pid, args.start_time, args.term_wait)
    print(f"quota-service watchdog: owner gone; redis-server pid {args.pid}: {outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
