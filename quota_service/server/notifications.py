"""The policy's ``notifications`` and ``ledger_retention_days`` put to work by ``serve``.

* :func:`endpoints_of`: the policy's webhooks as :class:`WebhookEndpoint`.
* :func:`checked_loader`: the policy loader ``serve`` hands to :class:`LivePolicy`: a policy
  whose webhook names an environment variable that is not set (or does not hold a
  ``whsec_<base64>`` secret), or that lists webhooks while the ledger is off, is a
  :class:`PolicyError` naming the webhook and the variable: start-up stops with it, a
  reload keeps the last good policy. The secret itself never appears anywhere.
* :class:`Notifications`: the webhook deliverer over the ledger, following the live policy
  (a reload that changes the webhooks changes the deliverer's endpoints within
  ``follow_seconds``), and the ledger retention (every ``retention_every_seconds``, events
  older than ``ledger_retention_days`` are removed; absent: kept).

The deliverer runs beside the gRPC server in its own task: it reads the ledger, never the
request path (:mod:`quota_service.ledger.webhooks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from quota_service.background import surviving
from quota_service.clock import Clock, SystemClock, to_ms
from quota_service.errors import PolicyError, PolicyIssue
from quota_service.ledger.errors import LedgerConfigError, LedgerError
from quota_service.ledger.events import EventKind
from quota_service.ledger.store import Ledger
from quota_service.ledger.webhooks import RETRY_SCHEDULE_SECONDS, WebhookDeliverer, WebhookEndpoint, parse_secret
from quota_service.policy.compiled import CompiledPolicy
from quota_service.reload import LivePolicy, Loader

__all__ = ["Notifications", "checked_loader", "endpoints_of", "secret_issues"]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def endpoints_of(policy: CompiledPolicy) -> list[WebhookEndpoint]:
    return [
        WebhookEndpoint(
            url=hook.url,
            secret_env=hook.secret_env,
            kinds=frozenset(EventKind[k] for k in hook.kinds),
            tiers=frozenset(hook.tiers),
            name=hook.name,
        )
        for hook in policy.notifications.webhooks
    ]


def secret_issues(policy: CompiledPolicy, environ: Mapping[str, str], *, ledger_on: bool = True) -> list[PolicyIssue]:
    """What stops the policy's webhooks from working here: an unset variable, a secret that
    is not ``whsec_<base64>``, webhooks without a ledger. One issue per webhook."""
    label = ", ".join(policy.files) or "policy"
    issues: list[PolicyIssue] = []
    for index, hook in enumerate(policy.notifications.webhooks):
        key = f"notifications.webhooks[{index}]"
        if not ledger_on:
            issues.append(
                PolicyIssue(label, 0, key, f"webhook {hook.name!r} needs the ledger, which is off (--ledger-url none)")
            )
            continue
        secret = environ.get(hook.secret_env, "")
        if not secret:
            issues.append(
                PolicyIssue(
                    label,
                    0,
                    f"{key}.secret_env",
                    f"webhook {hook.name!r}: environment variable {hook.secret_env} is not set "
                    "(it must hold the webhook's secret, whsec_<base64>)",
                )
            )
            continue
        try:
            parse_secret(secret)
        except LedgerConfigError as exc:
            issues.append(
                PolicyIssue(label, 0, f"{key}.secret_env", f"webhook {hook.name!r}: {hook.secret_env}: {exc}")
            )
    return issues


def checked_loader(
    environ: Mapping[str, str] | None = None, *, ledger_on: bool = True, loader: Loader | None = None
) -> Loader:
    """``load_policy`` (or ``loader``) followed by :func:`secret_issues` (``environ``: read
    at each load, default ``os.environ``)."""
    if loader is None:
        from quota_service.policy.loader import load_policy

        loader = load_policy
    inner = loader

    def load(path: str | Path) -> CompiledPolicy:
        policy = inner(path)
        issues = secret_issues(policy, os.environ if environ is None else environ, ledger_on=ledger_on)
        if issues:
            raise PolicyError(issues)
        return policy

    return load


class Notifications:
    """The webhook deliverer and the retention pass, following ``policy``."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: LivePolicy,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        schedule: Sequence[float] = RETRY_SCHEDULE_SECONDS,
        poll_interval_seconds: float = 1.0,
        follow_seconds: float = 0.5,
        retention_every_seconds: float = 3600.0,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._environ = environ
        self._clock: Clock = clock or SystemClock()
        self._follow = follow_seconds
        self._retention_every = retention_every_seconds
        self._applied: CompiledPolicy = policy.current
        self.deliverer = WebhookDeliverer(
            ledger=ledger,
            endpoints=endpoints_of(self._applied),
            environ=environ,
            clock=self._clock,
            schedule=schedule,
            poll_interval_seconds=poll_interval_seconds,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self.deliverer.wake()

    async def start(self) -> None:
        await self.deliverer.start()
        self._tasks = [
            asyncio.create_task(self._follow_policy(), name="webhooks follow the policy"),
            asyncio.create_task(self._retention(), name="ledger retention"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.deliverer.stop()

    def apply(self, policy: CompiledPolicy) -> None:
        """Make the deliverer's endpoints the webhooks of ``policy`` (kept as they were when
        a secret is missing now: the reload's own check refused that policy already)."""
        if policy is self._applied:
            return
        try:
            self.deliverer.set_endpoints(endpoints_of(policy), self._environ)
        except LedgerConfigError as exc:
            log.error("webhooks of policy %s not applied, keeping the previous ones: %s", policy.version, exc)
        else:
            names = ", ".join(e.name or e.id for e in self.deliverer.endpoints) or "none"
            log.info("webhooks of policy %s: %s", policy.version, names)
        self._applied = policy

    async def _follow_policy(self) -> None:
        while True:
            await asyncio.sleep(self._follow)
            with surviving("webhooks follow the policy"):
                self.apply(self._policy.current)

    async def retention_pass(self) -> int:
        """Remove the events past ``ledger_retention_days`` now (0 days: none); how many."""
        days = self._policy.current.ledger_retention_days
        if not days:
            return 0
        removed = await self._ledger.delete_older_than(to_ms(self._clock.now()) - days * DAY_MS)
        if removed:
            log.info("ledger retention: removed %d event(s) older than %d days", removed, days)
        return removed

    async def _retention(self) -> None:
        while True:
            with contextlib.suppress(LedgerError), surviving("ledger retention"):
                await self.retention_pass()
            await asyncio.sleep(self._retention_every)
