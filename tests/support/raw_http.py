"""Raw HTTP/1.1 on a socket, for what an HTTP client library will not do: trickle a body,
hang up half-way, send a header past aiohttp's limits, hold many connections open."""

import asyncio
import json
from typing import Any


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, timeout_s: float) -> RawResponse:
    """One response; AssertionError if none comes in time."""
    try:
        async with asyncio.timeout(timeout_s):
            status_line = await reader.readline()
            assert status_line.startswith(b"HTTP/1."), status_line
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout_s} s") from None
    return RawResponse(int(status_line.split()[1]), headers, body)


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True once the server closed the connection (EOF or reset) within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65_536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def exchange(host: str, port: int, request: bytes, timeout_s: float = 5.0) -> RawResponse:
    """Writes ``request`` on a new connection and reads one response."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader, timeout_s)
    finally:
        writer.close()
