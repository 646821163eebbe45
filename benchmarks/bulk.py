"""generate_many against the way users write bulk generation today.

    python benchmarks/bulk.py [--videos 600] [--few 20] [--watch 10000]

The simulator runs in another process on loopback with a compressed window of
60 requests per 2 s and generations spread 2-8 s. In one run:

* rate-bound: ``--videos`` videos. The lower bound on wall time: every video
  needs a submit and at least one poll, ``2N`` requests at the plan's rate less
  the first window's burst.
* latency-bound: ``--few`` videos, where the budget is not the limit.

Each is run by ``AsyncClient.generate_many`` and by a baseline: ``asyncio.gather``
over submit-then-poll-every-N-seconds with ``aiolimiter.AsyncLimiter``. Printed
for each: wall time and its ratio to the lower bound, polls per task, 429s, the
p50/p95 delay between a video finishing on the server and the caller getting
it, and when the first video reached the caller (with how many submissions
had been sent by then). Last, the memory that watching ``--watch`` task ids at
once takes, for the scheduler and for one sleeping coroutine a task.

Targets: rate-bound wall time <= 1.1 x the lower bound, the first video before
half the submissions are sent; latency-bound median delay <= 10% of the median
generation time; 0 429s; 10,000 watched tasks in <= 30 MB; ahead of the
baseline on wall time and 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rate_limit import simulator

from grokimagine_async import AsyncClient, OutcomeStatus, RateLimit
from grokimagine_async._client import DEFAULT_POOL

LIMIT, PERIOD = 60, 2.0
GEN = (2.0, 8.0)
TOKEN = "bench-token"
BASELINE_EVERY = 2.0


@dataclass
class Result:
    name: str
    videos: int
    wall: float
    lower_bound: float
    polls_per_task: float
    rate_limited: int
    delays: list[float]
    first_video: float
    submitted_at_first: int

    def line(self) -> str:
        p50 = statistics.median(self.delays) if self.delays else float("nan")
        p95 = statistics.quantiles(self.delays, n=20)[18] if len(self.delays) > 1 else p50
        return (
            f"{self.name:<18} {self.videos:>5} {self.wall:>7.1f}s"
            f" {self.wall / self.lower_bound:>6.2f}"
            f" {self.polls_per_task:>6.2f} {self.rate_limited:>5} {p50:>6.2f}s {p95:>6.2f}s"
            f" {self.first_video:>6.1f}s {self.submitted_at_first:>5}/{self.videos}"
        )


def lower_bound(n: int) -> float:
    rate = LIMIT / PERIOD
    requests = (2 * n - LIMIT) / rate
    # The last submission can't go before the others; then its video must generate.
    submissions = max(0.0, (n - LIMIT) / rate) + GEN[1]
    return max(requests, submissions, GEN[0])


async def server_view(url: str, skip: int) -> tuple[dict[str, float], int, int]:
    async with httpx.AsyncClient(timeout=60) as http:
        tasks = (await http.get(f"{url}/_sim/tasks")).json()["tasks"]
        stats = (await http.get(f"{url}/_sim/stats")).json()
    log = stats["log"][skip:]
    polls = sum(1 for entry in log if entry[1] == "status")
    limited = sum(1 for entry in log if entry[2] == 429)
    return {t["task_id"]: t["finished_at"] for t in tasks}, polls, limited


async def fresh(url: str) -> int:
    async with httpx.AsyncClient(timeout=60) as http:
        await http.post(f"{url}/_sim/reset")
        return len((await http.get(f"{url}/_sim/stats")).json()["log"])


async def run_ours(url: str, n: int) -> Result:
    skip = await fresh(url)
    got: dict[str, float] = {}
    first: tuple[float, int] | None = None
    start = time.monotonic()
    # Default settings but the compressed window: the poller learns the generations'
    # length, whatever the time scale, from its default first guess of 5 s.
    async with AsyncClient(
        TOKEN, base_url=url, rate_limit=RateLimit(LIMIT, PERIOD), backoff=0.5 * PERIOD / 60
    ) as client:
        pipeline = client.generate_many({"prompt": f"video {i}"} for i in range(n))
        async with pipeline as results:
            async for outcome in results:
                now = time.monotonic()
                if outcome.status is OutcomeStatus.COMPLETED and outcome.task_id:
                    got[outcome.task_id] = now
                    if first is None:
                        first = (now - start, pipeline.progress.spent_credits // 40)
        wall = time.monotonic() - start
    return await summarise("grokimagine-async", url, n, skip, got, wall, first, n)


async def run_baseline(url: str, n: int) -> Result:
    skip = await fresh(url)
    got: dict[str, float] = {}
    limiter = AsyncLimiter(LIMIT, PERIOD)
    sent = 0
    first: tuple[float, int] | None = None
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=DEFAULT_POOL
    ) as http:

        async def call(make: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
            while True:
                async with limiter:
                    response = await make()
                if response.status_code != 429:
                    return response
                await asyncio.sleep(BASELINE_EVERY)

        async def one(i: int) -> None:
            nonlocal sent, first
            r = await call(lambda: http.post("/v1/generate", json={"prompt": f"video {i}"}))
            sent += 1
            task_id = r.json()["data"]["task_id"]
            while True:
                await asyncio.sleep(BASELINE_EVERY)
                r = await call(lambda: http.get("/v1/status", params={"task_id": task_id}))
                if r.json()["data"]["status"] in ("completed", "failed"):
                    now = time.monotonic()
                    got[task_id] = now
                    if first is None:
                        first = (now - start, sent)
                    return

        await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.monotonic() - start
    return await summarise("baseline", url, n, skip, got, wall, first, sent)


async def summarise(
    name: str,
    url: str,
    n: int,
    skip: int,
    got: dict[str, float],
    wall: float,
    first: tuple[float, int] | None,
    submitted: int,
) -> Result:
    finished, polls, limited = await server_view(url, skip)
    delays = [got[t] - finished[t] for t in got if t in finished]
    return Result(
        name=name,
        videos=n,
        wall=wall,
        lower_bound=lower_bound(n),
        polls_per_task=polls / n,
        rate_limited=limited,
        delays=delays,
        first_video=first[0] if first else float("nan"),
        submitted_at_first=first[1] if first else 0,
    )


async def memory(url: str, n: int) -> tuple[float, float]:
    """MB that watching ``n`` task ids takes: our scheduler, and a coroutine a task."""
    ids = [f"task_{i:012d}" for i in range(n)]
    async with AsyncClient(
        TOKEN, base_url=url, rate_limit=RateLimit(LIMIT, PERIOD), poll_interval=1.0
    ) as client:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        watch = client.watch(ids, timeout=1.0)
        try:
            async for _ in watch:
                pass
        except Exception:  # noqa: S110 - the deadline ends it; only the memory matters here
            pass
        ours = (tracemalloc.get_traced_memory()[1] - base) / 1e6
        tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    async def sleeper(task_id: str) -> None:
        while True:  # noqa: ASYNC110 - the baseline's poll loop, less the poll
            await asyncio.sleep(BASELINE_EVERY)

    tasks = [asyncio.ensure_future(sleeper(i)) for i in ids]
    await asyncio.sleep(1.0)
    theirs = (tracemalloc.get_traced_memory()[1] - base) / 1e6
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tracemalloc.stop()
    return ours, theirs


async def main(args: argparse.Namespace) -> int:
    print(
        f"limit {LIMIT} per {PERIOD:g}s, generations {GEN[0]:g}-{GEN[1]:g}s, "
        f"baseline polls every {BASELINE_EVERY:g}s"
    )
    print(
        f"{'client':<18} {'videos':>5} {'wall':>8} {'/bound':>6} {'polls':>6} {'429s':>5}"
        f" {'p50 dly':>7} {'p95 dly':>7} {'first':>7} {'sent then':>9}"
    )
    results: list[Result] = []
    async with simulator("sliding", 0.0, LIMIT, PERIOD, generation=GEN) as url:
        for n in (args.videos, args.few):
            for runner in (run_ours, run_baseline):
                result = await runner(url, n)
                results.append(result)
                print(result.line(), flush=True)
    async with simulator("sliding", 0.0, 10**9, PERIOD, generation=GEN) as url:
        ours_mb, theirs_mb = await memory(url, args.watch)
    print(
        f"watching {args.watch} tasks: grokimagine-async {ours_mb:.1f} MB, "
        f"a coroutine a task {theirs_mb:.1f} MB"
    )
    ours_rate, base_rate, ours_few, base_few = results
    median_gen = sum(GEN) / 2
    checks = {
        "rate-bound wall <= 1.1 x lower bound": ours_rate.wall <= 1.1 * ours_rate.lower_bound,
        "first video before half the submissions": ours_rate.submitted_at_first < args.videos / 2,
        "latency-bound median delay <= 10% of median generation": bool(ours_few.delays)
        and statistics.median(ours_few.delays) <= 0.1 * median_gen,
        "0 429s": ours_rate.rate_limited == 0 and ours_few.rate_limited == 0,
        f"{args.watch} watched tasks in <= 30 MB": ours_mb <= 30,
        "ahead of the baseline on wall time": ours_rate.wall < base_rate.wall
        and ours_few.wall <= base_few.wall,
        "ahead of the baseline on 429s": ours_rate.rate_limited <= base_rate.rate_limited,
    }
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=600, help="the rate-bound batch")
    parser.add_argument("--few", type=int, default=20, help="the latency-bound batch")
    parser.add_argument("--watch", type=int, default=10_000, help="tasks watched at once")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
