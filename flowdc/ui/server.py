"""The web server around the page: who may open it, where runs push telemetry, and ui.run.

Loopback needs no token. Any other address does (`--token` or FLOWDC_UI_TOKEN): a browser opens
`/?token=...` once and gets a cookie; every request and the page's websocket carry it. Runs push
telemetry to `POST /telemetry` with `Authorization: Bearer <push token>` (the telemetry contract).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from flowdc.errors import UserError
from flowdc.ui.context import UiContext

COOKIE = "flowdc_token"
MAX_PUSH_BYTES = 16 * 1024 * 1024  # one push body; a collector flushes far more often than this fills


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise UserError(f"binding {host} (not loopback) lets others open the page: give --token "
                        "(or set FLOWDC_UI_TOKEN), or bind 127.0.0.1")
    if token is not None and len(token) < 12:
        raise UserError("--token must be at least 12 characters")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TokenGate:
    """Pure ASGI: http and websocket requests need the token (cookie, bearer header or ?token=)."""

    def __init__(self, app: Any, token: str, open_paths: tuple[str, ...] = ("/telemetry",)):
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cookie = SimpleCookie(headers.get("cookie", ""))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = [cookie[COOKIE].value if COOKIE in cookie else "",
                 headers.get("authorization", "").removeprefix("Bearer ")]
        if any(self._ok(g) for g in given):
            await self.app(scope, receive, send)
        elif scope["type"] == "http" and any(self._ok(g) for g in query.get("token", [])):
            # Swap the token in the address for a cookie, so it leaves the address bar and history.
            rest = {k: v for k, v in query.items() if k != "token"}
            location = scope["path"] + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            await _respond(send, 303, b"", [(b"location", location.encode()), (
                b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())])
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _respond(send, 401, b"flowdc ui: open this page with ?token=<the --token given to flowdc ui>\n",
                           [(b"content-type", b"text/plain; charset=utf-8")])

    def _ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def register(ctx: UiContext, token: str | None = None) -> None:
    """The page and the push route on NiceGUI's app (and the token gate, before the app starts)."""
    from nicegui import app, ui

    from flowdc.ui.page import build_page

    if token:
        app.add_middleware(TokenGate, token=token)

    @ui.page("/")
    def index() -> None:
        build_page(ctx)

    @app.post("/telemetry")
    async def push(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {ctx.push_token}".encode()):
            return Response(status_code=401)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PUSH_BYTES:
                return Response(status_code=413)
        return JSONResponse({"accepted": ctx.live.ingest_lines(bytes(body))})


def serve(ctx: UiContext, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          on_startup: Callable[[], None] | None = None) -> None:
    """Blocks until Ctrl-C; on_startup runs once the server is up."""
    from nicegui import app, ui

    check_bind(host, token)
    shown_host = f"[{host}]" if ":" in host else host
    # The collector address of the telemetry contract (senders add /telemetry).
    ctx.push_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown_host}:{port}"
    register(ctx, token)
    print(f"flowdc ui: http://{shown_host}:{port}/" + ("  (first visit: add ?token=YOUR_TOKEN)" if token else ""),
          flush=True)
    if on_startup is not None:
        app.on_startup(on_startup)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a person closes the page's server
        ui.run(host=host, port=port, reload=False, show=False, title="FLOW-DC", show_welcome_message=False,
               uvicorn_logging_level="warning")
    print("flowdc ui: stopped", flush=True)
