"""The shared limiter against every way a server may count, beside a naive baseline.

    python benchmarks/rate_limit.py [--models fixed sliding ...] [--workloads polling bursts]
                                    [--seconds 10] [--spender 0.3] [--plot PATH]

The simulator runs in a separate process on loopback with time compressed (a
``--period``-second "minute", 2 s by default), once per server model and
workload:

* exact-count servers: ``fixed`` windows, a ``sliding`` window, a token bucket
  (``gcra``) and a ``leaky`` bucket whose burst is the limit, all with
  ``X-RateLimit-*`` headers;
* ``per-second``: per-second enforcement of the plan, a leaky bucket draining at
  limit/period with a burst of 3 and no headers;
* ``approximate``: the two-period counter (the current period plus the
  previous one weighted by how much of it still overlaps) in which refused
  requests count too, no headers;
* ``haproxy``: HAProxy's ``http_req_rate`` stick table as the simulator models
  it (the same counter, its periods starting at the token's first request,
  rounded up; ``benchmarks/haproxy.py`` runs a real HAProxy);
* the same but fixed, sliding, gcra, per-second and approximate beside a
  hidden spender taking ``--spender`` (30%) of the token.

Two workloads, each run by both clients in turn against the same server:

* ``polling``: on a plan of ``--polling-limit`` (200) per period, as many
  tasks call ``get_task`` in a loop for ``--seconds`` (10);
* ``bursts``: on a plan of ``--bursts-limit`` (60) per period, ``--submissions``
  (150) calls under ``asyncio.gather``, each a submission followed by one
  poll; it runs until every call has returned (after ``--bursts-timeout``,
  60 s, the calls left count as errors).

The clients:

* ``grokimagine-async`` with the settings a user gets by default, except
  ``rate_limit=RateLimit(limit, period)`` and its time constants scaled by
  ``period / 60`` (``backoff``, ``poll_interval``);
* the baseline: ``httpx.AsyncClient`` with the same connection pool,
  ``aiolimiter.AsyncLimiter(limit, period)``, and on a 429 a sleep of
  ``Retry-After`` (else a period) before trying again, for ever.

Each run has a token of its own, and its clock starts at a mark the
benchmark logs on the server just before it lets the client go; a polling run
ends at a second mark at its deadline, a bursts run at its last request.
Printed per run, from the server's log: requests sent; 429s and their share;
errors that reached the caller (any exception out of a call); utilisation,
the accepted requests in the run's whole periods from its start over what the
plan allows in them (see ``_metrics.py``); for per-second and approximate
servers, throughput over that server's sustained rate; the most requests sent
in any period-long window; the wall time of the bursts. A plot of each run's
requests per window over time goes to ``docs/rate_limit.png`` when every model
and workload ran (or to ``--plot``).

Targets, for grokimagine-async: on exact-count servers 0 429s and utilisation
>= 0.97; on per-second and approximate servers 429s <= 2% of requests, no
error reaching the caller, throughput >= 0.9 of the server's sustained rate;
beside the hidden spender 429s <= 1% on exact-count servers and <= 2% on the
others; and never more than the limit in a period-long window. Exit code 1 if
any fails.

A whole run takes about 12 minutes; ``--models``, ``--workloads`` and
``--spender 0`` pick a part of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _metrics import max_in_window, throughput, trailing_counts, utilisation, whole_windows

from grokimagine_async import AsyncClient, RateLimit
from grokimagine_async._client import DEFAULT_POOL
from grokimagine_async.simulator import SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent
OURS, BASELINE = "grokimagine-async", "baseline"
MODELS = ("fixed", "sliding", "gcra", "leaky", "per-second", "approximate", "haproxy")
SPENDER_MODELS = ("fixed", "sliding", "gcra", "per-second", "approximate")
EXACT = ("fixed", "sliding", "gcra", "leaky")
WORKLOADS = ("polling", "bursts")
# Tasks never finish during a run: every poll is a plain status call.
FOREVER = (3600.0, 3600.0)
# The simulator, given its config as JSON: the command line may not offer every knob.
SERVE = (
    "import json, sys\n"
    "from grokimagine_async.simulator import Simulator\n"
    "Simulator(**json.loads(sys.argv[1]), seed=1).run('127.0.0.1', int(sys.argv[2]), quiet=True)\n"
)


@dataclass(frozen=True)
class Server:
    """One way of counting, as the simulator is told it."""

    model: str
    background: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.model}+{self.background:.0%}" if self.background else self.model

    @property
    def exact(self) -> bool:
        """Whether it counts exactly what the plan says (and says so in headers)."""
        return self.model in EXACT

    @property
    def rate_model(self) -> str:
        """The simulator's name for it."""
        return "leaky" if self.model == "per-second" else self.model

    def overrides(self, limit: int) -> dict[str, Any]:
        """The simulator's other settings for it."""
        if self.model == "leaky":
            return {"burst": limit}
        if self.model == "per-second":
            return {"burst": 3, "rate_headers": False}
        if self.model in ("approximate", "haproxy"):
            return {"count_rejected": True, "rate_headers": False}
        return {}

    def sustained(self, limit: int, period: float) -> float:
        """Requests per second the server admits for ever: a leaky bucket drains at
        limit/period whatever its burst, and a steady stream keeps the approximate
        counter at rate x period whatever the weights."""
        return limit / period


