"""Cheap open image hosts for CPU-bound benches: a bare asyncio HTTP/1.1 server per loopback address.

The bench measures the client, so the hosts must cost next to nothing per request: every body is
built before the first request (the bench's realistic noise JPEGs, bench/realistic.py), and a
request is one header read, an optional sleep and one write of prebuilt bytes on a kept-alive
connection. No routing, no parsing beyond the request line: aiohttp's server, with the fake
hosts' fault and format machinery (flowdc.testing.fakehosts), costs several times more CPU per
request, which on a 2-core machine comes out of the client's share.

GET /img/NNNN.jpg?anything answers image NNNN of the pool (modulo its size); any other path 404.
"""

from __future__ import annotations

import asyncio
import random

HEAD_LIMIT = 16 * 1024
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def responses(bodies: list[bytes]) -> list[bytes]:
    """Each body with its whole HTTP/1.1 response head in front: one write per request."""
    return [b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(b) + b
            for b in bodies]


class RawHost:
    def __init__(self, ip: str, answers: list[bytes], latency_s: float = 0.0, jitter_s: float = 0.0,
                 seed: int = 0) -> None:
        self.ip = ip
        self.answers = answers
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.rng = random.Random(seed)
        self.requests = 0
        self.server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://{self.ip}:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> RawHost:
        self.server = await asyncio.start_server(self._serve, self.ip, 0, backlog=1024)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                answer = self._answer(head)
                delay = self.latency_s + (self.rng.random() * self.jitter_s if self.jitter_s else 0.0)
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        # "GET /img/0042.jpg?r=7 HTTP/1.1": the number between "/img/" and the first "."
        line = head[: head.find(b"\r\n")]
        start = line.find(b" /img/")
        if start < 0:
            return NOT_FOUND
        digits = line[start + 6: line.find(b".", start + 6)]
        if not digits.isdigit():
            return NOT_FOUND
        return self.answers[int(digits) % len(self.answers)]


async def start_hosts(count: int, answers: list[bytes], latency_s: float, jitter_s: float) -> list[RawHost]:
    """`count` hosts on 127.0.0.2, 127.0.0.3, ... (ports from 0)."""
    return [await RawHost(f"127.0.0.{i + 2}", answers, latency_s, jitter_s, seed=i).start() for i in range(count)]
