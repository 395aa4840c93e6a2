"""A small pooled HTTP/1.1 client for the gateway's calls to model-server instances.

Keep-alive connections are reused across requests (a TCP handshake per call would double the
gateway's overhead); responses with Content-Length or chunked bodies are read. One instance of
`InstanceClient` per model-server instance; safe to share between coroutines of one event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class InstanceUnavailable(ConnectionError):
    """The instance did not answer (refused, reset, timed out)."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class InstanceClient:
    def __init__(self, host: str, port: int, max_idle: int = 32) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in range(2):  # a pooled connection may have been closed by the server
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect(timeout)
            try:
                reply, keep = await asyncio.wait_for(self._exchange(connection, payload), timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                connection[1].close()
                if reused and attempt == 0:
                    continue
                raise InstanceUnavailable(str(error) or type(error).__name__) from error
            except TimeoutError:
                connection[1].close()
                raise
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                connection[1].close()
            return reply
        raise InstanceUnavailable("no connection")

    async def _connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, TimeoutError) as error:
            raise InstanceUnavailable(str(error) or type(error).__name__) from error

    @staticmethod
    async def _exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: bytes
    ) -> tuple[Reply, bool]:
        reader, writer = connection
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            body = await reader.read()
            return Reply(status, headers, body), False
        keep = headers.get("connection", "").lower() != "close"
        return Reply(status, headers, body), keep

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