@dataclass
class Run:
    workload: str
    server: Server
    client: str
    limit: int
    period: float
    #: (seconds since the client was started, HTTP status) of each API request it sent.
    log: list[tuple[float, int]]
    #: Seconds from the client's start to when the server saw the run end.
    end: float
    errors: Counter[str] = field(default_factory=Counter)
    wall: float | None = None

    @property
    def sent(self) -> int:
        return len(self.log)

    @property
    def rate_limited(self) -> int:
        return sum(1 for _, status in self.log if status == 429)

    @property
    def share_limited(self) -> float:
        return self.rate_limited / self.sent if self.sent else math.nan

    @property
    def accepted(self) -> list[float]:
        return [t for t, status in self.log if status == 200]

    @property
    def utilisation(self) -> float:
        return utilisation(self.accepted, self.limit, self.period, start=0.0, end=self.end)

    @property
    def of_sustained(self) -> float:
        rate = throughput(self.accepted, self.period, start=0.0, end=self.end)
        return rate / self.server.sustained(self.limit, self.period)

    @property
    def windows(self) -> int:
        return whole_windows(0.0, self.end, self.period)

    @property
    def max_in_window(self) -> int:
        return max_in_window([t for t, _ in self.log], self.period)

    def line(self) -> str:
        of_sustained = "-" if self.server.exact else f"{self.of_sustained:.3f}"
        wall = "-" if self.wall is None else f"{self.wall:.1f}s"
        return (
            f"{self.workload:<8} {self.server.label:<15} {self.client:<18} {self.sent:>6}"
            f" {self.rate_limited:>5} {self.share_limited:>6.1%} {sum(self.errors.values()):>6}"
            f" {self.windows:>4} {self.utilisation:>6.3f} {of_sustained:>8}"
            f" {self.max_in_window:>7} {wall:>7}"
        )


HEADER = (
    f"{'workload':<8} {'server':<15} {'client':<18} {'sent':>6} {'429s':>5} {'429%':>6}"
    f" {'errors':>6} {'win':>4} {'util':>6} {'of sust':>8} {'max/win':>7} {'wall':>7}"
)


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
    generation: tuple[float, float] = FOREVER,
    **overrides: Any,
) -> AsyncIterator[str]:
    """A simulator in another process on loopback; yields its base URL.

    ``overrides`` are further ``SimulatorConfig`` fields.
    """
    config = {
        "limit": limit,
        "period": period,
        # The server's whole-second headers (Retry-After, a Reset delta) are whole
        # seconds of the time a "minute" of `period` stands for, as on the real clock.
        "time_scale": period / 60,
        "rate_model": model,
        "background_share": background,
        "generation_time": generation,
        **overrides,
    }
    # Built here first, so that a model this simulator lacks is one clear error.
    SimulatorConfig(**config)
    port = free_port()
    with tempfile.TemporaryFile() as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVE,
            json.dumps(config),
            str(port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
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
                            stderr.seek(0)
                            said = stderr.read().decode(errors="replace").strip()
                            raise RuntimeError(f"the simulator did not start: {said}") from None
                        await asyncio.sleep(0.05)
            yield url
        finally:
            with suppress(ProcessLookupError):
                proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=10)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def warm_up(url: str, token: str, period: float) -> str:
    """Reset the simulator and make the task the run polls."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.post("/_sim/reset")
        r = await http.post("/v1/generate", json={"prompt": "benchmark"}, headers=auth(token))
        task_id: str = r.json()["data"]["task_id"]
    # A token's hidden spender starts with its first request: two periods let it settle
    # in, and let this request leave every model's count (the approximate counter still
    # weighs the previous period).
    await asyncio.sleep(2 * period)
    return task_id


async def mark(url: str) -> None:
    """Log an instant on the server's clock: an unknown path is logged, never counted."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.get("/_bench/mark")


