"""The client against the simulator over real sockets on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from grokimagine_async import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    FailureKind,
    RateLimit,
    SubmitUncertainError,
    TaskFailedError,
    TaskState,
    Unchecked,
)
from grokimagine_async.simulator import Fault, Simulator

from .helpers import TOKEN, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]

FAST = {"generation_time": (0.05, 0.2), "queue_fraction": 0.3}

# What the server's words mean is parsing, the same on every backend (test_client runs
# it on each): trio runs here what a socket shows, the happy path and the faults.
WORDS = pytest.mark.backends("asyncio", reason="what the answers mean is the same on trio")


@asynccontextmanager
async def running(
    sim: Simulator, **client_kwargs: Any
) -> AsyncIterator[tuple[Simulator, AsyncClient]]:
    client_kwargs.setdefault("rate_limit", RateLimit(1000, 1.0))
    client_kwargs.setdefault("poll_interval", 0.02)
    client_kwargs.setdefault("backoff", 0.01)
    async with serving(sim) as url, AsyncClient(TOKEN, base_url=url, **client_kwargs) as client:
        with anyio.fail_after(20):
            yield sim, client


@pytest.mark.parametrize("in_200", [False, True])
async def test_a_video_from_submit_to_completion(in_200: bool) -> None:
    sim = Simulator(seed=1, errors_as_http_200=in_200, **FAST)  # type: ignore[arg-type]
    async with running(sim) as (sim, client):
        task = await client.generate(prompt="a fox in the snow", mode="fun", ratio="2:3")
    assert task.state is TaskState.COMPLETED
    assert len(task.videos) == 1
    assert task.videos[0].endswith(".mp4")
    assert task.consumed_credits == 40
    assert task.created_at is not None
    assert task.request == {"mode": "fun", "prompt": "a fox in the snow", "ratio": "2:3"}
    assert sim.stats.tasks_created == 1


@pytest.mark.parametrize("in_200", [False, True])
@WORDS
async def test_errors_raise_their_class_under_both_readings(in_200: bool) -> None:
    sim = Simulator(seed=1, api_keys={TOKEN}, errors_as_http_200=in_200, **FAST)  # type: ignore[arg-type]
    async with running(sim) as (sim, client):
        with pytest.raises(BadRequestError, match="ratio") as info:
            await client.submit(prompt="p", ratio=Unchecked("16:9"))
        assert info.value.http_status == (200 if in_200 else 400)
        async with AsyncClient("sk-wrong", base_url=str(client.base_url)) as intruder:
            with pytest.raises(AuthenticationError):
                await intruder.get_task("task_1")
    assert sim.stats.tasks_created == 0


@WORDS
async def test_other_status_words_and_failures_are_understood() -> None:
    words = {
        "pending": "queued",
        "running": "generating",
        "completed": "success",
        "failed": "error",
    }
    sim = Simulator(
        seed=2,
        status_words=words,
        failure_rate=1.0,
        failure_messages={"Inappropriate content, please try another prompt.": 1.0},
        **FAST,  # type: ignore[arg-type]
    )
    async with running(sim) as (sim, client):
        with pytest.raises(TaskFailedError) as info:
            await client.generate(prompt="p")
    task = info.value.task
    assert task.raw_status == "error"
    assert task.failure_kind is FailureKind.CONTENT_REFUSED
    assert not task.resubmit_may_succeed


@WORDS
async def test_completed_with_no_videos_is_fine() -> None:
    sim = Simulator(seed=3, videos_per_task=0, **FAST)  # type: ignore[arg-type]
    async with running(sim) as (sim, client):
        task = await client.generate(prompt="p")
    assert task.videos == ()


@pytest.mark.parametrize(
    "fault",
    [Fault.reset_before(), Fault.html(status=502), Fault.server_error(), Fault.truncated_json()],
)
async def test_status_calls_ride_out_faults(fault: Fault) -> None:
    sim = Simulator(seed=4, **FAST)  # type: ignore[arg-type]
    async with running(sim) as (sim, client):
        task_id = await client.submit(prompt="p")
        sim.inject(fault, endpoint="status", times=2)
        task = await client.get_task(task_id)
    assert task.task_id == task_id


@pytest.mark.parametrize(
    ("fault", "created"),
    [
        (Fault.reset_after(), 1),
        (Fault.truncated_json(), 1),
        (Fault.empty_body(), 1),
        (Fault.delay(1.0), 1),
        (Fault.server_error(), 0),
        (Fault.html(status=502), 0),
        (Fault.error_in_200(code=500), 0),
        # Over the wire a drop before processing looks the same as one after: still uncertain.
        (Fault.reset_before(), 0),
    ],
)
async def test_an_ambiguous_submission_is_never_resent(fault: Fault, created: int) -> None:
    sim = Simulator(seed=5, **FAST)  # type: ignore[arg-type]
    async with running(sim, timeout=0.3) as (sim, client):
        sim.inject(fault, endpoint="generate", times=1)
        with pytest.raises(SubmitUncertainError) as info:
            await client.submit(prompt="a paid video")
        assert info.value.request.prompt == "a paid video"
    assert sim.stats.tasks_created == created
    assert sim.stats.by_endpoint.get("generate") == 1


@pytest.mark.backends(
    "asyncio",
    reason="a 429 over sockets closes the gate and is retried on trio in test_rate_limiting",
)
async def test_a_forced_429_on_submit_is_retried_and_creates_one_task() -> None:
    sim = Simulator(seed=6, **FAST)  # type: ignore[arg-type]
    async with running(sim) as (sim, client):
        sim.inject(Fault.rate_limited(retry_after=0.05), endpoint="generate", times=1)
        task_id = await client.submit(prompt="p")
    assert task_id in sim.tasks
    assert sim.stats.tasks_created == 1
    assert sim.stats.by_endpoint.get("generate") == 2


async def test_resending_ambiguous_submissions_when_the_caller_says_so() -> None:
    sim = Simulator(seed=7, **FAST)  # type: ignore[arg-type]
    async with running(sim, retry_uncertain_submits=True) as (sim, client):
        sim.inject(Fault.server_error(), endpoint="generate", times=1)
        await client.submit(prompt="p")
    assert sim.stats.tasks_created == 1
    assert sim.stats.by_endpoint.get("generate") == 2
