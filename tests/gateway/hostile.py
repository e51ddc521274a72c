"""Helpers for the hostile-client tests: raw HTTP over a socket (httpx and aiohttp refuse to send malformed
requests) and an engine that misbehaves below HTTP (cuts a body short)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(data: bytes) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(status, headers, body)


async def raw_request(port: int, request: bytes, timeout_s: float = 10.0) -> RawAnswer:
    """Sends `request` as is and reads until the server closes (the request asks it to, or it must after an
    error); the timeout only bounds a hang, it is not what the test measures."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    return parse_answer(data)


def post(path: str, body: bytes, *extra_headers: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
        *extra_headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_openai_error(answer: RawAnswer, status: int) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    error = answer.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


class CuttingEngine:
    """An engine that announces a non-streamed body it never finishes: headers with Content-Length, part of
    the body, then it closes the connection. Its /v1/models and /metrics answer properly so the gateway
    routes to it. Raw asyncio because no HTTP framework will write a short body on purpose."""

    def __init__(self, model: str = "tiny") -> None:
        self.model = model
        self.server: asyncio.Server | None = None
        self.url = ""
        self.cut = 0

    async def start(self) -> CuttingEngine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *header_lines = head.decode("latin-1").split("\r\n")
                length = 0
                for h in header_lines:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                path = line.split()[1]
                if path == "/v1/models":
                    card = {"id": self.model, "object": "model", "owned_by": "vllm"}
                    self._answer(writer, json.dumps({"object": "list", "data": [card]}).encode())
                elif path in ("/metrics", "/health"):  # /health: the gateway's active health checks
                    self._answer(writer, b"", "text/plain")
                else:
                    body = json.dumps({"id": "x", "choices": [{"text": "hello world"}]}).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body) + 500}\r\n\r\n".encode()
                        + body[:10]
                    )
                    await writer.drain()
                    self.cut += 1
                    writer.close()
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, body: bytes, content_type: str = "application/json") -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


async def closed_by_server(reader: asyncio.StreamReader, deadline_s: float = 15.0) -> bytes:
    """Reads until the server closes the connection and returns what it sent; fails after `deadline_s`
    (a bound on a hang, not a measurement)."""
    data = b""
    async with asyncio.timeout(deadline_s):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                return data
            if not chunk:
                return data
            data += chunk


async def trickle(writer: asyncio.StreamWriter, piece: bytes, every_s: float = 0.05) -> None:
    """A slowloris: one small piece at a time, until the server closes the connection."""
    try:
        while not writer.is_closing():
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(every_s)
    except ConnectionError:
        return


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """One response with a Content-Length from a kept-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    answer = parse_answer(head)
    answer.body = await reader.readexactly(int(answer.headers.get("content-length", "0")))
    return answer
