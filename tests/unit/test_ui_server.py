"""Who may open the page: loopback freely, any other address only with a token."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from flowdc.errors import UserError
from flowdc.ui.server import COOKIE, TokenGate, check_bind

TOKEN = "correct-horse-battery"


async def page(scope, receive, send):  # the app behind the gate
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"the page"})


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(TokenGate(page, TOKEN)), base_url="http://ui")


async def test_the_gate_asks_for_the_token_and_swaps_it_for_a_cookie():
    async with client() as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/?token=wrong-token-value")).status_code == 401
        swap = await c.get("/?token=" + TOKEN + "&tab=live")
        assert swap.status_code == 303 and swap.headers["location"] == "/?tab=live"  # the token leaves the address
        assert f"{COOKIE}={TOKEN}" in swap.headers["set-cookie"] and "HttpOnly" in swap.headers["set-cookie"]
        assert (await c.get("/")).text == "the page"  # the cookie now opens it
    async with client() as c:
        assert (await c.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert (await c.post("/telemetry")).status_code == 200  # push has its own bearer check


def test_binding_off_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(UserError, match="give --token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UserError, match="at least 12"):
        check_bind("0.0.0.0", "short")


def test_flowdc_ui_off_loopback_without_a_token_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "flowdc", "ui", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--token" in proc.stderr and "Traceback" not in proc.stderr


def test_the_library_and_the_cli_load_without_nicegui():
    code = ("import sys, flowdc, flowdc.cli; flowdc.cli.build_parser(); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('nicegui', 'fastapi')], 'NiceGUI loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
