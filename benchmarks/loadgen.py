"""A closed-loop HTTP/1.1 load generator light enough to share 2 cores with the server it measures.

httpx spends ~1 CPU-ms per request on its own (request building, header objects,
multipart encoding): at 1000 req/s that is a whole core taken from the server. Here
each request is pre-encoded bytes written on a keep-alive connection and the answer
is read by its Content-Length: ~40 µs per request on uvloop. Every server in one
benchmark run is driven by the same client, so their ratios stay fair.
"""

from __future__ import annotations

import asyncio
import mimetypes
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class LoadResult:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    wall_s: float = 0.0
    first_error: str = ""

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    @property
    def non_2xx(self) -> int:
        return sum(self.statuses.values()) - self.ok

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    def line(self) -> str:
        bad = {code: n for code, n in sorted(self.statuses.items()) if not 200 <= code < 300}
        return (
            f"{self.name:<44} {self.throughput:8.1f} req/s   p50 {self.percentile(50):7.1f} ms   "
            f"p99 {self.percentile(99):7.1f} ms   ok {self.ok:7d}   non-2xx {bad or 0}"
        )


def multipart_request(host: str, port: int, path: str, parts: Sequence[tuple[str, str, bytes]]) -> bytes:
    """A complete POST with a multipart body of (field, filename, bytes) file parts.

    Each part declares the type a browser would (image/png for a .png), so servers that go by the
    declared type (older Bouncers did) are measured, not refused.
    """
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {mimetypes.guess_type(filename)[0] or 'application/octet-stream'}\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, filename, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def json_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunks.append(await reader.readexactly(size + 2))
        if size == 0:
            return status, b"".join(chunks)


async def drive(
    name: str,
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    clients: int,
    seconds: float,
    warmup: float,
) -> LoadResult:
    """``clients`` connections, each sending the next request as soon as it has the last answer."""
    result = LoadResult(name)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def one_client(worker: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = worker
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(requests[i % len(requests)])
                i += clients
                status, body = await _read_response(reader)
                if now >= measure_from:
                    result.latencies_ms.append((time.perf_counter() - now) * 1000)
                    result.statuses[status] += 1
                    if not 200 <= status < 300 and not result.first_error:
                        result.first_error = body[:300].decode(errors="replace")
        finally:
            writer.close()

    await asyncio.gather(*(one_client(w) for w in range(clients)))
    result.wall_s = time.perf_counter() - measure_from
    return result


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (the client's own overhead matters here)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
