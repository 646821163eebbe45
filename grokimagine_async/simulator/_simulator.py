"""The public face of the simulator."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import httpx

from . import _server
from ._app import Receive, Scope, Send, SimulatorApp
from ._config import FAILURE_MESSAGES, Phase, SimulatorConfig
from ._faults import Fault, FaultEndpoint, FaultKind, as_fault
from ._state import SimTask
from ._stats import SimulatorStats
from ._transport import SimulatorTransport


class Simulator:
    """A fake Grok Imagine server: an ASGI app you can call in-process or serve on a port.

    ::

        sim = Simulator(limit=10, period=1.0, generation_time=(0.5, 2.0), seed=1)

        # In-process, no sockets: the transport behaves like the network on faults.
        async with httpx.AsyncClient(
            transport=sim.transport(), base_url="http://sim.test"
        ) as http:
            ...

        # Over a real socket, in the running asyncio loop.
        async with sim.serve() as base_url:
            ...

    Keyword ``overrides`` are :class:`SimulatorConfig` fields applied on top of
    ``config`` (``tier="pro"`` sets the limit of a plan). ``clock`` is any callable
    returning seconds (default ``time.monotonic``); a
    :class:`~grokimagine_async.simulator.ManualClock` lets tests move time by hand.
    ``seed`` makes task ids, generation times, failures and random faults reproducible.

    Served endpoints: ``POST /v1/generate`` and ``GET /v1/status?task_id=`` (bearer auth,
    rate counted); ``GET /videos/{task_id}/{n}.mp4`` (no auth, not counted);
    ``GET /_sim/stats`` and ``POST /_sim/reset`` for a simulator in another process.
    The instance itself is the ASGI callable.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        seed: int | None = None,
        **overrides: Any,
    ) -> None:
        config = config or SimulatorConfig()
        if overrides:
            config = config.replace(**overrides)
        self._app = SimulatorApp(config, clock or time.monotonic, seed)

    def __repr__(self) -> str:
        config = self.config
        burst = f", burst={config.burst}" if config.burst is not None else ""
        return (
            f"Simulator(limit={config.limit}, period={config.period}, "
            f"rate_model={config.rate_model!r}{burst})"
        )

    @property
    def config(self) -> SimulatorConfig:
        """The configuration in force."""
        return self._app.config

    @property
    def clock(self) -> Callable[[], float]:
        """The clock task phases and rate windows are computed from."""
        return self._app.clock

    @property
    def app(self) -> Callable[[Scope, Receive, Send], Any]:
        """The ASGI application (the simulator itself), for mounting in another server."""
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        await self._app(scope, receive, send)

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport into this simulator, with socket-like failures.

        Dropped connections raise ``httpx.RemoteProtocolError`` and the request's read
        timeout raises ``httpx.ReadTimeout``, as over a real connection.
        """
        return SimulatorTransport(self._app)

    # Faults

    def inject(
        self, fault: Fault | FaultKind, *, endpoint: FaultEndpoint = "any", times: int = 1
    ) -> None:
        """Make the next ``times`` requests to ``endpoint`` suffer ``fault``.

        Only requests that pass authentication use up a queued fault (video downloads
        need none). Faults queue up in order: each request takes the first one queued
        for its endpoint or for ``"any"``, skipping a ``status_backwards`` or
        ``video_not_found`` that does not apply to the request (they wait for a status
        request or a video download; naming another endpoint for one is a
        ``ValueError``). A kind name may stand for a fault with default parameters,
        e.g. ``sim.inject("reset_after", endpoint="generate")``.
        """
        with self._app.lock:
            self._app.faults.inject(as_fault(fault), endpoint, times)

    def set_fault_rate(
        self, fault: Fault | FaultKind, rate: float, *, endpoint: FaultEndpoint = "any"
    ) -> None:
        """Give each request to ``endpoint`` the chance ``rate`` (0..1) of suffering ``fault``.

        Draws use the seeded random generator. A rate of 0 removes the setting. Queued
        faults from :meth:`inject` take precedence. ``status_backwards`` is drawn for
        status requests only and ``video_not_found`` for video downloads only (naming
        another endpoint for one is a ``ValueError``).
        """
        with self._app.lock:
            self._app.faults.set_rate(as_fault(fault), rate, endpoint)

    def clear_faults(self) -> None:
        """Forget every queued fault and fault rate."""
        with self._app.lock:
            self._app.faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many queued fault applications have not happened yet."""
        with self._app.lock:
            return self._app.faults.pending()

    # Observation and control

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of what the server has seen so far (a fresh copy on every access)."""
        return self._app.stats_snapshot()

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        """A snapshot of every task by id."""
        return MappingProxyType(self._app.tasks_snapshot())

    def phase(self, task_id: str) -> Phase:
        """The phase of ``task_id`` right now (``KeyError`` if there is no such task)."""
        task = self._app.tasks_snapshot()[task_id]
        return task.phase(self.clock())

    def complete_now(self, task_id: str, *, videos: int | None = None) -> None:
        """Finish ``task_id`` successfully now, optionally with ``videos`` URLs."""
        if videos is not None and videos < 0:
            raise ValueError(f"videos must not be negative, got {videos}")
        self._app.finish_now(task_id, error_message=None, videos=videos)

    def fail_now(self, task_id: str, message: str = FAILURE_MESSAGES[2]) -> None:
        """Fail ``task_id`` now with ``message`` (default ``grok imagine build failed``)."""
        self._app.finish_now(task_id, error_message=message, videos=None)

    def reset(self) -> None:
        """Forget tasks, rate counters and stats (what ``POST /_sim/reset`` does).

        New tasks are drawn again as from the start: with a ``seed``, a run after a
        reset meets the same generation times and failures in the same order (ids
        stay unique: one drawn before gets a suffix).

        Configured faults stay; :meth:`clear_faults` removes them.
        """
        self._app.reset()

    # Serving

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve over a real socket from the running asyncio loop; yield the base URL.

        ``port=0`` picks a free port. The server (uvicorn, HTTP/1.1 via h11) is
        listening when the block starts and shut down when it ends. Needs
        ``pip install 'grokimagine-async[simulator]'``. Under trio, use
        :meth:`serve_in_thread`: uvicorn runs on asyncio only.

        Raises:
            RuntimeError: the running event loop is not asyncio's.
        """
        import sniffio

        try:
            running = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            running = None
        if running != "asyncio":
            raise RuntimeError(
                f"Simulator.serve() runs on asyncio only (uvicorn), not {running or 'no loop'}: "
                "under trio, use `with sim.serve_in_thread() as url:` instead"
            )
        async with _server.serve(self, host, port) as url:
            yield url

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Like :meth:`serve`, but on its own event loop in a background thread.

        For synchronous code and benchmarks; the simulator's state is safe to read from
        the calling thread meanwhile.
        """
        with _server.serve_in_thread(self, host, port) as url:
            yield url

    def run(self, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> None:
        """Serve until Ctrl+C, printing the URL and how to authenticate once listening."""

        def announce(url: str) -> None:
            if quiet:
                return
            print(f"Grok Imagine simulator listening on {url}", flush=True)
            if self.config.api_keys is None:
                hint = "any non-empty token works, e.g. 'Authorization: Bearer sim-token'"
            else:
                hint = "only the tokens given with --api-key are accepted"
            print(f"  {hint}; stats at {url}/_sim/stats", flush=True)
            # A client keeps to its own idea of the plan: a compressed period it is
            # not told of would have it wait out a real minute.
            rate = f"{self.config.limit}/{self.config.period:g}s"
            key = "sim-token" if self.config.api_keys is None else "<a token given with --api-key>"
            print(
                f"  point a client at it: GROKIMAGINE_BASE_URL={url} "
                f"GROKIMAGINE_API_KEY={key} GROKIMAGINE_RATE_LIMIT={rate}",
                flush=True,
            )

        _server.run(self, host, port, on_ready=announce)
        if not quiet:
            print("simulator stopped", file=sys.stderr, flush=True)
