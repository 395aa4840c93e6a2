"""The model server of one endpoint instance: SageMaker's hosting contract (`GET /ping`,
`POST /invocations`) over the handlers of one model.

    python -m salvia.serving.model_server --model-dir DIR --port PORT [--host 127.0.0.1]

The model loads once, in the background, as soon as the server listens. `/ping` answers 503
while it loads, 200 once it is loaded, and 500 with the reason (also printed to stderr) if loading
failed; the process stays up so that the platform can report that reason. Handlers run in a
worker thread, one request at a time per process, so a long prediction never blocks `/ping`.

Environment (SageMaker's names): SALVIA_FRAMEWORK (see `handlers`), SAGEMAKER_PROGRAM,
SAGEMAKER_SUBMIT_DIRECTORY, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT (application/json),
SAGEMAKER_MAX_PAYLOAD_IN_MB (6; 0 = no limit), SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s),
SAGEMAKER_MODEL_SERVER_WORKERS (1; more start that many server processes, each with its own copy
of the model), SAGEMAKER_BIND_TO_PORT (when --port is not given), SAGEMAKER_MULTI_MODEL (true: no
model loads at start; the platform loads and unloads models through the `/models` API of
multi-model endpoints).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import queue
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from salvia.serving import codecs, handlers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOADING, READY, FAILED = "Loading", "Healthy", "Failed"
_TEXT = b"text/plain; charset=utf-8"
_MODEL_DIR_VARIABLE = "SALVIA_MODEL_SERVER_DIR"  # hands --model-dir to worker processes


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    default_accept: str = codecs.JSON
    max_payload_bytes: int = 6 * 1024 * 1024  # 0: no limit
    timeout_seconds: float = 60.0
    multi_model: bool = False  # SAGEMAKER_MULTI_MODEL: models load and unload on request

    @classmethod
    def from_environ(cls, model_dir: Path, environ: MutableMapping[str, str]) -> Settings:
        megabytes = float(environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB") or 6)
        return cls(
            model_dir=model_dir,
            default_accept=environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or codecs.JSON,
            max_payload_bytes=int(megabytes * 1024 * 1024),
            timeout_seconds=float(environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT") or 60),
            multi_model=(environ.get("SAGEMAKER_MULTI_MODEL") or "").lower() == "true",
        )


class ModelServer:
    """The ASGI application. Plain ASGI rather than a framework: it sits on the serving hot path."""

    def __init__(
        self,
        settings: Settings,
        environ: MutableMapping[str, str] | None = None,
        load_before_serving: bool = False,
    ) -> None:
        # With several worker processes sharing a port, one worker's /ping cannot vouch for
        # another's model: each loads before it takes connections.
        self.load_before_serving = load_before_serving
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.state = LOADING
        self.error = ""
        self.transformer: handlers.Transformer | None = None
        self._worker = _ModelThread()
        self._load_started = threading.Lock()
        self._loading = False
        # multi-model mode: the models loaded through `POST /models`, by name
        self.models: dict[str, tuple[str, handlers.Transformer]] = {}

    # ------------------------------------------------------------------------------- loading

    def start_loading(self) -> None:
        with self._load_started:
            if self._loading:
                return
            self._loading = True
        self._worker.post(self._load)

    def _load(self) -> None:
        if self.settings.multi_model:  # nothing to load until the platform asks
            self.state = READY
            return
        started = time.monotonic()
        try:
            resolved = handlers.resolve(self.settings.model_dir, self.environ)
            transformer = handlers.Transformer(
                resolved, str(self.settings.model_dir), self.settings.default_accept
            )
            transformer.load()
        except BaseException as error:  # even SystemExit from a script: it is the reason
            self.error = f"Model loading failed: {_describe(error)}\n\n{traceback.format_exc()}"
            self.state = FAILED
            print(self.error, file=sys.stderr, flush=True)
            return
        self.transformer = transformer
        # What is loaded now stays: the collector need not walk it again (with a framework's
        # hundreds of thousands of objects, a full collection costs milliseconds per request)
        gc.freeze()
        self.state = READY
        elapsed = time.monotonic() - started
        print(f"Model loaded from {self.settings.model_dir} with {resolved.source} handlers "
              f"in {elapsed:.2f} s.", file=sys.stderr, flush=True)  # fmt: skip

    # ---------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path, method = scope["path"], scope["method"]
            if self.settings.multi_model and path.startswith("/models"):
                await self._models(scope, receive, send)
            elif path == "/invocations":
                if method == "POST":
                    await self._invocations(scope, receive, send)
                else:
                    await _respond(send, 405, b"Method not allowed.")
            elif path == "/ping":
                await self._ping(send)
            elif path == "/execution-parameters" and method == "GET":
                await self._execution_parameters(send)
            else:
                await _respond(send, 404, b"Not found: only /ping and /invocations are served.")
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_loading()
                if self.load_before_serving:
                    while self.state == LOADING:  # a worker of several: ready when it serves
                        await asyncio.sleep(0.02)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._worker.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ping(self, send: Send) -> None:
        if self.state == READY:
            await _respond(send, 200, b'{"status": "Healthy"}', b"application/json")
        elif self.state == LOADING:
            self.start_loading()
            await _respond(send, 503, b"The model is loading.")
        else:
            await _respond(send, 500, self.error.encode())

    async def _not_ready(self, send: Send) -> None:
        if self.state == FAILED:
            await _respond(send, 500, self.error.encode())
        else:
            self.start_loading()
            await _respond(send, 503, b"The model is loading.")

    async def _execution_parameters(self, send: Send) -> None:
        transformer = self.transformer
        if transformer is None:
            await self._not_ready(send)
            return
        parameters = transformer.execution_parameters()
        if parameters is None:
            await _respond(send, 404, b"This model defines no execution parameters.")
        else:
            await _respond(send, 200, codecs.to_json(parameters), b"application/json")

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        transformer = self.transformer
        if self.settings.multi_model:
            await _respond(send, 400, b"A multi-model server invokes /models/<name>/invoke.")
            return
        if transformer is None:
            await self._not_ready(send)
            return
        await self._invoke(transformer, scope, receive, send)

    async def _invoke(
        self, transformer: handlers.Transformer, scope: Scope, receive: Receive, send: Send
    ) -> None:
        content_type = accept = None
        length = -1
        raw_headers = scope["headers"]
        for name, value in raw_headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"content-length":
                length = int(value)
        limit = self.settings.max_payload_bytes
        message = await receive()
        body: bytes = message.get("body", b"")
        size = len(body)
        if message.get("more_body", False):
            chunks = [body]
            while message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if not limit or size <= limit:
                    chunks.append(chunk)
            body = b"".join(chunks)
        if limit and max(size, length) > limit:
            # Read to the end first: a client still sending would see a broken pipe otherwise.
            await _too_large(send, max(size, length), limit)
            return
        loop = asyncio.get_running_loop()
        future = self._worker.run(loop, _invoke, transformer, body, content_type, accept,
                                  raw_headers)  # fmt: skip
        timer = loop.call_later(self.settings.timeout_seconds, _expire, future)
        try:
            status, payload, response_type, extra = await future
        except TimeoutError:
            detail = f"The model did not answer within {self.settings.timeout_seconds:g} s."
            await _respond(send, 504, detail.encode())
            return
        finally:
            timer.cancel()
        headers = [(b"content-type", response_type)]
        for key, value in extra.items():
            headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        if not isinstance(payload, bytes):  # parts from a handler that yields: chunked
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await self._stream(payload, send)
            return
        headers.append((b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _stream(self, parts: Iterator[bytes], send: Send) -> None:
        """Each part as a chunk as soon as the handler yields it, pulled on the model thread.
        A handler that fails midway breaks the connection: the caller sees an unfinished
        chunked body (a `ModelStreamError` at the gateway), never a truncated success."""
        loop = asyncio.get_running_loop()
        while True:
            future = self._worker.run(loop, next, parts, None)
            timer = loop.call_later(self.settings.timeout_seconds, _expire, future)
            try:
                part = await future
            except BaseException as error:
                print(f"The streaming handler failed: {_describe(error)}\n"
                      f"{traceback.format_exc()}", file=sys.stderr, flush=True)  # fmt: skip
                raise
            finally:
                timer.cancel()
            if part is None:
                break
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # --------------------------------------------------------------- multi-model endpoints

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The multi-model contract SageMaker drives a container by (its "bring your own
        container" multi-model API): `POST /models` loads `{"model_name", "url"}`, `GET /models`
        lists, `GET|DELETE /models/<name>` describes or unloads, `POST /models/<name>/invoke`
        predicts."""
        method, parts = scope["method"], scope["path"].split("/")[2:]
        if not parts or not parts[0]:
            if method == "POST":
                await self._load_named(await _read_all(receive), send)
            elif method == "GET":
                listing = [{"modelName": n, "modelUrl": u} for n, (u, _) in self.models.items()]
                await _respond(send, 200, codecs.to_json({"models": listing}), b"application/json")
            else:
                await _respond(send, 405, b"Method not allowed.")
            return
        name = urllib.parse.unquote(parts[0])
        if name not in self.models:
            await _respond(send, 404, f"Model {name} is not loaded.".encode())
        elif len(parts) == 2 and parts[1] == "invoke" and method == "POST":
            await self._invoke(self.models[name][1], scope, receive, send)
        elif len(parts) == 1 and method == "GET":
            body = codecs.to_json([{"modelName": name, "modelUrl": self.models[name][0]}])
            await _respond(send, 200, body, b"application/json")
        elif len(parts) == 1 and method == "DELETE":
            loop = asyncio.get_running_loop()
            await self._worker.run(loop, self.models.pop, name, None)  # after requests queued
            await _respond(send, 200, b'{"status": "Model unloaded"}', b"application/json")
        else:
            await _respond(send, 405, b"Method not allowed.")

    async def _load_named(self, body: bytes, send: Send) -> None:
        try:
            request = json.loads(body)
            name, url = str(request["model_name"]), str(request["url"])
        except (ValueError, KeyError, TypeError):
            await _respond(send, 400, b'POST /models takes {"model_name": ..., "url": ...}.')
            return
        if name in self.models:
            await _respond(send, 409, f"Model {name} is already loaded.".encode())
            return
        loop = asyncio.get_running_loop()
        try:
            transformer = await self._worker.run(loop, self._load_model, Path(url))
        except Exception as error:
            reason = f"Model {name} failed to load: {_describe(error)}"
            print(f"{reason}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            await _respond(send, 500, reason.encode())
            return
        self.models[name] = (url, transformer)
        await _respond(send, 200, b'{"status": "Model loaded"}', b"application/json")

    def _load_model(self, model_dir: Path) -> handlers.Transformer:
        resolved = handlers.resolve(model_dir, self.environ)
        transformer = handlers.Transformer(resolved, str(model_dir), self.settings.default_accept)
        transformer.load()
        return transformer


class _ModelThread:
    """The one thread that runs the handlers, in arrival order: requests are served one at a time
    per process, as SageMaker's servers do, on the thread that loaded the model. Lighter than
    `run_in_executor` (no concurrent.futures chaining) on the serving hot path."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    def post(self, fn: Callable[[], None]) -> None:
        self._queue.put((None, fn, ()))

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., _T],
            *args: Any) -> asyncio.Future[_T]:  # fmt: skip
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as error:  # handed to the awaiting request
                if future is not None:
                    future.get_loop().call_soon_threadsafe(_settle, future, None, error)
                continue
            if future is not None:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)


_T = TypeVar("_T")
_Job = tuple["asyncio.Future[Any] | None", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # timed out meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _invoke(
    transformer: handlers.Transformer,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    headers: list[tuple[bytes, bytes]],
) -> tuple[int, bytes | Iterator[bytes], bytes, dict[str, str]]:
    """Runs on the model thread: (status, body, content type, extra headers)."""
    try:
        payload, response_type, extra = transformer.invoke(body, content_type, accept, headers)
        if not isinstance(payload, bytes):  # a stream: its first part decides 200 or an error
            first = next(payload, None)
            payload = itertools.chain([first], payload) if first is not None else iter(())
        return 200, payload, response_type.encode("latin-1"), extra
    except Exception as error:  # the toolkit's transformer: message and traceback, 500
        status = getattr(error, "status_code", 500)
        if not isinstance(status, int) or not 400 <= status <= 599:
            status = 500
        message = getattr(error, "message", None) or _describe(error)
        text = f"{message}\n{traceback.format_exc()}"
        return status, text.encode("utf-8", "replace"), _TEXT, {}


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = _TEXT) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _too_large(send: Send, size: int, limit: int) -> None:
    detail = f"The request body ({size} bytes) is over the {limit}-byte payload limit."
    await _respond(send, 413, detail.encode())


def create_app() -> ModelServer:
    """The application of a worker process (`SAGEMAKER_MODEL_SERVER_WORKERS` > 1)."""
    model_dir = Path(os.environ[_MODEL_DIR_VARIABLE])
    return ModelServer(Settings.from_environ(model_dir, os.environ), load_before_serving=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m salvia.serving.model_server")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--worker-ports",
        default="",
        help="with several workers: a port of its own for each (comma-separated), beside the "
        "shared one, so that a client can spread its connections over the workers",
    )
    args = parser.parse_args(argv)
    port = args.port or int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or 8080)
    workers = max(1, int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS") or 1))

    import uvicorn

    options: dict[str, Any] = {
        "host": args.host,
        "port": port,
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        # The gateway keeps pooled connections to this private port: don't drop idle ones.
        "timeout_keep_alive": 3600,
    }
    if workers == 1:
        uvicorn.run(ModelServer(Settings.from_environ(args.model_dir, os.environ)), **options)
    else:
        os.environ[_MODEL_DIR_VARIABLE] = str(args.model_dir.resolve())
        own_ports = [int(p) for p in args.worker_ports.split(",") if p.strip()]
        if own_ports and len(own_ports) != workers:
            parser.error(f"--worker-ports: {len(own_ports)} ports for {workers} workers")
        _prefork(workers, options, own_ports)


def _listen(host: str, port: int) -> Any:
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    return listener


def _prefork(workers: int, options: dict[str, Any], own_ports: list[int]) -> None:
    """`workers` server processes on one listening socket, forked after the framework's
    libraries are imported here (see `handlers.preload`); one that dies is replaced, and
    SIGTERM/SIGINT stop them all.

    On a shared socket the first worker to wake takes every connection waiting, so the few
    long keep-alive connections of a gateway or a transform job can all land on one worker
    while the others idle. With `own_ports`, worker i also listens on a port of its own,
    which a client that knows them spreads its connections over."""
    import signal

    import uvicorn

    listener = _listen(options["host"], options["port"])
    own = [_listen(options["host"], port) for port in own_ports]
    handlers.preload(os.environ.get("SALVIA_FRAMEWORK", ""))
    gc.freeze()  # the workers' collections would touch (and so copy) every page imported here
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def fork_worker(index: int) -> None:
        pid = os.fork()
        if pid:
            children[pid] = index
            return
        status = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)  # uvicorn installs its own
            config = uvicorn.Config(create_app(), **options)
            uvicorn.Server(config).run(sockets=[listener, *own[index : index + 1]])
            status = 0
        finally:
            os._exit(status)

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for index in range(workers):
        fork_worker(index)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    last_fork = time.monotonic()
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        dead = children.pop(pid, -1)
        if not stopping and dead >= 0:  # a worker died: replace it, one a second
            time.sleep(max(0.0, 1.0 - (time.monotonic() - last_fork)))
            last_fork = time.monotonic()
            fork_worker(dead)


if __name__ == "__main__":
    main()
