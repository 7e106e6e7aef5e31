"""A closed-loop HTTP/1.1 load generator cheap enough to share 2 cores with what it measures.

`closed_loop(url, body, concurrency, seconds)` keeps `concurrency` keep-alive connections busy with
the same POST for `seconds` and returns every request's latency, status and body. It is raw
asyncio (no HTTP client library), so the client's own cost per request is a few tens of
microseconds and the gateway, not the load generator, is what runs out of CPU.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    """The requests of one closed-loop run."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of 200s, seconds
    bodies: list[bytes] = field(default_factory=list)  # of 200s
    errors: list[str] = field(default_factory=list)  # non-200 statuses and transport failures

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


async def read_message(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One HTTP/1.1 message from `reader`: its start line and its body (by Content-Length or
    chunked). Both ends of the benchmark's raw HTTP (this client, benchmarks/stub_openai.py)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return lines[0], await reader.readexactly(length) if length else b""
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)  # the chunk and its CRLF
        if size == 0:
            return lines[0], bytes(body)
        body += data[:-2]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    start, body = await read_message(reader)
    return int(start.split(" ", 2)[1]), body


def _request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {parts.netloc}",
             "content-type: application/json", f"content-length: {len(body)}"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return parts.hostname or "127.0.0.1", parts.port or 80, raw


async def closed_loop(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Result:
    """`concurrency` workers, each sending `body` to `url` and waiting for the answer, for `seconds`."""
    host, port, raw = _request(url, body, headers or {})
    result = Result()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(raw)
                status, answer = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
                result.bodies.append(answer)
            else:
                result.errors.append(f"HTTP {status}: {answer[:200]!r}")
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result
