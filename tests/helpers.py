"""Scripted API answers for tests that don't need the simulator."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import httpx
import sniffio

from grokimagine_async import AsyncClient, RateLimit, RateLimitStatus, Slot
from grokimagine_async._limiter import Limiter
from grokimagine_async.simulator import Simulator

TOKEN = "sk-test-SECRET-7f3a9c"
SIM_URL = "http://api.test"

Handler = Callable[[httpx.Request], httpx.Response]


class LimiterAround:
    """A limiter that hands everything to ``inner``: a test or a benchmark overrides
    :meth:`slot` (or :meth:`status`) to note or change what passes through."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner

    @property
    def rate(self) -> RateLimit:
        return self.inner.rate

    def status(self) -> RateLimitStatus:
        return self.inner.status()

    def set_rate(self, rate: RateLimit) -> None:
        self.inner.set_rate(rate)

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        return self.inner.slot()


class Recorder:
    """A scripted API: answers requests in turn from a list, records them."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def make_client(recorder: Recorder, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("rate_limit", RateLimit(10_000, 1.0))
    return AsyncClient(
        TOKEN,
        base_url=SIM_URL,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(recorder)),
        **kwargs,
    )


def ok(data: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(
        200, json={"code": 200, "message": "success", "data": data}, headers=headers
    )


def api_error(status: int, error: str, message: str, **headers: str) -> httpx.Response:
    body = {"code": status, "message": message, "error": error}
    return httpx.Response(status, json=body, headers=headers)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py``, which is not a package."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def serving(sim: Simulator, *, in_thread: bool = False) -> AsyncIterator[str]:
    """``sim`` on loopback, whatever the backend; yields its base URL.

    ``sim.serve()`` runs uvicorn in the running loop, which must be asyncio's; on any
    other backend, or ``in_thread`` (so that the loop runs the client's tasks alone,
    and they can be counted), the simulator serves from its own loop in a thread, and
    the waits for that thread to start and stop happen in a worker thread, not in the
    loop.
    """
    if sniffio.current_async_library() == "asyncio" and not in_thread:
        async with sim.serve() as url:
            yield url
        return
    served = sim.serve_in_thread()
    url = await anyio.to_thread.run_sync(served.__enter__)
    try:
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(served.__exit__, None, None, None)


@asynccontextmanager
async def running(
    *, limit: int = 200, deadline: float = 30, **sim_kwargs: Any
) -> AsyncIterator[tuple[Simulator, AsyncClient]]:
    """The simulator and a client keeping to its ``limit`` a second.

    Under asyncio the simulator serves on loopback. Under trio it answers in-process
    (``sim.transport()``), with no server thread to start and stop for every test: the
    trio runs of test_integration, test_download and test_rate_limiting cover sockets.
    """
    sim_kwargs.setdefault("generation_time", (0.1, 0.4))
    sim_kwargs.setdefault("seed", 1)
    sim = Simulator(limit=limit, period=1.0, **sim_kwargs)
    async with AsyncExitStack() as stack:
        http: httpx.AsyncClient | None = None
        if sniffio.current_async_library() == "asyncio":
            url = await stack.enter_async_context(serving(sim))
        else:
            url = SIM_URL
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=sim.transport(), timeout=30.0)
            )
        client = AsyncClient(
            TOKEN,
            base_url=url,
            http_client=http,
            rate_limit=RateLimit(limit, 1.0),
            poll_interval=0.1,
            backoff=0.01,
        )
        async with client:
            with anyio.fail_after(deadline):
                yield sim, client


def prompts(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"video {i}"} for i in range(n)]


def on_virtual_clock(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` in a fresh trio loop whose clock jumps over every sleep (a
    test of timing that no load can change)."""
    import trio.testing

    anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )


@contextmanager
def held_elsewhere(path: Path, payloads: list[dict[str, Any]]) -> Iterator[None]:
    """The journal at ``path``, open in another process until the block ends."""
    script = (
        "import json, sys\n"
        "from grokimagine_async._journal import Journal\n"
        "j = Journal(sys.argv[1], json.loads(sys.argv[2]))\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    args = [sys.executable, "-c", script, str(path), json.dumps(payloads)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "open"
        try:
            yield
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
