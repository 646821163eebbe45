"""Benchmark workers in processes of their own, started together.

A worker is the calling script run again as ``script --worker CONFIG`` (JSON); it
prints ``ready`` once set up, waits for a line on stdin, runs, and prints its
result as JSON on its last line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

Worker = asyncio.subprocess.Process


async def start(script: str, configs: Sequence[dict[str, Any]]) -> list[Worker]:
    """One worker a config, each waited for until it is ready."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "--worker",
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for config in configs
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"a worker did not start: {line!r}")
    return procs


async def go(procs: Sequence[Worker]) -> None:
    """Let every ready worker run, as near together as they can."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()


async def results(procs: Sequence[Worker]) -> list[dict[str, Any]]:
    """Each worker's result, in order, once it has ended."""
    found = []
    for proc in procs:
        out, _ = await proc.communicate()
        found.append(json.loads(out.decode().strip().splitlines()[-1]))
    return found
