"""A local stand-in for the Grok Imagine video API, for tests, demos and benchmarks.

The simulator plays the server side of the contract: bearer auth, per-token rate
limiting (fixed window, sliding window, token bucket, a gateway's leaky bucket with a
small burst, or an approximate two-window counter; with the documented headers or
without), tasks that move from pending through running to completed or failed on a
clock you control, fake mp4 downloads that can expire, and injectable faults (proxy
HTML pages, 500s before or after the server acted, errors inside HTTP 200, forced
429s, truncated or empty bodies, dropped connections, slow answers, status answers that
go backwards, video URLs that 404 once). It shares no code with the client it tests.

In-process::

    from grokimagine_async.simulator import ManualClock, Simulator

    clock = ManualClock()
    sim = Simulator(clock=clock, generation_time=(10, 10), seed=1)
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as http:
        r = await http.post("/v1/generate", json={"prompt": "a fox"},
                            headers={"Authorization": "Bearer test"})
        clock.advance(10)
        ...
    assert sim.stats.tasks_created == 1

Over a socket: ``async with sim.serve() as base_url: ...``, or from the shell
``python -m grokimagine_async.simulator --port 8000 --tier free``.
"""

from ._app import SimulatedDisconnect
from ._clock import ManualClock
from ._config import (
    FAILURE_MESSAGES,
    TIER_LIMITS,
    Phase,
    RateModel,
    ResetFormat,
    RetryAfterFormat,
    SimulatorConfig,
    Tier,
)
from ._faults import Fault, FaultEndpoint, FaultKind
from ._server import serve, serve_in_thread
from ._simulator import Simulator
from ._state import SimTask
from ._stats import RequestRecord, SimulatorStats

__all__ = [
    "FAILURE_MESSAGES",
    "TIER_LIMITS",
    "Fault",
    "FaultEndpoint",
    "FaultKind",
    "ManualClock",
    "Phase",
    "RateModel",
    "RequestRecord",
    "ResetFormat",
    "RetryAfterFormat",
    "SimTask",
    "SimulatedDisconnect",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "Tier",
    "serve",
    "serve_in_thread",
]