def our_client(url: str, token: str, limit: int, period: float) -> AsyncClient:
    # The defaults, with every time constant the client takes scaled to the short "minute".
    scale = period / 60
    return AsyncClient(
        token,
        base_url=url,
        rate_limit=RateLimit(limit, period),
        backoff=0.5 * scale,
        poll_interval=5.0 * scale,
    )


def retry_after(response: httpx.Response, period: float) -> float:
    value = response.headers.get("retry-after")
    if value is None:
        return period
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return period


class Baseline:
    """httpx + aiolimiter + sleep-on-429, as users write it today."""

    def __init__(self, http: httpx.AsyncClient, limit: int, period: float) -> None:
        self.http = http
        self.limiter = AsyncLimiter(limit, period)
        self.period = period

    async def call(self, make: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        while True:
            async with self.limiter:
                response = await make()
            if response.status_code != 429:
                return response
            await asyncio.sleep(retry_after(response, self.period))

    async def submit(self, prompt: str) -> str:
        r = await self.call(lambda: self.http.post("/v1/generate", json={"prompt": prompt}))
        r.raise_for_status()
        task_id: str = r.json()["data"]["task_id"]
        return task_id

    async def get_task(self, task_id: str) -> None:
        r = await self.call(lambda: self.http.get("/v1/status", params={"task_id": task_id}))
        r.raise_for_status()


@asynccontextmanager
async def client_for(
    name: str, url: str, token: str, limit: int, period: float
) -> AsyncIterator[AsyncClient | Baseline]:
    if name == OURS:
        async with our_client(url, token, limit, period) as client:
            yield client
        return
    # The same connection pool as ours, so that the two differ only in how they pace.
    async with httpx.AsyncClient(
        base_url=url, headers=auth(token), timeout=30, limits=DEFAULT_POOL
    ) as http:
        yield Baseline(http, limit, period)


async def polling(
    client: AsyncClient | Baseline, task_id: str, workers: int, seconds: float, errors: Counter[str]
) -> None:
    async def worker() -> None:
        while True:
            try:
                await client.get_task(task_id)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                # An error raised before any await would never let the deadline fire.
                await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds)


async def bursts(
    client: AsyncClient | Baseline, calls: int, timeout: float, errors: Counter[str]
) -> None:
    async def one(i: int) -> None:
        try:
            task_id = await client.submit(prompt=f"video {i}")
            await client.get_task(task_id)
        except Exception as exc:
            errors[type(exc).__name__] += 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(calls)]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        errors[f"unfinished after {timeout:g}s"] += len(pending)


