"""The shared limiter against a baseline written the way users write it today.

    python benchmarks/rate_limit.py [--limit 200] [--period 2] [--seconds 20]

Runs the simulator in a separate process on loopback, once per way of counting
(fixed window, sliding window, token bucket), alone and with an invisible
second client spending 30% of the token. Against each, in turn, run:

* ``grokimagine-async``: ``AsyncClient.get_task`` from many concurrent tasks;
* the baseline: ``httpx.AsyncClient`` + ``aiolimiter.AsyncLimiter(limit, period)``
  + ``asyncio.gather``, the same polls, no other rate logic (and the same
  connection pool as ours: httpx's default keeps 20 connections alive, and
  reconnecting throttled it below the limit on these machines).

Each keeps ``limit`` polls going for ``--seconds`` with time compressed (a
``period``-second "minute"). Printed per run: requests sent, 429s,
utilisation in steady state (requests accepted after the first period ÷ what
the limit allows in that time), the largest number of requests that reached
the server in any period-long window, and the p99 wait in the limiter. A plot
of each client's requests per window over time against the limit goes to
``docs/rate_limit.png``.

Targets: 0 429s on every model for grokimagine-async, utilisation >= 0.97, and
with the second client spending 30%, 429s <= 1% of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from grokimagine_async import AsyncClient, RateLimit, SlidingWindowLimiter, Slot
from grokimagine_async._client import DEFAULT_POOL
from grokimagine_async._limiter import RateLimitStatus

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
MODELS = ("fixed", "sliding", "gcra")


@dataclass
class Run:
    client: str
    model: str
    background: float
    sent: int
    rate_limited: int
    utilisation: float
    max_in_window: int
    p99_wait_ms: float
    #: (server time from start, status) of every visible request.
    log: list[tuple[float, int]]


class TimedLimiter:
    """Our limiter, recording how long each request waited for its slot."""

    def __init__(self, inner: SlidingWindowLimiter, waits: list[float]) -> None:
        self.inner = inner
        self.waits = waits

    @property
    def rate(self) -> RateLimit:
        return self.inner.rate

    def set_rate(self, rate: RateLimit) -> None:
        self.inner.set_rate(rate)

    def status(self) -> RateLimitStatus:
        return self.inner.status()

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        return self._slot()

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[Slot]:
        started = time.perf_counter()
        async with self.inner.slot() as slot:
            self.waits.append(time.perf_counter() - started)
            yield slot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def simulator(
    model: str,
    background: float,
    limit: int,
    period: float,
    generation: tuple[float, float] = (3600.0, 3600.0),
) -> AsyncIterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "grokimagine_async.simulator",
        "--port",
        str(port),
        "--limit",
        str(limit),
        "--period",
        str(period),
        "--rate-model",
        model,
        "--background-share",
        str(background),
        "--generation-time",
        str(generation[0]),
        str(generation[1]),
        "--seed",
        "1",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    (await http.get(f"{url}/_sim/stats")).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.returncode is not None:
                        raise RuntimeError("the simulator did not start") from None
                    await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def fresh_task(http: httpx.AsyncClient, url: str, period: float) -> str:
    """Reset the simulator, let the second spender fill its share, make a task."""
    await http.post(f"{url}/_sim/reset")
    # The second spender has been at it for a while when the benchmark starts.
    await asyncio.sleep(period * 1.5)
    r = await http.post(
        f"{url}/v1/generate",
        json={"prompt": "benchmark"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    task_id: str = r.json()["data"]["task_id"]
    # That request holds a slot; start with a clean window.
    await asyncio.sleep(period * 1.01)
    return task_id


async def run_ours(
    url: str, task_id: str, limit: int, period: float, seconds: float
) -> list[float]:
    waits: list[float] = []
    limiter = TimedLimiter(SlidingWindowLimiter(RateLimit(limit, period)), waits)
    async with AsyncClient(TOKEN, base_url=url, limiter=limiter, max_retries=10) as client:

        async def worker() -> None:
            while True:
                await client.get_task(task_id)

        await run_for(seconds, [worker for _ in range(limit)])
    return waits


async def run_baseline(
    url: str, task_id: str, limit: int, period: float, seconds: float
) -> list[float]:
    waits: list[float] = []
    limiter = AsyncLimiter(limit, period)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # The same connection pool as ours, so that the two differ only in how they pace.
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=30, limits=DEFAULT_POOL
    ) as http:

        async def worker() -> None:
            while True:
                started = time.perf_counter()
                async with limiter:
                    waits.append(time.perf_counter() - started)
                    await http.get("/v1/status", params={"task_id": task_id})

        await run_for(seconds, [worker for _ in range(limit)])
    return waits


async def run_for(seconds: float, workers: Sequence[Callable[[], Any]]) -> None:
    tasks = [asyncio.ensure_future(w()) for w in workers]
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds)


async def measure(
    name: str, model: str, background: float, url: str, args: argparse.Namespace
) -> Run:
    limit, period = args.limit, args.period
    async with httpx.AsyncClient(timeout=30) as http:
        task_id = await fresh_task(http, url, period)
        skip = len((await http.get(f"{url}/_sim/stats")).json()["log"])
        runner = run_ours if name == "grokimagine-async" else run_baseline
        waits = await runner(url, task_id, limit, period, args.seconds)
        stats = (await http.get(f"{url}/_sim/stats")).json()
    # Each entry is (time, endpoint, status, counted).
    entries = stats["log"][skip:]
    start = entries[0][0]
    log = [(float(e[0]) - start, int(e[2])) for e in entries]
    end = log[-1][0]
    accepted = sum(1 for t, status in log if status == 200 and t >= period)
    allowance = limit * (end - period) / period
    return Run(
        client=name,
        model=model,
        background=background,
        sent=len(log),
        rate_limited=sum(1 for _, status in log if status == 429),
        utilisation=accepted / allowance,
        max_in_window=max_in_window([t for t, _ in log], period),
        p99_wait_ms=1000 * statistics.quantiles(waits, n=100)[98] if len(waits) > 1 else 0.0,
        log=log,
    )


def max_in_window(times: list[float], period: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def plot(runs: list[Run], limit: int, period: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alone = [r for r in runs if r.background == 0]
    fig, axes = plt.subplots(len(MODELS), 1, figsize=(9, 8), sharex=True)
    for ax, model in zip(axes, MODELS, strict=True):
        for run in (r for r in alone if r.model == model):
            times = [t for t, _ in run.log]
            step = period / 20
            xs, ys, lo = [], [], 0
            grid = [i * step for i in range(int(times[-1] / step) + 1)]
            for x in grid:
                hi = next((i for i, t in enumerate(times) if t > x), len(times))
                while lo < hi and times[lo] <= x - period:
                    lo += 1
                xs.append(x)
                ys.append(hi - lo)
            ax.plot(xs, ys, label=f"{run.client} ({run.rate_limited} answered 429)")
        ax.axhline(limit, color="black", linestyle="--", label=f"limit: {limit} per {period:g}s")
        ax.set_title(f"server counting in {model} windows" if model != "gcra" else "token bucket")
        ax.set_ylabel(f"requests in the last {period:g}s")
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.suptitle("Requests reaching the server per sliding window, as the server saw them")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    print(
        f"limit {args.limit} per {args.period:g}s, {args.seconds:g}s a run, "
        f"{args.limit} concurrent pollers per client"
    )
    header = (
        f"{'client':<18} {'model':<8} {'2nd':>4} {'sent':>6} {'429s':>5} {'429%':>6} "
        f"{'util':>6} {'max/window':>10} {'p99 wait':>9}"
    )
    print(header)
    for background in args.backgrounds:
        for model in args.models:
            async with simulator(model, background, args.limit, args.period) as url:
                for name in ("grokimagine-async", "baseline"):
                    run = await measure(name, model, background, url, args)
                    runs.append(run)
                    print(
                        f"{run.client:<18} {run.model:<8} {run.background:>4.0%} {run.sent:>6} "
                        f"{run.rate_limited:>5} {run.rate_limited / run.sent:>6.1%} "
                        f"{run.utilisation:>6.3f} {run.max_in_window:>10} "
                        f"{run.p99_wait_ms:>7.0f}ms",
                        flush=True,
                    )
    ours = [r for r in runs if r.client == "grokimagine-async"]
    alone = [r for r in ours if r.background == 0]
    shared = [r for r in ours if r.background > 0]
    checks = {
        "0 429s on every model, alone": all(r.rate_limited == 0 for r in alone),
        "utilisation >= 0.97, alone": all(r.utilisation >= 0.97 for r in alone),
        "never more than the limit in a window, alone": all(
            r.max_in_window <= args.limit for r in alone
        ),
        "429s <= 1% beside a 30% spender": all(r.rate_limited <= 0.01 * r.sent for r in shared),
    }
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    if args.plot and len(args.models) == len(MODELS) and 0.0 in args.backgrounds:
        plot(runs, args.limit, args.period, args.plot)
        print(
            f"plot: {args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot}"
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="requests per period")
    parser.add_argument("--period", type=float, default=2.0, help="the compressed 'minute'")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "rate_limit.png")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--backgrounds", nargs="+", type=float, default=[0.0, 0.3], help="second spender's share"
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
