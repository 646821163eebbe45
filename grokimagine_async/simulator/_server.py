"""Serving the simulator over real sockets with uvicorn (imported only when needed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio

from ._app import DROP_EXTENSION, Receive, Scope, Send

if TYPE_CHECKING:
    import uvicorn

App = Callable[[Scope, Receive, Send], Any]

_INSTALL_HINT = (
    "serving the Grok Imagine simulator over sockets needs uvicorn: "
    "pip install 'grokimagine-async[simulator]'"
)
_START_TIMEOUT = 10.0
_BACKLOG = 4096


def import_uvicorn() -> ModuleType:
    """uvicorn, or an ``ImportError`` that says how to get it."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=_BACKLOG)


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", ""):  # noqa: S104 - only mapping a wildcard to a reachable address
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Connections:
    """Open transports by client address, so the app can close its own connection.

    ASGI gives an app no way to drop a connection without answering; uvicorn's
    protocol keeps the transport to itself, so the protocol subclass below files each
    one here under the client address that also appears in the request's scope.
    """

    def __init__(self) -> None:
        self.by_client: dict[tuple[str, int], asyncio.Transport] = {}

    def wrap(self, app: App) -> App:
        async def with_drop(scope: Scope, receive: Receive, send: Send) -> None:
            client = scope.get("client")
            transport = self.by_client.get(tuple(client)) if client else None
            if scope["type"] == "http" and transport is not None:

                async def drop(transport: asyncio.Transport = transport) -> None:
                    transport.close()
                    # Returning before uvicorn sees the close would make it log that the
                    # app never answered; the disconnect message is that signal.
                    while (await receive())["type"] != "http.disconnect":
                        pass

                extensions = {**(scope.get("extensions") or {}), DROP_EXTENSION: drop}
                scope = {**scope, "extensions": extensions}
            await app(scope, receive, send)

        return with_drop


def _protocol_class(connections: _Connections) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _DroppableH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                connections.by_client[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                connections.by_client.pop(self.client, None)
            super().connection_lost(exc)

    return _DroppableH11Protocol


def _server(app: App, *, embedded: bool, log_level: str) -> uvicorn.Server:
    import_uvicorn()
    import uvicorn
    import uvicorn.config

    connections = _Connections()
    config = uvicorn.Config(
        connections.wrap(app),
        http=_protocol_class(connections),
        interface="asgi3",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        # Embedded servers leave the host program's logging configuration alone.
        log_config=None if embedded else uvicorn.config.LOGGING_CONFIG,
        backlog=_BACKLOG,
        # Longer than any client's keep-alive expiry, so a pooled connection is never
        # closed by the server just as the client reuses it.
        timeout_keep_alive=30,
    )
    if not embedded:
        return uvicorn.Server(config)

    class _EmbeddedServer(uvicorn.Server):
        """A server that leaves signal handling to the program it runs in."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def install_signal_handlers(self) -> None:
            pass

    return _EmbeddedServer(config)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    with anyio.fail_after(_START_TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the simulator's server stopped while starting")
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def serve(
    app: App, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Serve ``app`` (a :class:`Simulator` or any ASGI app) from the running asyncio loop.

    ::

        async with serve(sim) as base_url:  # e.g. "http://127.0.0.1:54321"
            ...

    uvicorn (HTTP/1.1 via h11, no lifespan, no access log) runs as a task in the
    current loop; ``port=0`` picks a free port. The socket is listening when the
    block starts. On exit the server stops accepting, closes idle connections, waits
    for answers still in flight (a pending ``delay`` fault included, unless its client
    already hung up) and leaves no task behind. Needs asyncio and uvicorn
    (``pip install 'grokimagine-async[simulator]'``).
    """
    import_uvicorn()
    sock = _bind(host, port)
    try:
        server = _server(app, embedded=True, log_level=log_level)
    except BaseException:
        sock.close()
        raise
    url = _url(host, sock)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await _started(server, task)
        yield url
    finally:
        server.should_exit = True
        # Shielded so a cancelled caller still waits for the sockets to close.
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])
        sock.close()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


@contextlib.contextmanager
def serve_in_thread(
    app: App, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> Iterator[str]:
    """Like :func:`serve`, but on a fresh event loop in a daemon thread, for sync code.

    ::

        with serve_in_thread(sim) as base_url:
            httpx.get(f"{base_url}/_sim/stats")

    Start-up errors are raised here; the thread is joined on exit.
    """
    import_uvicorn()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop
        async with serve(app, host, port, log_level=log_level) as url:
            box["url"] = url
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="grokimagine-simulator", daemon=True)
    thread.start()
    if not ready.wait(_START_TIMEOUT) or "url" not in box:
        _stop_thread(box, thread)
        raise RuntimeError("the simulator's server thread did not start") from box.get("error")
    try:
        yield box["url"]
    finally:
        _stop_thread(box, thread)
        if "error" in box:
            raise box["error"]


def _stop_thread(box: dict[str, Any], thread: threading.Thread) -> None:
    loop: asyncio.AbstractEventLoop | None = box.get("loop")
    if loop is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(box["stop"].set)
    thread.join(_START_TIMEOUT)


def run(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until interrupted (Ctrl+C / SIGTERM), calling ``on_ready(url)`` once up."""
    import_uvicorn()
    sock = _bind(host, port)
    url = _url(host, sock)

    async def main() -> None:
        server = _server(app, embedded=False, log_level=log_level)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await _started(server, task)
        if on_ready is not None:
            on_ready(url)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