async def measure(
    workload: str, server: Server, client: str, url: str, args: argparse.Namespace
) -> Run:
    limit = args.polling_limit if workload == "polling" else args.bursts_limit
    period = args.period
    # A token of its own: a fresh limiter in this process and a fresh count on the server.
    token = f"bench-{workload}-{server.label}-{client}-{time.monotonic_ns()}"
    task_id = await warm_up(url, token, period)
    errors: Counter[str] = Counter()
    wall: float | None = None
    async with client_for(client, url, token, limit, period) as c:
        await mark(url)
        started = time.perf_counter()
        if workload == "polling":
            await polling(c, task_id, limit, args.seconds, errors)
            await mark(url)
        else:
            await bursts(c, args.submissions, args.bursts_timeout, errors)
            wall = time.perf_counter() - started
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        entries = (await http.get("/_sim/stats")).json()["log"]
    # Each entry is (time, endpoint, status, counted); the marks are the only "other".
    marks = [float(e[0]) for e in entries if e[1] == "other"]
    start = marks[0]
    log = [(float(e[0]) - start, int(e[2])) for e in entries if e[1] != "other" and e[0] >= start]
    # Polling stops at a deadline; bursts end with their last request.
    end = marks[-1] - start if workload == "polling" else (log[-1][0] if log else 0.0)
    return Run(workload, server, client, limit, period, log, end, errors, wall)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    workloads = [w for w in WORKLOADS if any(r.workload == w for r in runs)]
    servers = list(dict.fromkeys(r.server for r in runs))
    fig, axes = plt.subplots(
        len(servers),
        len(workloads),
        figsize=(5.5 * len(workloads), 1.55 * len(servers) + 0.9),
        squeeze=False,
    )
    colours = {OURS: "tab:blue", BASELINE: "tab:orange"}
    for row, server in enumerate(servers):
        for col, workload in enumerate(workloads):
            ax = axes[row][col]
            notes = []
            for run in (r for r in runs if r.server == server and r.workload == workload):
                step = run.period / 20
                grid = [i * step for i in range(int(max(run.end, run.period) / step) + 1)]
                sent = trailing_counts([t for t, _ in run.log], run.period, grid)
                accepted = trailing_counts(run.accepted, run.period, grid)
                colour = colours[run.client]
                ax.plot(grid, sent, color=colour, linewidth=1.2)
                ax.plot(grid, accepted, color=colour, linewidth=0.8, linestyle=":")
                who = "ours" if run.client == OURS else "baseline"
                unfinished = (
                    " (unfinished)" if any(k.startswith("unfinished") for k in run.errors) else ""
                )
                notes.append(f"{who} {run.rate_limited} × 429{unfinished}")
                limit = run.limit
            ax.axhline(limit, color="black", linestyle="--", linewidth=0.8)
            if server.background:
                ax.axhline((1 - server.background) * limit, color="grey", linewidth=0.6)
            ax.set_title(f"{workload}, {server.label}: " + ", ".join(notes), fontsize=8)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(f"per {runs[0].period:g}s", fontsize=7)
    for col in range(len(workloads)):
        axes[-1][col].set_xlabel("seconds since the client started", fontsize=8)
    handles = [
        Line2D([], [], color=colours[OURS], label=f"{OURS}: sent"),
        Line2D([], [], color=colours[BASELINE], label="httpx + aiolimiter: sent"),
        Line2D([], [], color="grey", linestyle=":", label="dotted: accepted"),
        Line2D([], [], color="black", linestyle="--", label="the plan's limit"),
        Line2D([], [], color="grey", label="what the hidden spender leaves"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        "Requests that reached the server in the last period, as the server saw them",
        y=1 - 0.55 / fig.get_figheight(),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.0 / fig.get_figheight()))
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass
class Check:
    name: str
    #: The servers on which it judges our runs.
    applies: Callable[[Server], bool]
    passes: Callable[[Run], bool]
    #: What to show of a run that fails it.
    shows: Callable[[Run], str]


def checks(spender: float) -> list[Check]:
    def share(r: Run) -> str:
        return f"{r.rate_limited} × 429 ({r.share_limited:.1%})"

    return [
        Check(
            "exact-count servers (fixed, sliding, gcra, leaky): 0 429s",
            lambda s: s.exact and not s.background,
            lambda r: r.rate_limited == 0,
            share,
        ),
        Check(
            "exact-count servers: utilisation >= 0.97",
            lambda s: s.exact and not s.background,
            lambda r: r.utilisation >= 0.97,
            lambda r: f"{r.utilisation:.3f}",
        ),
        Check(
            "per-second, approximate and haproxy: 429s <= 2% of requests",
            lambda s: not s.exact and not s.background,
            lambda r: r.rate_limited <= 0.02 * r.sent,
            share,
        ),
        Check(
            "per-second, approximate and haproxy: no error reached the caller",
            lambda s: not s.exact and not s.background,
            lambda r: not r.errors,
            lambda r: ", ".join(f"{n} {k}" for k, n in r.errors.most_common()),
        ),
        Check(
            "per-second, approximate and haproxy: throughput >= 0.9 of the server's sustained rate",
            lambda s: not s.exact and not s.background,
            lambda r: r.of_sustained >= 0.9,
            lambda r: f"{r.of_sustained:.3f}",
        ),
        Check(
            f"hidden spender at {spender:.0%}: 429s <= 1% on fixed, sliding, gcra",
            lambda s: s.exact and bool(s.background),
            lambda r: r.rate_limited <= 0.01 * r.sent,
            share,
        ),
        Check(
            f"hidden spender at {spender:.0%}: 429s <= 2% on per-second and approximate",
            lambda s: not s.exact and bool(s.background),
            lambda r: r.rate_limited <= 0.02 * r.sent,
            share,
        ),
        Check(
            "never more than the limit sent in a period-long window (the documented guarantee)",
            lambda s: True,
            lambda r: r.max_in_window <= r.limit,
            lambda r: f"{r.max_in_window} of {r.limit}",
        ),
    ]


