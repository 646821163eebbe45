"""A million prompts: streamed input, bounded memory, a quick dry run.

    python benchmarks/million.py [--prompts 1000000] [--submissions 100000]

Three measurements, each in a process of its own:

* ``dry-run``: ``grokimagine batch FILE --dry-run`` over a text file of
  ``--prompts`` lines (written first): every line read and checked, the cost
  and the least time estimated, nothing sent. Wall time and peak RSS.
* ``stream``: ``generate_many`` over a generator of ``--prompts`` requests,
  with a journal on disk and the default settings, against an API that answers
  at once (an in-process ``httpx.MockTransport``: a submit gets a task id, a
  poll finds the task done, and the plan, a million requests a second, is far
  above what the client can send), so that the client's own memory and
  start-up are what is measured, not a server's or the network's. (The
  limiter keeps a slot for each request for one period of the plan: with a
  plan counted a minute, that is up to the plan's size in slots.) Printed: seconds from the call to
  the first ``POST``, and the process's RSS every tenth of the way to
  ``--submissions`` submissions, after which the batch is stopped.

Targets (issue 12): the dry run in <= 60 s; the first submission within 2 s
of the call, whatever the input's size; RSS <= 300 MB through the first
100,000 submissions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-million-token"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """The process's resident memory now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as out:
        for i in range(n):
            out.write(f"a short film of a red fox, number {i}, trotting through snow at dawn\n")


def dry_run(path: Path) -> dict[str, Any]:
    env = {**os.environ, "GROKIMAGINE_API_KEY": TOKEN}
    command = [
        sys.executable,
        "-c",
        "from grokimagine_async._cli import main; main()",
        "batch",
        str(path),
        "--dry-run",
    ]
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'wall': wall, 'peak': peak, 'code': p.returncode,"
        " 'out': p.stderr[-400:]}))\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-c", code, *command],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=path.parent,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def stream(n: int, stop_after: int) -> dict[str, Any]:
    from grokimagine_async import AsyncClient, RateLimit

    posts = 0
    first_post: float | None = None

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal posts, first_post
        if request.method == "POST":
            posts += 1
            if first_post is None:
                first_post = time.perf_counter()
            return httpx.Response(200, json={"task_id": f"task-{posts}"})
        task_id = request.url.path.rsplit("/", 1)[-1]
        done = {"task_id": task_id, "status": "completed", "response": ["https://cdn.test/v.mp4"]}
        return httpx.Response(200, json=done)

    def prompts() -> Iterator[dict[str, str]]:
        for i in range(n):
            yield {
                "prompt": f"a short film of a red fox, number {i}, trotting through snow at dawn"
            }

    marks: list[tuple[int, float]] = [(0, rss_mb())]
    step = max(1, stop_after // 10)
    outcomes = 0
    with tempfile.TemporaryDirectory() as folder:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        async with AsyncClient(
            TOKEN,
            base_url="https://api.test",
            http_client=http,
            rate_limit=RateLimit(1_000_000, 1.0),
        ) as client:
            called = time.perf_counter()
            async with client.generate_many(prompts(), journal=Path(folder) / "b.db") as results:
                async for _ in results:
                    outcomes += 1
                    if posts >= marks[-1][0] + step:
                        marks.append((posts, rss_mb()))
                    if posts >= stop_after:
                        results.stop_submitting()
                        break
            ended = time.perf_counter()
        await http.aclose()
    assert first_post is not None
    return {
        "first_post": first_post - called,
        "marks": marks,
        "posts": posts,
        "outcomes": outcomes,
        "seconds": ended - called,
        "peak": peak_mb(),
    }


def main(args: argparse.Namespace) -> int:
    if args.row == "stream":
        print(json.dumps(asyncio.run(stream(args.prompts, args.submissions))))
        return 0
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.txt"
        write_prompts(path, args.prompts)
        size = path.stat().st_size / 2**20
        dry = dry_run(path)
    print(
        f"dry-run   {args.prompts:,} lines ({size:.0f} MB): {dry['wall']:.1f} s, "
        f"peak RSS {dry['peak']:.0f} MB, exit {dry['code']}"
    )
    checks.append(
        (
            f"dry run of {args.prompts:,} prompts <= 60 s: {dry['wall']:.1f} s",
            dry["code"] == 0 and dry["wall"] <= 60,
        )
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            __file__,
            "--row",
            "stream",
            "--prompts",
            str(args.prompts),
            "--submissions",
            str(args.submissions),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    s = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"stream    {args.prompts:,} prompts from a generator, journal on: first POST "
        f"{s['first_post']:.3f} s after the call; {s['posts']:,} submissions, "
        f"{s['outcomes']:,} outcomes in {s['seconds']:.0f} s"
    )
    print(
        "          RSS by submissions: "
        + ", ".join(f"{posts:,}: {mb:.0f} MB" for posts, mb in s["marks"])
    )
    worst = max(mb for _, mb in s["marks"])
    checks.append(
        (
            f"first submission within 2 s of the call: {s['first_post']:.3f} s",
            s["first_post"] <= 2.0,
        )
    )
    checks.append(
        (
            f"RSS <= 300 MB through {args.submissions:,} submissions: {worst:.0f} MB "
            f"(peak {s['peak']:.0f} MB)",
            s["peak"] <= 300,
        )
    )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--submissions", type=int, default=100_000)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    sys.exit(main(parser.parse_args()))
