"""A batch of videos against the built-in simulator, downloaded to ./videos.

    python3 scripts/dev.py demo          (or: python examples/demo.py [--out DIR])

The simulator runs in this process on a loopback port, with time compressed:
a rate-limit "minute" lasts 2 seconds and a video takes 2 to 6 seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio

from grokimagine_async import AsyncClient, GrokImagineError, RateLimit
from grokimagine_async.simulator import Simulator

PROMPTS = [
    ("a red fox trotting through fresh snow at dawn", "normal", "3:2"),
    ("a paper boat drifting down a rain-soaked street", "fun", "1:1"),
    ("timelapse of a city skyline from dusk to night", "normal", "3:2"),
    ("a hummingbird hovering over a purple flower, slow motion", "normal", "2:3"),
    ("an astronaut planting a flag made of spaghetti", "fun", "1:1"),
    ("waves crashing on black volcanic sand", "normal", "3:2"),
    ("a cat conducting an orchestra of kittens", "fun", "2:3"),
    ("northern lights over a frozen lake", "normal", "3:2"),
    ("a steam train crossing a stone viaduct in autumn", "normal", "3:2"),
    ("a robot learning to juggle oranges", "fun", "1:1"),
]


async def main(out: Path) -> int:
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    sim = Simulator(limit=60, period=2.0, generation_time=(2.0, 6.0), failure_rate=0.1, seed=3)
    started = time.monotonic()
    failed = 0

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {line}", flush=True)

    async with (
        sim.serve() as url,
        AsyncClient(
            "demo-token", base_url=url, rate_limit=RateLimit(60, 2.0), poll_interval=0.5
        ) as client,
    ):
        say(f"simulator on {url}; {len(PROMPTS)} videos, 40 credits each")

        async def one(prompt: str, mode: str, ratio: str) -> None:
            nonlocal failed
            try:
                task_id = await client.submit(prompt=prompt, mode=mode, ratio=ratio)
                say(f"submitted {task_id}: {prompt!r}")
                task = await client.wait(task_id, timeout=60)
                for path in await client.download(task, out):
                    say(f"completed {task_id} -> {path}  ({task.videos[0]})")
            except GrokImagineError as exc:
                failed += 1
                say(f"FAILED {prompt!r}: {exc}")

        async with anyio.create_task_group() as tg:
            for prompt, mode, ratio in PROMPTS:
                tg.start_soon(one, prompt, mode, ratio)

    stats = sim.stats
    say(
        f"done: {len(PROMPTS) - failed} videos in {out}/, {failed} failed; "
        f"{stats.requests} requests, {stats.rate_limited} answered 429, "
        f"{stats.tasks_created * 40} credits spent"
    )
    return 1 if failed == len(PROMPTS) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("videos"), help="where videos go")
    raise SystemExit(anyio.run(main, parser.parse_args().out))