def report(runs: list[Run], missing: Sequence[tuple[str, Server]], spender: float) -> bool:
    """Print a line per target; whether all passed. A server that could not run fails them."""
    ours = [r for r in runs if r.client == OURS]
    ok = True
    for check in checks(spender):
        judged = [r for r in ours if check.applies(r.server)]
        failed = [
            f"{r.workload}/{r.server.label} {check.shows(r)}" for r in judged if not check.passes(r)
        ]
        failed += [f"{w}/{s.label} not run" for w, s in missing if check.applies(s)]
        if not judged and not failed:
            print(f"----  {check.name} (not run)")
            continue
        ok = ok and not failed
        detail = f": {'; '.join(failed)}" if failed else ""
        print(f"{'FAIL' if failed else 'PASS'}  {check.name}{detail}")
    return ok


def servers(args: argparse.Namespace) -> list[Server]:
    chosen = [Server(m) for m in args.models]
    if args.spender > 0:
        chosen += [Server(m, args.spender) for m in args.models if m in SPENDER_MODELS]
    return chosen


async def main(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    missing: list[tuple[str, Server]] = []
    print(
        f"a {args.period:g}s period; polling: limit {args.polling_limit} per period, "
        f"{args.polling_limit} concurrent pollers a client, {args.seconds:g}s a run; "
        f"bursts: limit {args.bursts_limit} per period, {args.submissions} submissions "
        "each followed by one poll, under asyncio.gather"
    )
    print(
        "win: whole periods measured; util: accepted in them / the plan's allowance; "
        "of sust: throughput / the server's sustained rate; max/win: most sent in any "
        "period-long window"
    )
    print(HEADER)
    for workload in args.workloads:
        limit = args.polling_limit if workload == "polling" else args.bursts_limit
        for server in servers(args):
            async with AsyncExitStack() as stack:
                try:
                    url = await stack.enter_async_context(
                        simulator(
                            server.rate_model,
                            server.background,
                            limit,
                            args.period,
                            **server.overrides(limit),
                        )
                    )
                except (TypeError, ValueError, RuntimeError) as exc:
                    missing.append((workload, server))
                    print(
                        f"{workload:<8} {server.label:<15} cannot run this server: {exc}",
                        flush=True,
                    )
                    continue
                for client in (OURS, BASELINE):
                    run = await measure(workload, server, client, url, args)
                    runs.append(run)
                    print(run.line(), flush=True)
                    if run.errors:
                        said = ", ".join(f"{n} {k}" for k, n in run.errors.most_common())
                        print(f"{'':<8} {'':<15} {'':<18} errors: {said}", flush=True)
    ok = report(runs, missing, args.spender)
    everything = (
        set(args.models) == set(MODELS)
        and set(args.workloads) == set(WORKLOADS)
        and args.spender > 0
    )
    path = args.plot or (ROOT / "docs" / "rate_limit.png" if everything and not missing else None)
    if path is not None and runs:
        plot(runs, path)
        print(f"plot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=float, default=2.0, help="the compressed 'minute'")
    parser.add_argument(
        "--polling-limit", type=int, default=200, help="the plan, and pollers, of polling runs"
    )
    parser.add_argument("--bursts-limit", type=int, default=60, help="the plan of bursts runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a polling run")
    parser.add_argument("--submissions", type=int, default=150, help="calls in a bursts run")
    parser.add_argument(
        "--bursts-timeout", type=float, default=60.0, help="when a bursts run gives up"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument(
        "--spender", type=float, default=0.3, help="the hidden spender's share (0: no such runs)"
    )
    parser.add_argument(
        "--plot", type=Path, help="where the plot goes (default docs/rate_limit.png on full runs)"
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
