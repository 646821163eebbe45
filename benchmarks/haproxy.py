"""The client behind a real HAProxy that limits each token with a stick table.

    python benchmarks/haproxy.py [--limit 200] [--period 2] [--seconds 10]
                                 [--workloads polling bursts]

Needs ``haproxy`` on the PATH (Debian's package); says so and exits 0 without it.

HAProxy listens on loopback in front of the simulator (which refuses nothing
and whose ``X-RateLimit-*`` headers are left out, as a gateway that limits
says nothing of its count). It tracks each ``Authorization`` header in a
stick table storing ``http_req_rate(period)`` and refuses with 429 while that
rate, the request itself counted, is above the plan. Every request is
tracked before the check, so refused ones count too.

HAProxy's rate is two fixed periods, the previous one weighted by the part of
the period not yet elapsed plus the current one, rounded up; its periods start
at the token's first request, not at a clock's whole multiple. The
simulator's ``approximate`` model with ``count_rejected`` is the same counter
with windows aligned to its start: ``rate_limit.py``'s row for it is printed
beside this one, for the same workload, to show where the two part.

The client is ``grokimagine-async`` as in ``rate_limit.py``: the settings a
user gets by default, told the plan, its time constants scaled to the short
period. Printed per run: requests that reached the API (accepted), 429s from
HAProxy (counted by the client's transport), their share, errors that reached
the caller, utilisation (accepted in the run's whole periods over the plan's
allowance, as in ``rate_limit.py``), the most accepted in any period-long
window.

Targets (issue 24): utilisation >= 0.9, 429s <= 2% of requests, no error to
the caller. Exit code 1 if any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _metrics import max_in_window, utilisation
from rate_limit import bursts, free_port, mark, polling, simulator, warm_up

from grokimagine_async import AsyncClient, RateLimit

CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend api
    bind 127.0.0.1:{port}
    stick-table type string len 200 size 10k expire {expire}ms store http_req_rate({period_ms}ms)
    http-request track-sc0 req.hdr(Authorization)
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {limit} }}
    default_backend api
backend api
    server sim 127.0.0.1:{sim_port}
"""


async def haproxy(
    sim_url: str, limit: int, period: float
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    sim_port = int(sim_url.rsplit(":", 1)[1])
    text = CONFIG.format(
        port=port,
        sim_port=sim_port,
        limit=limit,
        period_ms=round(period * 1000),
        expire=round(4 * period * 1000),
    )
    config = Path(tempfile.mkdtemp()) / "haproxy.cfg"
    config.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        "haproxy", "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 10
        while True:
            try:
                await http.get(f"{url}/_bench/up")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start") from None
                await asyncio.sleep(0.05)
    return proc, url


async def run(workload: str, args: argparse.Namespace) -> bool:
    limit, period = args.limit, args.period
    async with simulator("sliding", 0.0, 100 * limit, period, rate_headers=False) as sim_url:
        proc, url = await haproxy(sim_url, limit, period)
        try:
            token = f"bench-haproxy-{workload}-{time.monotonic_ns()}"
            task_id = await warm_up(sim_url, token, period)
            refused = 0

            async def count(response: httpx.Response) -> None:
                nonlocal refused
                refused += response.status_code == 429

            errors: Counter[str] = Counter()
            scale = period / 60
            http = httpx.AsyncClient(base_url=url, event_hooks={"response": [count]})
            async with (
                http,
                AsyncClient(
                    token,
                    base_url=url,
                    http_client=http,
                    rate_limit=RateLimit(limit, period),
                    backoff=0.5 * scale,
                    poll_interval=5.0 * scale,
                ) as client,
            ):
                await mark(sim_url)
                if workload == "polling":
                    await polling(client, task_id, limit, args.seconds, errors)
                else:
                    await bursts(client, args.submissions, 60.0, errors)
                await mark(sim_url)
            async with httpx.AsyncClient(base_url=sim_url, timeout=60) as plain:
                entries = (await plain.get("/_sim/stats")).json()["log"]
        finally:
            proc.terminate()
            await proc.wait()
    marks = [float(e[0]) for e in entries if e[1] == "other" and e[0] > 0]
    start, end = marks[-2], marks[-1]
    accepted = [float(e[0]) - start for e in entries if e[1] != "other" and start <= e[0] <= end]
    sent = len(accepted) + refused
    util = utilisation(accepted, limit, period, start=0.0, end=end - start)
    share = refused / sent if sent else 0.0
    most = max_in_window(accepted, period)
    print(
        f"{workload:<8} haproxy http_req_rate  accepted {len(accepted):5d}  429s {refused:4d} "
        f"({share:5.1%})  errors {sum(errors.values())}  util {util:5.3f}  max/win {most}"
    )
    checks = [
        (f"{workload}: utilisation >= 0.9", util >= 0.9, f"{util:.3f}"),
        (f"{workload}: 429s <= 2%", share <= 0.02, f"{share:.1%}"),
        (f"{workload}: no error to the caller", not errors, str(dict(errors))),
    ]
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    return all(ok for _, ok, _ in checks)


async def main(args: argparse.Namespace) -> int:
    ok = True
    for workload in args.workloads:
        ok = await run(workload, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="the plan's requests a period")
    parser.add_argument("--period", type=float, default=2.0, help="the compressed 'minute'")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a polling run")
    parser.add_argument("--submissions", type=int, default=150, help="calls in a bursts run")
    parser.add_argument(
        "--workloads", nargs="+", default=["polling", "bursts"], choices=["polling", "bursts"]
    )
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        print("haproxy is not installed (apt-get install haproxy): nothing measured")
        sys.exit(0)
    sys.exit(asyncio.run(main(args)))
