"""The UI's Prefect client against a loopback HTTP server that is busy for a while (as a Prefect
server on SQLite is under load: it answers 503 and has rolled the write back)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowdc.errors import UserError
from flowdc.ui import prefect_api
from flowdc.ui.prefect_api import PrefectApi


@pytest.fixture
def busy_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, int]]]:
    monkeypatch.setattr(prefect_api, "BUSY_WAITS_S", (0.01, 0.01, 0.01))
    state = {"busy_left": 0, "calls": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["calls"] += 1
            if state["busy_left"] > 0:
                state["busy_left"] -= 1
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b'{"exception_message":"Service Unavailable"}')
                return
            body = json.dumps({"id": "run-1", "state": {"type": "RUNNING"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", state
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_answer_is_tried_again(busy_server: tuple[str, dict[str, int]]) -> None:
    url, state = busy_server
    state["busy_left"] = 2
    assert PrefectApi(url).flow_run_state("run-1") == "RUNNING"
    assert state["calls"] == 3


def test_a_server_that_stays_busy_is_one_clear_error(busy_server: tuple[str, dict[str, int]]) -> None:
    url, state = busy_server
    state["busy_left"] = 100
    with pytest.raises(UserError, match="HTTP 503"):
        PrefectApi(url).flow_run_state("run-1")
    assert state["calls"] == 4  # the first try and one per wait
