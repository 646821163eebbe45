"""An httpx transport that runs the simulator in-process but fails like a socket would."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from ._app import DROP_EXTENSION, Receive, Scope, Send, SimulatorApp


class _Dropped(Exception):
    pass


async def _raise_dropped() -> None:
    raise _Dropped


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests straight into a simulator, no sockets involved.

    Unlike a bare ``httpx.ASGITransport`` it reproduces what a network client sees:

    * a dropped connection (``reset_before`` / ``reset_after`` faults) raises
      ``httpx.RemoteProtocolError("Server disconnected without sending a response.")``;
    * the request's read timeout (``httpx.Timeout(read=...)``) bounds the wait for the
      answer and raises ``httpx.ReadTimeout``, so a ``delay`` fault behaves as over a
      socket.

    Use it as ``httpx.AsyncClient(transport=sim.transport(), base_url="http://sim")``;
    the base URL's host is what video URLs in status answers point at.
    """

    def __init__(self, app: SimulatorApp) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=self._with_drop)

    async def _with_drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), DROP_EXTENSION: _raise_dropped}
        await self._app(scope, receive, send)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        try:
            with anyio.move_on_after(read_timeout) as scope:
                return await self._asgi.handle_async_request(request)
        except _Dropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        # Only reached when the timeout cancelled the call above.
        assert scope.cancelled_caught
        raise httpx.ReadTimeout("The read operation timed out", request=request)
