"""A small pooled HTTP/1.1 client for the gateway's calls to model-server instances.

Keep-alive connections are reused across requests (a TCP handshake per call would double the
gateway's overhead); responses with Content-Length or chunked bodies are read. One instance of
`InstanceClient` per model-server instance; safe to share between coroutines of one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar


class InstanceUnavailable(ConnectionError):
    """The instance did not answer (refused, reset, timed out)."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class InstanceClient:
    """`worker_ports`: the ports of an instance's worker processes, each its own; new
    connections go to them in turn, so concurrent requests reach different workers (on the
    shared `port`, one worker can take them all)."""

    def __init__(
        self, host: str, port: int, max_idle: int = 32, worker_ports: Sequence[int] = ()
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._connect_ports = itertools.cycle(worker_ports or (port,))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        payload = _request_bytes(self.host, self.port, method, path, body, headers)
        (reply, keep), connection = await self._send(payload, timeout, self._exchange)
        if keep:
            self._release(connection)
        else:
            connection[1].close()
        return reply

    async def _send(
        self,
        payload: list[bytes],
        timeout: float,
        exchange: Callable[[_Connection, list[bytes]], Awaitable[_T]],
    ) -> tuple[_T, _Connection]:
        """`exchange` on a pooled connection (or a new one), within `timeout`; a pooled one the
        server has closed meanwhile is replaced once."""
        for attempt in range(2):
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect(timeout)
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path
                async with asyncio.timeout(timeout):
                    return await exchange(connection, payload), connection
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                connection[1].close()
                if reused and attempt == 0:
                    continue
                raise InstanceUnavailable(str(error) or type(error).__name__) from error
            except TimeoutError:
                connection[1].close()
                raise
        raise InstanceUnavailable("no connection")

    async def _connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            port = next(self._connect_ports)
            return await asyncio.wait_for(asyncio.open_connection(self.host, port), timeout)
        except (OSError, TimeoutError) as error:
            raise InstanceUnavailable(str(error) or type(error).__name__) from error

    @staticmethod
    async def _exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: list[bytes]
    ) -> tuple[Reply, bool]:
        reader, writer = connection
        writer.writelines(payload)
        status, headers = await _read_head(reader)
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

    async def open_stream(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> OpenedStream:
        """Send the request and read only the response's head: the body is read part by part
        (chunk by chunk when the server streams it) with `OpenedStream.parts`."""
        payload = _request_bytes(self.host, self.port, method, path, body, headers)
        (status, headers_in), connection = await self._send(payload, timeout, _send_for_head)
        return OpenedStream(status, headers_in, self, connection)

    def _release(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection[1].close()

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_T = TypeVar("_T")


def _request_bytes(
    host: str, port: int, method: str, path: str, body: bytes, headers: dict[str, str] | None
) -> list[bytes]:
    """The request as the pieces to write: one for a small request (one send), head and body
    for a big one (a batch transform's megabytes are not copied to put a head before them)."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    encoded = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return [encoded, body] if len(body) > _JOIN_BELOW else [encoded + body]


_JOIN_BELOW = 64 * 1024


async def _send_for_head(
    connection: _Connection, payload: list[bytes]
) -> tuple[int, dict[str, str]]:
    connection[1].writelines(payload)
    return await _read_head(connection[0])


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


@dataclass
class OpenedStream:
    """A response whose head has been read; its body comes from `parts` (once)."""

    status: int
    headers: dict[str, str]
    _client: InstanceClient
    _connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]

    async def parts(self, timeout: float = 60.0) -> AsyncIterator[bytes]:
        """The body as it arrives: each chunk of a chunked response, else the whole. Each read
        waits at most `timeout`. The connection goes back to the pool only when the body was
        read to its end; a consumer that stops early closes it."""
        reader, writer = self._connection
        finished, keep = False, self.headers.get("connection", "").lower() != "close"
        try:
            if "content-length" in self.headers:
                length = int(self.headers["content-length"])
                data = await asyncio.wait_for(reader.readexactly(length), timeout)
                if data:
                    yield data
            elif self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                        break
                    data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                    yield data[:-2]
            else:
                keep = False
                while data := await asyncio.wait_for(reader.read(65536), timeout):
                    yield data
            finished = True
        finally:
            if finished and keep:
                self._client._release(self._connection)
            else:
                writer.close()

    async def read_all(self, timeout: float = 60.0) -> bytes:
        return b"".join([part async for part in self.parts(timeout)])


class PipelineClient:
    """One instance of an inference pipeline: a model server per container. In `Serial` mode
    a request goes through the containers in order, each one's response (with its content type)
    the next one's request; the caller's Accept reaches only the last container, the others
    answer in their default (`SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`). In `Direct` mode each
    request names its container (`TargetContainerHostname`)."""

    def __init__(
        self, stages: list[InstanceClient], hostnames: list[str | None], direct: bool = False
    ) -> None:
        self.stages = stages
        self.hostnames = hostnames
        self.direct = direct
        self.host, self.port = stages[0].host, stages[0].port  # how the engine names it

    def container(self, hostname: str) -> InstanceClient | None:
        for stage, name in zip(self.stages, self.hostnames, strict=True):
            if name == hostname:
                return stage
        return None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        if self.direct:
            raise InstanceUnavailable("a Direct-mode pipeline is invoked one container at a time")
        forwarded = dict(headers or {})
        accept = forwarded.pop("accept", None)
        deadline = time.monotonic() + timeout
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            if index == last and accept is not None:
                forwarded["accept"] = accept
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            reply = await stage.request(method, path, body, forwarded, remaining)
            if index == last or not 200 <= reply.status < 300:
                return reply
            body = reply.body
            forwarded["content-type"] = reply.headers.get("content-type", "application/json")
        raise InstanceUnavailable("the pipeline has no containers")

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
