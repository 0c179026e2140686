"""``quota-service``: serve the gRPC API, or check policy files.

quota-service serve [--policies PATH] [--redis-url URL] [--listen HOST:PORT] ...
quota-service check-policy PATH
quota-service diff-policy OLD NEW [--json]
quota-service restore [--policies PATH] [--redis-url URL] [--ledger-url URL] [--force]
quota-service simulate --policy CANDIDATE --ledger URL [--live PATH] [--since T] [--until T] [--json]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

from quota_service.errors import PolicyError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quota-service", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve QuotaService and AdminService over gRPC")
    serve.add_argument(
        "--policies",
        default=os.environ.get("QUOTA_POLICIES", "policies"),
        help="policy file or directory (env QUOTA_POLICIES; default: ./policies)",
    )
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("QUOTA_REDIS_URL", ""),
        help="redis://, rediss://, unix://, redis+cluster://h1:p1,h2:p2,... (seed nodes) or "
        "redis+sentinel://s1:p1,s2:p2,.../master[/db] URL (env QUOTA_REDIS_URL); "
        "empty: start an embedded redis-server with append-only persistence",
    )
    serve.add_argument(
        "--data-dir",
        default=os.environ.get("QUOTA_DATA_DIR", "data"),
        help="where the embedded Redis keeps its append-only file (env QUOTA_DATA_DIR; default: ./data)",
    )
    serve.add_argument(
        "--ledger-url",
        default=os.environ.get("QUOTA_LEDGER_URL", ""),
        help="the ledger of every call and event (env QUOTA_LEDGER_URL): sqlite:///PATH, postgresql://... "
        "(shared by replicas) or none; default: sqlite:///<data-dir>/ledger.db",
    )
    serve.add_argument(
        "--listen",
        default=os.environ.get("QUOTA_LISTEN", "127.0.0.1:50051"),
        help="HOST:PORT to listen on (env QUOTA_LISTEN; default 127.0.0.1:50051; port 0 picks a free one)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        default=os.environ.get("QUOTA_REUSE_PORT", "").strip().lower() in ("1", "true", "yes", "on"),
        help="share the --listen port with other serve processes that pass it too (SO_REUSEPORT: "
        "the kernel spreads connections over them; env QUOTA_REUSE_PORT=1). Without it a port "
        "already in use is an error (exit 2)",
    )
    serve.add_argument(
        "--workers",
        default=os.environ.get("QUOTA_WORKERS", "1"),
        help="worker processes sharing the --listen port (SO_REUSEPORT) under one supervisor that "
        "restarts a dead worker and drains them all on SIGTERM (env QUOTA_WORKERS; default 1: one "
        "process, no supervisor; 0 or auto: the number of cores)",
    )
    serve.add_argument(
        "--redis-appendfsync",
        choices=("everysec", "always"),
        default=os.environ.get("QUOTA_REDIS_APPENDFSYNC", "everysec"),
        help="the embedded Redis' append-only fsync (env QUOTA_REDIS_APPENDFSYNC): everysec (default; a power "
        "cut may lose the last second of writes) or always (nothing acknowledged is lost; slower)",
    )
    serve.add_argument(
        "--redis-wait-replicas",
        type=int,
        default=int(os.environ.get("QUOTA_REDIS_WAIT_REPLICAS", "0")),
        help="after every money write, WAIT until this many replicas have it (env QUOTA_REDIS_WAIT_REPLICAS; "
        "0: no WAIT; one Redis with replicas, not Cluster)",
    )
    serve.add_argument(
        "--redis-wait-ms",
        type=int,
        default=int(os.environ.get("QUOTA_REDIS_WAIT_MS", "100")),
        help="the longest a money write waits for its replicas (env QUOTA_REDIS_WAIT_MS; default 100)",
    )
    serve.add_argument(
        "--store-timeout",
        type=float,
        default=float(os.environ.get("QUOTA_STORE_TIMEOUT", "0.25")),
        help="seconds a Redis call may take before on_store_error answers (env QUOTA_STORE_TIMEOUT)",
    )
    serve.add_argument(
        "--request-budget",
        type=float,
        default=float(os.environ.get("QUOTA_REQUEST_BUDGET", "0.4")),
        help="the most seconds one request may take, every Redis call included, whatever the caller's "
        "deadline (env QUOTA_REQUEST_BUDGET; default 0.4, below the client's 0.5 s attempt timeout)",
    )
    serve.add_argument(
        "--grace-seconds",
        type=int,
        default=int(os.environ.get("QUOTA_GRACE_SECONDS", "60")),
        help="seconds a request's answer and a settled reservation are kept after the reservation "
        "expires: replays, repeated commits and late commits within it are honoured (env QUOTA_GRACE_SECONDS)",
    )
    serve.add_argument(
        "--allow-eviction",
        action="store_true",
        help="start even though Redis' maxmemory-policy may evict keys (counters, reservations, stops "
        "can then be lost): never for money",
    )
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("QUOTA_ADMIN_TOKEN", ""),
        help="bearer token required by AdminService (env QUOTA_ADMIN_TOKEN)",
    )
    serve.add_argument(
        "--viewer-token",
        default=os.environ.get("QUOTA_VIEWER_TOKEN", ""),
        help="bearer token for read-only AdminService calls (env QUOTA_VIEWER_TOKEN): usage, events, "
        "top, stops, policy status, audit; every write is PERMISSION_DENIED",
    )
    serve.add_argument(
        "--insecure-admin",
        action="store_true",
        help="serve AdminService without a token (only on a loopback listen address)",
    )
    serve.add_argument("--tls-cert", default=os.environ.get("QUOTA_TLS_CERT", ""), help="PEM server certificate")
    serve.add_argument("--tls-key", default=os.environ.get("QUOTA_TLS_KEY", ""), help="PEM server private key")
    serve.add_argument(
        "--tls-client-ca",
        default=os.environ.get("QUOTA_TLS_CLIENT_CA", ""),
        help="PEM CA bundle: require client certificates signed by it (mTLS)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("QUOTA_METRICS_PORT", "0")),
        help="serve Prometheus /metrics on this port (0: off); --http serves /metrics too",
    )
    serve.add_argument(
        "--http",
        default=os.environ.get("QUOTA_HTTP", ""),
        help="HOST:PORT for the dashboard, the JSON API (Connect), /metrics, /healthz and /readyz "
        "(env QUOTA_HTTP; empty: off; port 0 picks a free one)",
    )
    serve.add_argument(
        "--http-port-file",
        default="",
        help="write the bound --http port to this file once serving (for scripts and tests using port 0)",
    )
    serve.add_argument(
        "--port-file",
        default="",
        help="write the bound port to this file once serving (for scripts and tests using port 0)",
    )
    serve.add_argument(
        "--shadow-policies",
        default=os.environ.get("QUOTA_SHADOW_POLICIES", ""),
        help="a second policy file or directory decided on every CheckAndReserve against the live counters, "
        "never enforced: divergences are counted (quota_shadow_divergences_total) and sampled into the "
        "feed as SHADOW_DIVERGED (env QUOTA_SHADOW_POLICIES; empty: off). Hot-reloaded like --policies",
    )
    serve.add_argument(
        "--shadow-samples-per-second",
        type=float,
        default=float(os.environ.get("QUOTA_SHADOW_SAMPLES_PER_SECOND", "10")),
        help="SHADOW_DIVERGED events written per tier and second at most (env QUOTA_SHADOW_SAMPLES_PER_SECOND; "
        "default 10; 0: count only)",
    )
    serve.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not watch the policy files (reload only on SIGHUP or the ReloadPolicies RPC)",
    )
    serve.add_argument("--log-level", default=os.environ.get("QUOTA_LOG_LEVEL", "INFO"))

    health = sub.add_parser("health", help="probe a running server's grpc.health.v1 status (exit 0 when SERVING)")
    health.add_argument("--target", default=os.environ.get("QUOTA_TARGET", "127.0.0.1:50051"))
    health.add_argument("--timeout", type=float, default=2.0)
    health.add_argument(
        "--tls-ca", default=os.environ.get("QUOTA_TLS_CA", ""), help="PEM CA that signed the server's certificate (TLS)"
    )
    health.add_argument(
        "--tls-cert", default=os.environ.get("QUOTA_TLS_CLIENT_CERT", ""), help="PEM client certificate (mTLS)"
    )
    health.add_argument("--tls-key", default=os.environ.get("QUOTA_TLS_CLIENT_KEY", ""), help="PEM client key (mTLS)")

    restore = sub.add_parser(
        "restore", help="rebuild a Redis that lost its data (counters, tiers, overrides, stops) from the ledger"
    )
    restore.add_argument("--policies", default=os.environ.get("QUOTA_POLICIES", "policies"))
    restore.add_argument(
        "--redis-url",
        default=os.environ.get("QUOTA_REDIS_URL", ""),
        help="the store to rebuild (env QUOTA_REDIS_URL); empty: the embedded Redis of --data-dir",
    )
    restore.add_argument("--data-dir", default=os.environ.get("QUOTA_DATA_DIR", "data"))
    restore.add_argument(
        "--ledger-url",
        default=os.environ.get("QUOTA_LEDGER_URL", ""),
        help="the ledger to read (env QUOTA_LEDGER_URL; default: sqlite:///<data-dir>/ledger.db)",
    )
    restore.add_argument(
        "--force", action="store_true", help="restore even though the store still has its identity (counts twice!)"
    )

    simulate = sub.add_parser(
        "simulate",
        help="replay the ledger's recorded requests under the live and a candidate policy; "
        "exit 0 no answer changes, 2 some change, 1 an error",
    )
    simulate.add_argument("--policy", required=True, help="the candidate policy file or directory")
    simulate.add_argument(
        "--live",
        default=os.environ.get("QUOTA_POLICIES", "policies"),
        help="the live policy file or directory (env QUOTA_POLICIES; default: ./policies, as serve)",
    )
    simulate.add_argument(
        "--ledger",
        default=os.environ.get("QUOTA_LEDGER_URL", ""),
        help="the ledger to read: sqlite:///PATH or postgresql://... (env QUOTA_LEDGER_URL)",
    )
    simulate.add_argument("--since", default="", help="replay requests from this time: ISO-8601 or unix seconds")
    simulate.add_argument("--until", default="", help="... until before this time: ISO-8601 or unix seconds")
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")

    check = sub.add_parser("check-policy", help="validate a policy file or directory and print a summary")
    check.add_argument("path", help="policy file or directory")

    diff = sub.add_parser(
        "diff-policy",
        help="every cap, threshold, price, feature and hard-stop change from OLD to NEW, per tier "
        "(exit 0: no change, 2: changes, 1: an error)",
    )
    diff.add_argument("old", help="the policy file or directory in force (as check-policy reads it)")
    diff.add_argument("new", help="the candidate policy file or directory")
    diff.add_argument("--json", action="store_true", help="one JSON object instead of the text for people")
    return parser


def _check_policy(path: str) -> int:
    """Exit 0 with a summary on stdout, or 1 with one ``error: file:line: key: message`` line
    per issue on stderr. Never a traceback: whatever the files hold, the loader refuses it
    with a :class:`PolicyError`; anything else escaping it is a bug, reported in one line."""
    from quota_service.policy.loader import load_policy
    from quota_service.policy.report import summarize

    for stream in (sys.stdout, sys.stderr):  # a policy's text may not suit the terminal's encoding
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        policy = load_policy(path)
        summary = summarize(policy)
    except PolicyError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(f"{path}: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    except Exception as exc:
        bug = f"internal error while checking: {type(exc).__name__}: {exc} (a bug: please report it)"
        print(f"error: {path}: {bug}", file=sys.stderr)
        print(f"{path}: 1 error(s)", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _diff_policy(old: str, new: str, *, as_json: bool) -> int:
    """Exit 0 when OLD and NEW decide the same, 2 with the changes on stdout, 1 with one
    ``error: ...`` line per issue of a file that does not load (as check-policy)."""
    import json

    from quota_service.lifecycle.diff import diff_policies
    from quota_service.policy.loader import load_policy

    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    policies = []
    for path in (old, new):
        try:
            policies.append(load_policy(path))
        except PolicyError as exc:
            for issue in exc.issues:
                print(f"error: {issue}", file=sys.stderr)
            print(f"{path}: {len(exc.issues)} error(s); nothing compared", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"error: {path}: internal error while loading: {type(exc).__name__}: {exc} (a bug)", file=sys.stderr)
            return 1
    result = diff_policies(policies[0], policies[1])
    print(json.dumps(result.to_json_obj(), indent=2) if as_json else result.text())
    return 2 if result.changed else 0


def _health(args: argparse.Namespace) -> int:
    from pathlib import Path

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, timeout = args.target, args.timeout
    try:
        if args.tls_ca or args.tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
                private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
                certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
            )
            channel = grpc.secure_channel(target, credentials)
        else:
            channel = grpc.insecure_channel(target)
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}", file=sys.stderr)
        return 2
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _restore(args: argparse.Namespace) -> int:
    """Exit 0 with what was restored, 2 when refused or when a part is unreachable (one line)."""
    import asyncio
    from pathlib import Path

    from quota_service.errors import QuotaServiceError
    from quota_service.ledger.store import ledger_from_url
    from quota_service.policy.loader import load_policy
    from quota_service.restore import restore
    from quota_service.store.embedded import EmbeddedRedis
    from quota_service.store.redis_store import RedisCounterStore

    default_ledger = f"sqlite:///{Path(args.data_dir).resolve() / 'ledger.db'}"

    async def run() -> str:
        ledger = ledger_from_url(args.ledger_url or default_ledger)
        if ledger is None:
            raise QuotaServiceError("restore reads the ledger: --ledger-url none has nothing to restore from")
        embedded = None
        url = args.redis_url
        if not url:
            embedded = EmbeddedRedis(data_dir=Path(args.data_dir), persistence=True)
            await asyncio.to_thread(embedded.start)
            url = embedded.url
        store = RedisCounterStore.from_url(url, timeout_seconds=5.0)
        try:
            await ledger.migrate()
            report = await restore(ledger=ledger, counters=store, policy=load_policy(args.policies), force=args.force)
            return report.text()
        finally:
            await store.close()
            await ledger.close()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    try:
        print(asyncio.run(run()))
    except (QuotaServiceError, OSError) as exc:
        print(f"quota-service restore: {exc}", file=sys.stderr)
        return 2
    return 0


def parse_instant_ms(text: str, what: str) -> int:
    """``--since``/``--until``: unix milliseconds of unix seconds (``1764547200``, fractions
    allowed) or an ISO-8601 time (``2026-12-01T00:00:00Z``; UTC unless it says otherwise;
    a date is its midnight UTC). ``""``: 0 (unbounded). :class:`ValueError` otherwise."""
    from datetime import UTC, datetime
    from decimal import Decimal, InvalidOperation

    value = text.strip()
    if not value:
        return 0
    try:
        seconds = Decimal(value)
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite() or seconds < 0:
            raise ValueError(f"{what} {text!r} is not a time: unix seconds must be >= 0")
        return int(seconds * 1000)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(
            f"{what} {text!r} is not a time: use ISO-8601 (2026-12-01T00:00:00Z) or unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000))


def _simulate(args: argparse.Namespace) -> int:
    """Exit 0 when no answer changes, 2 when some do, 1 on an error (one message on stderr)."""
    import asyncio
    import gc
    import json

    from quota_service.errors import QuotaServiceError
    from quota_service.ledger.errors import LedgerConfigError, LedgerError, LedgerUnavailable
    from quota_service.lifecycle.ledger_reader import open_ledger, recorded_rows
    from quota_service.lifecycle.simulate import DEFAULT_HORIZON_MS, Simulation, SimulationReport
    from quota_service.lifecycle.simulate_text import report_text
    from quota_service.policy.loader import load_policy

    def fail(message: str) -> int:
        print(f"quota-service simulate: {message}", file=sys.stderr)
        return 1

    try:
        since_ms = parse_instant_ms(args.since, "--since")
        until_ms = parse_instant_ms(args.until, "--until")
    except ValueError as exc:
        return fail(str(exc))
    if until_ms and until_ms <= since_ms:
        return fail("--until must be after --since")
    if not args.ledger:
        return fail("--ledger URL is required (or QUOTA_LEDGER_URL)")
    policies = {}
    for role, path in (("live", args.live), ("candidate", args.policy)):
        try:
            policies[role] = load_policy(path)
        except PolicyError as exc:
            issues = "; ".join(str(issue) for issue in exc.issues) or str(exc)
            return fail(f"the {role} policy {path} is not valid: {issues}")

    async def run() -> SimulationReport:
        ledger = open_ledger(args.ledger)
        simulation = Simulation(policies["live"], policies["candidate"], since_ms=since_ms, until_ms=until_ms)
        try:
            read_until = until_ms + DEFAULT_HORIZON_MS if until_ms else 0
            async for page in recorded_rows(ledger, since_ms=since_ms, until_ms=read_until):
                for row in page:
                    simulation.feed(row)
        finally:
            await ledger.close()
        return simulation.finish()

    # A replay allocates millions of small tuples and lists that form no cycles: the cyclic
    # collector would only walk them again and again (a tenth of the run and more).
    gc.disable()
    try:
        report = asyncio.run(run())
    except (LedgerConfigError, LedgerUnavailable, LedgerError) as exc:
        return fail(f"cannot read the ledger: {exc}")
    except (QuotaServiceError, OSError) as exc:
        return fail(str(exc))
    finally:
        gc.enable()
    if args.json:
        print(json.dumps(report.to_json_obj(), indent=2, sort_keys=True, ensure_ascii=True))
    else:
        print(report_text(report))
    return 2 if report.changed else 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(argv) if argv is not None else sys.argv[1:]
    args = _build_parser().parse_args(raw)
    if args.command == "check-policy":
        return _check_policy(args.path)
    if args.command == "diff-policy":
        return _diff_policy(args.old, args.new, as_json=args.json)
    if args.command == "health":
        return _health(args)
    if args.command == "restore":
        return _restore(args)
    if args.command == "simulate":
        return _simulate(args)
    from quota_service.server.main import serve_from_args

    return serve_from_args(args, argv=raw[raw.index("serve") + 1 :] if "serve" in raw else [])


if __name__ == "__main__":
    sys.exit(main())
