"""``grokimagine demo``: a real batch against the simulator in this process."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ... import AsyncClient, RateLimit
from ..._config import CREDITS_PER_VIDEO
from .._folders import check_writable
from .._format import stderr
from .._inputs import BatchFile
from .._options import ProgressOption
from .batch import run_batch

DEMO_PROMPTS = [
    {"prompt": "a red fox trotting through fresh snow at dawn", "ratio": "3:2"},
    {"prompt": "a paper boat drifting down a rain-soaked street", "mode": "fun"},
    {"prompt": "timelapse of a city skyline from dusk to night", "ratio": "3:2"},
    {"prompt": "a hummingbird hovering over a purple flower, slow motion", "ratio": "2:3"},
    {"prompt": "an astronaut planting a flag made of spaghetti", "mode": "fun"},
    {"prompt": "waves crashing on black volcanic sand", "ratio": "3:2"},
    {"prompt": "a cat conducting an orchestra of kittens", "mode": "fun", "ratio": "2:3"},
    {"prompt": "northern lights over a frozen lake", "ratio": "3:2"},
    {"prompt": "a steam train crossing a stone viaduct in autumn", "ratio": "3:2"},
    {"prompt": "a robot learning to juggle oranges", "mode": "fun"},
    {"prompt": "ink drops blooming in water, macro", "ratio": "1:1"},
    {"prompt": "a lighthouse in a storm, waves over the rail", "ratio": "2:3"},
]


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the videos.")] = Path("videos"),
    progress: ProgressOption = "auto",
    time_scale: Annotated[
        float,
        typer.Option(
            "--time-scale",
            min=0.001,
            hidden=True,
            help="Multiply the demo's already compressed times (for tests).",
        ),
    ] = 1.0,
) -> None:
    """Run a batch of sample prompts against the built-in simulator, into ./videos.

    The simulator runs in this process with time compressed (a rate-limit minute
    of 2 s, videos in 2-6 s, one in ten failing); nothing is spent. Exits 0 once it
    made videos: its failures are the simulator's, on purpose, to show how they read.
    """
    from ...simulator import Simulator

    check_writable("--out", out)
    prompts = BatchFile(
        Path("demo.jsonl"), text="".join(json.dumps(p) + "\n" for p in DEMO_PROMPTS)
    ).check()
    minute, fastest, slowest = 2.0 * time_scale, 2.0 * time_scale, 6.0 * time_scale
    sim = Simulator(
        limit=60, period=minute, generation_time=(fastest, slowest), failure_rate=0.1, seed=2
    )
    err = stderr()
    journal_dir = tempfile.TemporaryDirectory(prefix="grokimagine-demo-")
    with sim.serve_in_thread() as url:
        err.print(
            f"simulator on {url} (a rate-limit minute lasts {minute:g} s); "
            f"{len(prompts)} sample prompts, {CREDITS_PER_VIDEO} simulated credits each",
        )
        client = AsyncClient(
            "demo-token",
            base_url=url,
            rate_limit=RateLimit(60, minute),
            poll_interval=0.5 * time_scale,
        )
        try:
            run_batch(
                client,
                prompts,
                source="the demo's sample prompts",
                out=out,
                journal=Path(journal_dir.name) / "demo.journal.db",
                report=out / "report.json",
                progress=progress,
                demo=True,
            )
        finally:
            stats = sim.stats
            err.print(
                f"the simulator saw {stats.requests} requests, {stats.rate_limited} "
                f"answered 429, and created {stats.tasks_created} tasks"
            )
            journal_dir.cleanup()
