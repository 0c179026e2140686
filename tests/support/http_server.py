"""A real ``quota-service serve --http 127.0.0.1:0`` for the HTTP face's end-to-end tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.server_process import ROOT, ServerProcess

VIEWER_TOKEN = "e2e-viewer-token"
SCREENSHOTS = ROOT / "docs" / "screenshots"


def screenshot(page: Any, name: str) -> None:
    """Save the page as docs/screenshots/<name>.png (overwritten on every run)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


class HttpServerProcess(ServerProcess):
    """:class:`ServerProcess` with the HTTP face on a free port (``http_url``) and a viewer
    token. A restart comes back on the same HTTP port (so an open page reconnects to it)."""

    def __init__(
        self,
        *,
        redis_url: str,
        workdir: Path,
        extra_args: tuple[str, ...] = (),
        policies: Path | None = None,
    ) -> None:
        self.http_port_file = workdir / "http-port"
        self.http_extra_args = extra_args
        super().__init__(redis_url=redis_url, workdir=workdir, **({"policies": policies} if policies else {}))
        self.viewer_token = VIEWER_TOKEN
        self.http_port = 0

    def start(self, timeout: float = 20.0) -> None:
        self.http_port_file.unlink(missing_ok=True)
        self.extra_args = (
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--http-port-file",
            str(self.http_port_file),
            "--viewer-token",
            VIEWER_TOKEN,
            *self.http_extra_args,
        )
        super().start(timeout)
        deadline = time.monotonic() + 5
        while not self.http_port_file.exists() or not self.http_port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no HTTP port file:\n{self.log()}")
            time.sleep(0.05)
        self.http_port = int(self.http_port_file.read_text())
        while True:  # ready: Redis, the stops and the ledger's schema (the ledger migrates in the background)
            status, body, _ = get(self, "/readyz")
            if status == 200 and json.loads(body)["status"] == "ok":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready: {body!r}\n{self.log()}")
            time.sleep(0.05)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.workdir / 'data' / 'ledger.db'}"


def call(
    server: HttpServerProcess,
    service: str,
    method: str,
    body: object | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    http_method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    """POST one Connect unary JSON call; (HTTP status, parsed JSON body)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body or {}).encode()
    request = urllib.request.Request(
        f"{server.http_url}/quota.v1.{service}/{method}",
        data=data if http_method == "POST" else None,
        headers=sent,
        method=http_method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"text": text.decode(errors="replace")}
        return exc.code, parsed


def get(server: HttpServerProcess, path: str, *, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"{server.http_url}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
