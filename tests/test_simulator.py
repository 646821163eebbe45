"""Tests of the simulated Grok Imagine server (grokimagine_async.simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, get_args

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from grokimagine_async._cli._app import app as cli_app
from grokimagine_async.simulator import (
    FAILURE_MESSAGES,
    Fault,
    FaultEndpoint,
    ManualClock,
    RateModel,
    RequestRecord,
    SimulatedDisconnect,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    serve_in_thread,
)
from grokimagine_async.simulator.__main__ import main as cli_main
from grokimagine_async.simulator.__main__ import parse_args
from grokimagine_async.simulator._counters import make_limiter

TOKEN = "sim-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://sim.test"
START = 1000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    # Not zero, so a limiter that forgot its origin shows up as a wrong window.
    return ManualClock(START)


def client(sim: Simulator, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(transport=sim.transport(), base_url=BASE, headers=headers)


async def create(http: httpx.AsyncClient, prompt: str = "a fox in the snow") -> str:
    response = await http.post("/v1/generate", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def status(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await http.get("/v1/status", params={"task_id": task_id})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for state another thread or process produces, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.005)


# Auth


@pytest.mark.anyio
@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "sim-token"])
async def test_missing_or_malformed_token_is_401(header: str | None) -> None:
    sim = Simulator()
    headers = {} if header is None else {"Authorization": header}
    async with client(sim, token=None) as http:
        response = await http.post("/v1/generate", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "code": 401,
        "message": "Unauthorized: missing or invalid API token",
        "error": "UNAUTHORIZED",
    }
    assert "x-ratelimit-remaining" not in response.headers
    stats = sim.stats
    assert stats.tasks_created == 0
    (record,) = stats.log
    assert (record.endpoint, record.status, record.counted) == ("generate", 401, False)


@pytest.mark.anyio
async def test_api_keys_restrict_tokens_and_401_does_not_use_up_a_fault() -> None:
    sim = Simulator(api_keys={"good"})
    sim.inject(Fault.html())
    async with client(sim, token="bad") as bad, client(sim, token="good") as good:
        assert (await bad.get("/v1/status", params={"task_id": "t"})).status_code == 401
        assert (await good.post("/v1/generate", json={"prompt": "x"})).status_code == 502
        assert (await good.post("/v1/generate", json={"prompt": "x"})).status_code == 200


# Validation


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "The prompt parameter is required"),
        ({"prompt": ""}, "The prompt parameter is required"),
        ({"prompt": "   ", "mode": "fun"}, "The prompt parameter is required"),
        ({"prompt": None}, "The prompt parameter is required"),
        ({"prompt": 5}, "The prompt parameter must be a string"),
        ({"prompt": "x", "mode": "wild"}, "The mode parameter must be one of: fun, normal, spicy"),
        ({"prompt": "x", "mode": 1}, "The mode parameter must be one of: fun, normal, spicy"),
        ({"prompt": "x", "ratio": "16:9"}, "The ratio parameter must be one of: 1:1, 2:3, 3:2"),
        (
            {"prompt": "x", "images": "https://example.com/a.png"},
            "The images parameter must be a list of http(s) image URLs",
        ),
        (
            {"prompt": "x", "images": ["ftp://example.com/a.png"]},
            "The images parameter must be a list of http(s) image URLs",
        ),
        (
            {"prompt": "x", "images": [7]},
            "The images parameter must be a list of http(s) image URLs",
        ),
        ([1, 2], "The request body must be a JSON object"),
    ],
)
async def test_generate_validation_errors(body: object, message: str) -> None:
    sim = Simulator()
    async with client(sim) as http:
        response = await http.post("/v1/generate", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "message": f"Invalid request: {message}",
        "error": "INVALID_REQUEST",
    }
    # A 400 still went through rate counting.
    assert response.headers["x-ratelimit-remaining"] == "99"
    assert sim.stats.tasks_created == 0


@pytest.mark.anyio
@pytest.mark.parametrize("content", [b"", b"not json", b'{"prompt": "x"', b"\xff\xfe"])
async def test_generate_rejects_a_body_that_is_not_json(content: bytes) -> None:
    sim = Simulator()
    async with client(sim) as http:
        response = await http.post("/v1/generate", content=content)
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid request: The request body must be valid JSON"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x"},
        {"prompt": "x", "mode": None, "ratio": None, "images": None},
        {"prompt": "x", "mode": "spicy", "ratio": "2:3", "images": []},
        {"prompt": "x", "mode": "fun", "images": ["https://example.com/a.png"]},
        {"prompt": "x", "mode": "custom", "ratio": "16:9"},
    ],
)
async def test_generate_accepts_documented_and_configured_values(body: dict[str, Any]) -> None:
    sim = Simulator(extra_modes=["custom"], extra_ratios=["16:9"])
    async with client(sim) as http:
        response = await http.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    assert sim.stats.created_requests() == [body]


@pytest.mark.anyio
async def test_status_errors_and_unknown_routes() -> None:
    sim = Simulator()
    async with client(sim) as http:
        missing = await http.get("/v1/status")
        unknown = await http.get("/v1/status", params={"task_id": "task_1"})
        nowhere = await http.get("/v2/anything")
        wrong_method = await http.get("/v1/generate")
    assert missing.status_code == 400
    assert missing.json()["message"] == "Invalid request: The task_id parameter is required"
    assert unknown.status_code == 404
    assert unknown.json() == {"code": 404, "message": "Task not found", "error": "NOT_FOUND"}
    assert nowhere.status_code == 404
    assert nowhere.json()["error"] == "NOT_FOUND"
    assert wrong_method.status_code == 405
    assert sim.stats.by_endpoint == Counter({"status": 2, "other": 1, "generate": 1})


# Task lifecycle


@pytest.mark.anyio
async def test_task_goes_pending_running_completed_on_the_clock(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(10.0, 10.0), queue_fraction=0.2, seed=7)
    body = {"prompt": "a lighthouse", "mode": "fun", "ratio": "1:1"}
    async with client(sim) as http:
        response = await http.post("/v1/generate", json=body)
        assert response.status_code == 200
        answer = response.json()
        assert answer["code"] == 200
        assert answer["message"] == "success"
        task_id = answer["data"]["task_id"]
        assert re.fullmatch(r"task_[0-9]+", task_id)

        first = await status(http, task_id)
        assert set(first) == {
            "consumed_credits",
            "created_at",
            "status",
            "task_id",
            "error_message",
            "request",
            "response",
        }
        assert first["status"] == "pending"
        assert first["task_id"] == task_id
        assert first["consumed_credits"] == 40
        assert first["error_message"] is None
        assert first["request"] == body
        assert first["response"] == []
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["created_at"])
        created = datetime.strptime(first["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        created = created.replace(tzinfo=timezone.utc)
        assert abs(created.timestamp() - time.time()) < 5

        clock.advance(2.0)
        assert (await status(http, task_id))["status"] == "processing"
        clock.advance(7.9)
        assert (await status(http, task_id))["status"] == "processing"
        clock.advance(0.1)
        done = await status(http, task_id)
    assert done["status"] == "completed"
    assert done["response"] == [f"{BASE}/videos/{task_id}/1.mp4"]
    assert done["created_at"] == first["created_at"]
    assert sim.phase(task_id) == "completed"
    assert sim.tasks[task_id].videos == 1


@pytest.mark.anyio
async def test_failed_task_reports_message_and_keeps_credits(clock: ManualClock) -> None:
    message = "Network error, please try again later."
    sim = Simulator(
        clock=clock, generation_time=(5.0, 5.0), failure_rate=1.0, failure_messages={message: 1}
    )
    refunding = Simulator(
        clock=clock, generation_time=(5.0, 5.0), failure_rate=1.0, refund_failed=True
    )
    async with client(sim) as http, client(refunding) as http2:
        task_id = await create(http)
        refunded_id = await create(http2)
        assert (await status(http, task_id))["error_message"] is None
        assert (await status(http2, refunded_id))["consumed_credits"] == 40
        clock.advance(5.0)
        failed = await status(http, task_id)
        refunded = await status(http2, refunded_id)
    assert failed["status"] == "failed"
    assert failed["error_message"] == message
    assert failed["response"] == []
    assert failed["consumed_credits"] == 40
    assert refunded["status"] == "failed"
    assert refunded["error_message"] in FAILURE_MESSAGES
    assert refunded["consumed_credits"] == 0


@pytest.mark.anyio
async def test_failure_messages_are_drawn_from_the_documented_ones(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(0.0, 0.0), failure_rate=1.0, seed=3)
    async with client(sim) as http:
        ids = [await create(http) for _ in range(40)]
        messages = {(await status(http, i))["error_message"] for i in ids}
    assert messages <= set(FAILURE_MESSAGES)
    assert len(messages) >= 3


@pytest.mark.anyio
async def test_status_words_are_configurable(clock: ManualClock) -> None:
    words = {"pending": "queued", "running": "generating", "completed": "success", "failed": "x"}
    sim = Simulator(clock=clock, generation_time=(10.0, 10.0), status_words=words)
    partial = Simulator(
        clock=clock, generation_time=(10.0, 10.0), status_words={"completed": "done"}
    )
    async with client(sim) as http, client(partial) as http2:
        task_id = await create(http)
        other_id = await create(http2)
        seen = [(await status(http, task_id))["status"]]
        clock.advance(5.0)
        seen.append((await status(http, task_id))["status"])
        assert (await status(http2, other_id))["status"] == "processing"
        clock.advance(5.0)
        seen.append((await status(http, task_id))["status"])
        assert (await status(http2, other_id))["status"] == "done"
    assert seen == ["queued", "generating", "success"]


@pytest.mark.anyio
@pytest.mark.parametrize(("videos", "expected"), [(0, {0}), (2, {2}), ((1, 3), {1, 2, 3})])
async def test_videos_per_task(
    clock: ManualClock, videos: int | tuple[int, int], expected: set[int]
) -> None:
    sim = Simulator(clock=clock, generation_time=(0.0, 0.0), videos_per_task=videos, seed=5)
    counts: set[int] = set()
    async with client(sim) as http:
        for _ in range(30):
            data = await status(http, await create(http))
            assert data["status"] == "completed"
            assert len(set(data["response"])) == len(data["response"])
            counts.add(len(data["response"]))
    assert counts == expected


@pytest.mark.anyio
async def test_task_ids_are_unique_and_follow_the_seed() -> None:
    async def ids(seed: int) -> list[str]:
        sim = Simulator(seed=seed, limit=1000)
        async with client(sim) as http:
            return [await create(http) for _ in range(150)]

    first = await ids(11)
    assert len(set(first)) == len(first)
    assert await ids(11) == first
    assert await ids(12) != first


@pytest.mark.anyio
async def test_complete_now_and_fail_now(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(100.0, 100.0))
    async with client(sim) as http:
        done_id = await create(http)
        failed_id = await create(http)
        sim.complete_now(done_id, videos=2)
        sim.fail_now(failed_id, "Inappropriate content, please try another prompt.")
        done = await status(http, done_id)
        failed = await status(http, failed_id)
    assert done["status"] == "completed"
    assert len(done["response"]) == 2
    assert failed["status"] == "failed"
    assert failed["error_message"] == "Inappropriate content, please try another prompt."
    with pytest.raises(KeyError):
        sim.complete_now("task_0")


# Rate limiting


async def send_at(
    http: httpx.AsyncClient, clock: ManualClock, at: float, count: int = 1
) -> list[httpx.Response]:
    clock.set(START + at)
    return [await http.post("/v1/generate", json={"prompt": "p"}) for _ in range(count)]


def rate(response: httpx.Response) -> tuple[int, int, str | None]:
    """(status, remaining, reset) with reset as the raw header, for compact assertions."""
    return (
        response.status_code,
        int(response.headers["x-ratelimit-remaining"]),
        response.headers.get("x-ratelimit-reset"),
    )


@pytest.mark.anyio
async def test_fixed_window_counts_per_aligned_window(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=3, period=60.0, rate_model="fixed", reset_format="delta_s")
    async with client(sim) as http:
        burst = await send_at(http, clock, 50.0, 4)
        assert [rate(r) for r in burst] == [
            (200, 2, "10"),
            (200, 1, "10"),
            (200, 0, "10"),
            (429, 0, "10"),
        ]
        assert burst[3].headers["retry-after"] == "10"
        assert burst[3].json() == {
            "code": 429,
            "message": "Rate limit exceeded, please slow down",
            "error": "RATE_LIMITED",
        }
        fresh = await send_at(http, clock, 60.0, 3)
    assert [rate(r) for r in fresh] == [(200, 2, "60"), (200, 1, "60"), (200, 0, "60")]
    # Two full windows back to back: six requests inside ten seconds.
    assert sim.stats.max_in_window() == 6
    assert sim.stats.rate_limited == 1


@pytest.mark.anyio
async def test_sliding_window_counts_each_request_for_one_period(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=3, period=60.0, rate_model="sliding", reset_format="delta_s")
    async with client(sim) as http:
        spread = [(await send_at(http, clock, at))[0] for at in (0.0, 10.0, 20.0)]
        assert [rate(r) for r in spread] == [(200, 2, "60"), (200, 1, "60"), (200, 0, "60")]
        refused = (await send_at(http, clock, 30.0))[0]
        assert rate(refused) == (429, 0, "50")
        assert refused.headers["retry-after"] == "30"
        again = await send_at(http, clock, 60.0, 2)
    assert [rate(r) for r in again] == [(200, 0, "60"), (429, 0, "60")]
    assert again[1].headers["retry-after"] == "10"
    assert sim.stats.max_in_window() == 3


@pytest.mark.anyio
async def test_gcra_bursts_then_refills_steadily(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=3, period=60.0, rate_model="gcra", reset_format="delta_s")
    async with client(sim) as http:
        burst = await send_at(http, clock, 0.0, 4)
        assert [rate(r) for r in burst] == [
            (200, 2, "20"),
            (200, 1, "40"),
            (200, 0, "60"),
            (429, 0, "60"),
        ]
        assert burst[3].headers["retry-after"] == "20"
        refilled = await send_at(http, clock, 20.0, 2)
        assert [rate(r) for r in refilled] == [(200, 0, "60"), (429, 0, "60")]
        full = await send_at(http, clock, 80.0)
    assert rate(full[0]) == (200, 2, "20")


def classify_reset(value: int) -> str:
    # The client-side reading from API_NOTES.md.
    if value > 1e12:
        return "epoch_ms"
    if value > 1e9:
        return "epoch_s"
    return "delta_s"


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["fixed", "sliding", "gcra", "leaky"])
@pytest.mark.parametrize("reset_format", ["epoch_s", "epoch_ms", "delta_s"])
async def test_reset_header_formats(clock: ManualClock, model: str, reset_format: str) -> None:
    sim = Simulator(clock=clock, limit=2, period=60.0, rate_model=model, reset_format=reset_format)
    async with client(sim) as http:
        responses = await send_at(http, clock, 0.0, 3)
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["1", "0", "0"]
    reset = int(responses[-1].headers["x-ratelimit-reset"])
    assert classify_reset(reset) == reset_format
    # Every model has the full limit back 60 s after a burst at the window's start.
    seconds = {"epoch_s": reset - time.time(), "epoch_ms": reset / 1000 - time.time()}.get(
        reset_format, float(reset)
    )
    assert 58 <= seconds <= 62


@pytest.mark.anyio
async def test_retry_after_as_http_date_or_absent(clock: ManualClock) -> None:
    dated = Simulator(clock=clock, limit=1, rate_model="fixed", retry_after="http-date")
    bare = Simulator(clock=clock, limit=1, retry_after=None, rate_headers=False)
    async with client(dated) as http, client(bare) as http2:
        refused = (await send_at(http, clock, 0.0, 2))[1]
        quiet = [await http2.post("/v1/generate", json={"prompt": "p"}) for _ in range(2)]
    assert refused.status_code == 429
    when = email.utils.parsedate_to_datetime(refused.headers["retry-after"])
    assert 58 <= when.timestamp() - time.time() <= 62
    assert [r.status_code for r in quiet] == [200, 429]
    for response in quiet:
        assert "retry-after" not in response.headers
        assert "x-ratelimit-remaining" not in response.headers
        assert "x-ratelimit-reset" not in response.headers


@pytest.mark.anyio
async def test_limits_are_per_token_and_status_polls_count(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=2, tokens={"big": 4})
    lenient = Simulator(clock=clock, limit=1, count_status=False)
    async with client(sim) as small, client(sim, token="big") as big, client(lenient) as http3:
        task_id = await create(small)
        poll = await small.get("/v1/status", params={"task_id": task_id})
        assert poll.headers["x-ratelimit-remaining"] == "0"
        assert (await small.post("/v1/generate", json={"prompt": "p"})).status_code == 429
        big_statuses = [(await big.post("/v1/generate", json={"prompt": "p"})) for _ in range(5)]
        assert [r.status_code for r in big_statuses] == [200, 200, 200, 200, 429]

        other_id = await create(http3)
        polls = [await http3.get("/v1/status", params={"task_id": other_id}) for _ in range(5)]
    assert all(p.status_code == 200 for p in polls)
    assert all("x-ratelimit-remaining" not in p.headers for p in polls)


@pytest.mark.anyio
async def test_background_share_spends_part_of_the_limit(clock: ManualClock) -> None:
    async def visible_successes(share: float) -> tuple[int, SimulatorStats]:
        own_clock = ManualClock(START)
        sim = Simulator(clock=own_clock, limit=10, period=10.0, background_share=share)
        allowed = 0
        async with client(sim) as http:
            for _ in range(200):
                response = await http.post("/v1/generate", json={"prompt": "p"})
                allowed += response.status_code == 200
                own_clock.advance(0.5)
        return allowed, sim.stats

    alone, alone_stats = await visible_successes(0.0)
    shared, shared_stats = await visible_successes(0.5)
    assert 95 <= alone <= 101
    assert 40 <= shared <= 60
    assert alone_stats.background_requests == 0
    assert 45 <= shared_stats.background_requests <= 51
    # The background client never shows up among the visible requests.
    assert shared_stats.requests == len(shared_stats.log) == 200
    assert shared_stats.max_in_window(10.0) <= 10

    sim = Simulator(clock=clock, limit=10, period=60.0, background_share=0.5)
    async with client(sim) as http:
        first = await http.post("/v1/generate", json={"prompt": "p"})
    assert first.headers["x-ratelimit-remaining"] == "8"


@pytest.mark.anyio
@pytest.mark.parametrize(("count_rejected", "expected"), [(False, [200, 200]), (True, [200, 429])])
async def test_count_rejected(
    clock: ManualClock, count_rejected: bool, expected: list[int]
) -> None:
    sim = Simulator(clock=clock, limit=2, period=10.0, count_rejected=count_rejected)
    async with client(sim) as http:
        assert [r.status_code for r in await send_at(http, clock, 0.0, 2)] == [200, 200]
        assert [r.status_code for r in await send_at(http, clock, 5.0)] == [429]
        later = await send_at(http, clock, 10.0, 2)
    assert [r.status_code for r in later] == expected


@pytest.mark.anyio
async def test_leaky_bucket_admits_a_burst_then_one_request_per_interval(
    clock: ManualClock,
) -> None:
    # 60 per 2 s: one request every 1/30 s, an interval whose float sums drift.
    sim = Simulator(
        clock=clock, limit=60, period=2.0, rate_model="leaky", burst=3, reset_format="delta_s"
    )
    assert repr(sim) == "Simulator(limit=60, period=2.0, rate_model='leaky', burst=3)"
    interval = 2.0 / 60
    async with client(sim) as http:
        burst = await send_at(http, clock, 0.0, 4)
        assert [rate(r) for r in burst] == [
            (200, 2, "1"),
            (200, 1, "1"),
            (200, 0, "1"),
            (429, 0, "1"),
        ]
        assert burst[3].headers["retry-after"] == "1"
        for n in range(1, 241):
            paced = await send_at(http, clock, n * interval, 2)
            between = await send_at(http, clock, (n + 0.5) * interval)
            assert [r.status_code for r in [*paced, *between]] == [200, 429, 429], n
    # Refused requests do not fill the bucket, so the pace never slips.
    assert sim.stats.by_status[200] == 3 + 240


@pytest.mark.anyio
async def test_leaky_bucket_depth_defaults_to_each_tokens_limit(clock: ManualClock) -> None:
    whole = Simulator(
        clock=clock,
        limit=5,
        period=10.0,
        rate_model="leaky",
        tokens={"big": 8},
        reset_format="delta_s",
    )
    shallow = Simulator(
        clock=clock,
        limit=5,
        period=10.0,
        rate_model="leaky",
        burst=2,
        tokens={"big": 8},
        reset_format="delta_s",
    )
    async with (
        client(whole) as whole_small,
        client(whole, token="big") as whole_big,
        client(shallow) as shallow_small,
        client(shallow, token="big") as shallow_big,
    ):
        https = [whole_small, whole_big, shallow_small, shallow_big]
        bursts = [await send_at(http, clock, 0.0, 10) for http in https]
        # Each token drains at its own limit per period: one every 2 s, or every 1.25 s.
        later = [await send_at(http, clock, 2.5, 3) for http in https]
    assert [sum(r.status_code == 200 for r in b) for b in bursts] == [5, 8, 2, 2]
    assert [sum(r.status_code == 200 for r in b) for b in later] == [1, 2, 1, 2]
    # The bucket is empty again once every request in it has drained.
    assert [b[0].headers["x-ratelimit-reset"] for b in bursts] == ["2", "2", "2", "2"]
    assert [rate(b[-1]) for b in bursts] == [
        (429, 0, "10"),
        (429, 0, "10"),
        (429, 0, "4"),
        (429, 0, "3"),
    ]


@pytest.mark.anyio
async def test_approximate_counter_weighs_the_previous_window(clock: ManualClock) -> None:
    sim = Simulator(
        clock=clock, limit=10, period=10.0, rate_model="approximate", reset_format="delta_s"
    )
    async with client(sim) as http:
        first = await send_at(http, clock, 2.0, 8)
        assert [rate(r)[:2] for r in first] == [(200, n) for n in range(9, 1, -1)]
        # Its count weighs on the next window until that one ends.
        assert first[-1].headers["x-ratelimit-reset"] == "18"

        # Just after the boundary the previous window weighs 0.95: 8 * 0.95 = 7.6, so
        # three go (7.6, 8.6, 9.6 < 10) where a sliding window lets two and a fixed one ten.
        boundary = await send_at(http, clock, 10.5, 4)
        assert [rate(r) for r in boundary] == [
            (200, 2, "20"),
            (200, 1, "20"),
            (200, 0, "20"),
            (429, 0, "20"),
        ]
        # 3 + 8 * (1 - f) < 10 once f > 1/8, at 11.25 s.
        assert boundary[3].headers["retry-after"] == "1"
        assert [r.status_code for r in await send_at(http, clock, 11.2)] == [429]
        assert [r.status_code for r in await send_at(http, clock, 11.3, 2)] == [200, 429]

        # At the next boundary the whole previous window counts: 4 of 10.
        assert [r.status_code for r in await send_at(http, clock, 20.0, 7)] == [200] * 6 + [429]
        # Half-way through the window after, half of those 6 still count.
        halfway = await send_at(http, clock, 35.0, 8)
    assert [r.status_code for r in halfway] == [200] * 7 + [429]
    assert rate(halfway[0])[:2] == (200, 6)


@pytest.mark.anyio
async def test_approximate_counter_that_counts_refusals_shuts_out_a_hammering_client(
    clock: ManualClock,
) -> None:
    sim = Simulator(
        clock=clock, limit=10, period=10.0, rate_model="approximate", count_rejected=True
    )
    async with client(sim) as hammering, client(sim, token="patient") as patient:
        for http in (hammering, patient):
            burst = await send_at(http, clock, 0.0, 11)
            assert [r.status_code for r in burst] == [200] * 10 + [429]
        # At twice the plan's rate the count stays near 20, however long it goes on.
        hammered = []
        for n in range(1, 80):
            hammered.extend(await send_at(hammering, clock, n * 0.5))
            if n == 22:
                # 11 * 0.9 = 9.9: waiting one tenth of the next window was enough.
                waited = await patient.post("/v1/generate", json={"prompt": "p"})
                assert waited.status_code == 200
        assert {r.status_code for r in hammered} == {429}
        # Stopping and waiting as long as the last 429 says lets it in again.
        wait = int(hammered[-1].headers["retry-after"])
        assert [r.status_code for r in await send_at(hammering, clock, 39.5 + wait)] == [200]


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "burst"), [("leaky", 3), ("leaky", None), ("approximate", None)])
async def test_rate_headers_of_the_new_models_say_what_the_next_requests_get(
    clock: ManualClock, model: str, burst: int | None
) -> None:
    sim = Simulator(
        clock=clock,
        limit=6,
        period=60.0,
        rate_model=model,
        burst=burst,
        reset_format="delta_s",
    )
    at_once = burst or 6
    pauses = random.Random(7)
    at = 0.0
    async with client(sim) as http:
        for step in range(12):
            at += pauses.uniform(0.0, 25.0)
            first = (await send_at(http, clock, at))[0]
            status, remaining, _ = rate(first)
            if status == 200:
                more = await send_at(http, clock, at, remaining + 1)
                assert [r.status_code for r in more] == [200] * remaining + [429], step
                refused = more[-1]
            else:
                assert remaining == 0
                refused = first
            assert refused.headers["x-ratelimit-remaining"] == "0"
            wait = int(refused.headers["retry-after"])
            if wait > 1:
                early = await send_at(http, clock, at + wait - 1)
                assert early[0].status_code == 429, step
            at += wait
            allowed = (await send_at(http, clock, at))[0]
            assert allowed.status_code == 200, step
            if step % 3 == 2:
                at += int(allowed.headers["x-ratelimit-reset"])
                fresh = (await send_at(http, clock, at))[0]
                assert rate(fresh)[:2] == (200, at_once - 1), step


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "burst"), [("leaky", 2), ("leaky", None), ("approximate", None)])
async def test_background_share_and_token_limits_with_the_new_models(
    model: str, burst: int | None
) -> None:
    async def visible(share: float, token: str = TOKEN) -> tuple[int, SimulatorStats]:
        own_clock = ManualClock(START)
        sim = Simulator(
            clock=own_clock,
            limit=5,
            period=10.0,
            tokens={TOKEN: 10},
            rate_model=model,
            burst=burst,
            background_share=share,
        )
        allowed = 0
        async with client(sim, token=token) as http:
            for _ in range(200):
                response = await http.post("/v1/generate", json={"prompt": "p"})
                allowed += response.status_code == 200
                own_clock.advance(0.5)
        return allowed, sim.stats

    alone, alone_stats = await visible(0.0)
    shared, shared_stats = await visible(0.5)
    other, other_stats = await visible(0.5, token="other")
    # About one a second over 100 s on the token's own limit of 10 per 10 s...
    assert 95 <= alone <= 110
    assert alone_stats.background_requests == 0
    # ...of which the background client takes its half, and the visible one the rest.
    assert 45 <= shared_stats.background_requests <= 51
    assert 40 <= alone - shared <= 55
    assert shared_stats.requests == 200
    # A token on the default limit of 5 per 10 s shares half of that.
    assert 22 <= other_stats.background_requests <= 26
    assert 20 <= other <= 32


@pytest.mark.parametrize("model", get_args(RateModel))
@pytest.mark.parametrize("count_rejected", [False, True])
def test_every_models_window_matches_what_it_then_admits(
    model: RateModel, count_rejected: bool
) -> None:
    # Large clock readings, as time.monotonic() gives, make float rounding show up.
    schedules = random.Random(f"{model}-{count_rejected}")
    for _ in range(300):
        limit = schedules.randint(1, 12)
        period = schedules.choice([0.1, 2.0, 60.0])
        burst = schedules.randint(1, 15)
        origin = schedules.uniform(0.0, 1e6)
        limiter = make_limiter(model, limit, period, origin, burst)
        full = burst if model == "leaky" else limit
        now = origin + schedules.uniform(0.0, 3 * period)
        for _ in range(schedules.randint(0, 40)):
            now += schedules.expovariate(limit / period * schedules.uniform(0.5, 3.0))
            limiter.acquire(now, count_rejected=count_rejected)
        now += schedules.uniform(0.0, period)
        window = limiter.window(now)

        probe = copy.deepcopy(limiter)
        admitted = 0
        while admitted <= full and probe.acquire(now, count_rejected=False):
            admitted += 1
        assert admitted == window.remaining
        if not window.remaining:
            assert now < window.retry_at
            assert copy.deepcopy(limiter).acquire(window.retry_at, count_rejected=False)
            if window.retry_at - now > 1e-3:
                early = window.retry_at - 1e-3
                assert not copy.deepcopy(limiter).acquire(early, count_rejected=False)
        assert copy.deepcopy(limiter).window(window.reset_at).remaining == full


# Faults


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "created"),
    [
        (Fault.html(), 0),
        (Fault.server_error(), 0),
        (Fault.error_in_200(), 0),
        (Fault.rate_limited(), 0),
        (Fault.reset_before(), 0),
        (Fault.truncated_json(), 1),
        (Fault.empty_body(), 1),
        (Fault.reset_after(), 1),
        (Fault.delay(0.01), 1),
        (Fault.server_error_after(), 1),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else str(v),
)
async def test_fault_creates_a_task_only_when_documented(fault: Fault, created: int) -> None:
    sim = Simulator()
    sim.inject(fault, endpoint="generate")
    async with client(sim) as http:
        if fault.kind in ("reset_before", "reset_after"):
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post("/v1/generate", json={"prompt": "faulty"})
        else:
            await http.post("/v1/generate", json={"prompt": "faulty"})
        assert fault.processed == bool(created)
        assert sim.stats.tasks_created == created
        assert sim.stats.faults == Counter({fault.kind: 1})
        # The fault was used up: the next request is answered normally.
        await create(http)
    assert sim.pending_faults == 0
    assert sim.stats.tasks_created == created + 1


@pytest.mark.anyio
async def test_fault_answers_as_the_client_sees_them() -> None:
    sim = Simulator()
    async with client(sim) as http:

        async def post() -> httpx.Response:
            return await http.post("/v1/generate", json={"prompt": "p"})

        sim.inject(Fault.html(503))
        page = await post()
        assert page.status_code == 503
        assert page.headers["content-type"] == "text/html"
        assert "<title>503 Service Temporarily Unavailable</title>" in page.text

        sim.inject("server_error")
        error = await post()
        assert error.status_code == 500
        assert error.json() == {
            "code": 500,
            "message": "Internal server error",
            "error": "SERVER_ERROR",
        }

        sim.inject(Fault.error_in_200(429))
        hidden = await post()
        assert hidden.status_code == 200
        assert hidden.json()["code"] == 429
        assert hidden.json()["error"] == "RATE_LIMITED"

        sim.inject(Fault.rate_limited(retry_after=7))
        forced = await post()
        assert forced.status_code == 429
        assert forced.headers["retry-after"] == "7"
        assert forced.headers["x-ratelimit-remaining"] == "0"
        assert int(forced.headers["x-ratelimit-reset"]) >= int(time.time()) + 6

        sim.inject("truncated_json")
        cut = await post()
        assert cut.status_code == 200
        assert int(cut.headers["content-length"]) == len(cut.content)
        with pytest.raises(json.JSONDecodeError):
            cut.json()
        assert cut.text.startswith('{"code":200')

        sim.inject("empty_body")
        empty = await post()
        assert empty.status_code == 200
        assert empty.content == b""

        for kind in ("reset_before", "reset_after"):
            sim.inject(kind)
            with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
                await post()
    assert sim.stats.rate_limited == 2
    assert sim.stats.by_status[0] == 2


@pytest.mark.anyio
async def test_delay_fault_honours_the_client_timeout_and_leaves_the_task() -> None:
    sim = Simulator()
    sim.inject(Fault.delay(30.0))
    async with client(sim) as http:
        # The fault holds the answer 30 s: a deadline well inside it shows the client's
        # timeout, not the answer, ended the call.
        with anyio.fail_after(15), pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/generate", json={"prompt": "slow"}, timeout=0.05)
    assert sim.stats.tasks_created == 1
    assert sim.stats.created_requests() == [{"prompt": "slow"}]


@pytest.mark.anyio
async def test_faults_target_endpoints_and_repeat(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(0.0, 0.0))
    sim.inject("server_error", endpoint="status", times=2)
    async with client(sim) as http:
        task_id = await create(http)
        polls = [await http.get("/v1/status", params={"task_id": task_id}) for _ in range(3)]
        assert [p.status_code for p in polls] == [500, 500, 200]
        url = polls[-1].json()["data"]["response"][0]
        sim.inject("truncated_json", endpoint="video")
        half = await http.get(url)
        whole = await http.get(url)
        sim.inject("html", endpoint="any")
        proxied = await http.get(url)
    assert len(half.content) == len(whole.content) // 2
    assert proxied.status_code == 502


@pytest.mark.anyio
async def test_fault_rates_are_random_but_seeded() -> None:
    async def statuses(seed: int) -> list[int]:
        sim = Simulator(seed=seed, limit=1000)
        sim.set_fault_rate("server_error", 0.5, endpoint="generate")
        async with client(sim) as http:
            codes = [
                (await http.post("/v1/generate", json={"prompt": "p"})).status_code
                for _ in range(100)
            ]
            sim.set_fault_rate("server_error", 0.0, endpoint="generate")
            codes.append((await http.post("/v1/generate", json={"prompt": "p"})).status_code)
        return codes

    first = await statuses(1)
    assert 25 <= first.count(500) <= 75
    assert first[-1] == 200
    assert await statuses(1) == first


def test_fault_arguments_are_checked() -> None:
    sim = Simulator()
    with pytest.raises(ValueError, match="fault kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        sim.inject("delay")
    with pytest.raises(ValueError, match="endpoint"):
        sim.inject("html", endpoint="upload")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        sim.inject("html", times=0)
    with pytest.raises(ValueError, match="rate"):
        sim.set_fault_rate("html", 1.5)
    with pytest.raises(ValueError, match="HTTP status"):
        Fault.html(1000)
    sim.inject("html", times=3)
    sim.clear_faults()
    assert sim.pending_faults == 0


@pytest.mark.anyio
async def test_plain_asgi_transport_sees_the_fallback_drop() -> None:
    sim = Simulator()
    sim.inject("reset_after")
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=AUTH) as http:
        with pytest.raises(SimulatedDisconnect):
            await http.post("/v1/generate", json={"prompt": "p"})
    assert sim.stats.tasks_created == 1


# Faults after the server acted, answers that go backwards, videos that 404 once


@pytest.mark.anyio
async def test_server_error_after_creates_and_counts_then_answers_500(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=10, generation_time=(0.0, 0.0))
    async with client(sim) as http:
        sim.inject("server_error_after", endpoint="generate")
        failed = await http.post("/v1/generate", json={"prompt": "lost to a 500"})
        task_id = await create(http, "answered")
        sim.inject(Fault.server_error_after(), endpoint="status")
        poll = await http.get("/v1/status", params={"task_id": task_id})
        after = await http.get("/v1/status", params={"task_id": task_id})
    body = {"code": 500, "message": "Internal server error", "error": "SERVER_ERROR"}
    assert (failed.status_code, failed.json()) == (500, body)
    assert (poll.status_code, poll.json()) == (500, body)
    # Handled, so counted: each answer carries the limiter's count, the 500s included.
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in (failed, poll, after)]
    assert remaining == [9, 7, 6]
    assert after.json()["data"]["status"] == "completed"
    stats = sim.stats
    assert stats.tasks_created == 2
    assert [r["prompt"] for r in stats.created_requests()] == ["lost to a 500", "answered"]
    assert [(r.status, r.counted) for r in stats.log] == [
        (500, True),
        (200, True),
        (500, True),
        (200, True),
    ]
    assert stats.faults == Counter({"server_error_after": 2})
    assert stats.tasks_unreported == 1
    assert stats.unreported_requests() == [{"prompt": "lost to a 500"}]


@pytest.mark.anyio
async def test_server_error_after_on_a_refused_request_creates_nothing(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=1)
    async with client(sim) as http:
        await create(http)
        sim.inject("server_error_after")
        refused = await http.post("/v1/generate", json={"prompt": "over the limit"})
    assert refused.status_code == 500
    assert sim.stats.tasks_created == 1
    assert sim.stats.tasks_unreported == 0


@pytest.mark.anyio
@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_status_backwards_shows_a_finished_task_running_once(
    clock: ManualClock, outcome: str
) -> None:
    sim = Simulator(
        clock=clock, generation_time=(10.0, 10.0), videos_per_task=2, refund_failed=True
    )
    async with client(sim) as http:
        task_id = await create(http)
        if outcome == "failed":
            sim.fail_now(task_id)
        else:
            clock.advance(10.0)
        sim.inject("status_backwards", endpoint="status")
        backwards = await http.get("/v1/status", params={"task_id": task_id})
        again = await status(http, task_id)
    assert backwards.status_code == 200
    assert backwards.headers["x-ratelimit-remaining"] == "98"
    shown = backwards.json()["data"]
    assert shown["status"] == "processing"
    assert shown["response"] == []
    assert shown["error_message"] is None
    assert shown["consumed_credits"] == 40
    assert (shown["task_id"], shown["created_at"]) == (task_id, again["created_at"])
    assert shown["request"] == again["request"]
    assert again["status"] == outcome
    if outcome == "completed":
        assert len(again["response"]) == 2
    else:
        assert again["error_message"] == "grok imagine build failed"
        assert again["consumed_credits"] == 0
    assert sim.stats.faults == Counter({"status_backwards": 1})
    assert sim.stats.log[1].counted


@pytest.mark.anyio
async def test_status_backwards_leaves_a_running_task_and_other_endpoints_alone(
    clock: ManualClock,
) -> None:
    sim = Simulator(clock=clock, generation_time=(10.0, 10.0), queue_fraction=0.0)
    sim.inject("status_backwards", times=2)
    async with client(sim) as http:
        # A generate and a video download pass a status_backwards queued for "any" by.
        task_id = await create(http)
        assert (await http.get(f"/videos/{task_id}/1.mp4")).status_code == 404
        assert sim.pending_faults == 2
        running = await status(http, task_id)
        clock.advance(10.0)
        backwards = await status(http, task_id)
        done = await status(http, task_id)
    assert running["status"] == backwards["status"] == "processing"
    assert done["status"] == "completed"
    assert sim.pending_faults == 0
    # Only the answer it changed is counted.
    assert sim.stats.faults == Counter({"status_backwards": 1})
    elsewhere: tuple[FaultEndpoint, ...] = ("generate", "video")
    for endpoint in elsewhere:
        with pytest.raises(ValueError, match="only to status requests"):
            sim.inject("status_backwards", endpoint=endpoint)
        with pytest.raises(ValueError, match="only to status requests"):
            sim.set_fault_rate("status_backwards", 0.5, endpoint=endpoint)


@pytest.mark.anyio
async def test_video_not_found_404s_a_url_once(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(0.0, 0.0), videos_per_task=2)
    async with client(sim) as http:
        task_id = await create(http)
        first, second = (await status(http, task_id))["response"]
        sim.inject("video_not_found", endpoint="video", times=3)
        missing = await http.get(first)
        retried = await http.get(first)
        other = await http.get(second)
        assert sim.pending_faults == 0
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/xml"
    assert b"<Code>NoSuchKey</Code>" in missing.content
    # The fault was drawn again for the retry, yet the URL had had its one 404.
    assert retried.status_code == 200
    assert retried.content[4:8] == b"ftyp"
    assert other.status_code == 404
    assert sim.stats.faults == Counter({"video_not_found": 2})
    with pytest.raises(ValueError, match="only to video requests"):
        sim.inject("video_not_found", endpoint="status")


@pytest.mark.anyio
async def test_video_not_found_at_full_rate_lets_every_retry_through(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(10.0, 10.0), video_ttl=60.0)
    sim.set_fault_rate("video_not_found", 1.0)
    async with client(sim) as http:
        task_id = await create(http)
        url = f"/videos/{task_id}/1.mp4"
        # Not finished yet, then expired: the real answers stand and the 404 is kept.
        early = await http.get(url)
        clock.advance(10.0)
        assert (await status(http, task_id))["status"] == "completed"
        codes = [(await http.get(url)).status_code for _ in range(3)]
        clock.advance(60.0)
        expired = await http.get(url)
    assert early.status_code == 404
    assert codes == [404, 200, 200]
    assert expired.status_code == 403
    assert sim.stats.faults == Counter({"video_not_found": 1})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "unreported"),
    [
        (Fault.reset_after(), 1),
        (Fault.empty_body(), 1),
        (Fault.server_error_after(), 1),
        (Fault.truncated_json(), 1),
        (Fault.delay(0.01), 0),
        (Fault.reset_before(), 0),
        (Fault.server_error(), 0),
        (Fault.html(), 0),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else str(v),
)
async def test_tasks_unreported_counts_created_ids_the_client_never_got(
    fault: Fault, unreported: int
) -> None:
    sim = Simulator()
    async with client(sim) as http:
        await create(http, "seen")
        sim.inject(fault, endpoint="generate")
        with contextlib.suppress(httpx.RemoteProtocolError):
            await http.post("/v1/generate", json={"prompt": "unseen"})
        sim.inject(fault, endpoint="status")
        with contextlib.suppress(httpx.RemoteProtocolError):
            await http.get("/v1/status", params={"task_id": "task_1"})
    stats = sim.stats
    assert stats.tasks_unreported == unreported
    assert stats.unreported_requests() == [{"prompt": "unseen"}] * unreported


@pytest.mark.anyio
async def test_a_delay_the_client_gave_up_on_leaves_an_unreported_task() -> None:
    sim = Simulator()
    sim.inject(Fault.delay(30.0), endpoint="generate")
    sim.inject(Fault.delay(0.01), endpoint="generate")
    async with client(sim) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/generate", json={"prompt": "gave up"}, timeout=0.05)
        await create(http, "waited")
    assert sim.stats.tasks_created == 2
    assert sim.stats.unreported_requests() == [{"prompt": "gave up"}]


@pytest.mark.anyio
async def test_unreported_tasks_survive_the_trip_through_stats() -> None:
    sim = Simulator()
    sim.inject("empty_body", endpoint="generate")
    async with client(sim) as http:
        await http.post("/v1/generate", json={"prompt": "emptied", "mode": "fun"})
        served = (await http.get("/_sim/stats")).json()
    assert served["tasks_unreported"] == 1
    assert served["unreported_requests"] == [{"prompt": "emptied", "mode": "fun"}]
    rebuilt = SimulatorStats.from_dict(served)
    assert rebuilt.tasks_unreported == 1
    assert rebuilt.unreported_requests() == [{"prompt": "emptied", "mode": "fun"}]
    assert rebuilt.to_dict() == served
    copied = rebuilt.copy()
    copied.unreported.append({"prompt": "later"})
    copied.tasks_unreported += 1
    assert rebuilt.tasks_unreported == 1
    assert len(rebuilt.unreported_requests()) == 1
    # A reader's copy of a body cannot change what the stats hold.
    rebuilt.unreported_requests()[0]["prompt"] = "changed"
    assert rebuilt.unreported_requests()[0]["prompt"] == "emptied"
    # Stats from a simulator that did not count these read as none.
    del served["tasks_unreported"], served["unreported_requests"]
    old = SimulatorStats.from_dict(served)
    assert (old.tasks_unreported, old.unreported) == (0, [])
    sim.reset()
    assert sim.stats.tasks_unreported == 0


# Errors as HTTP 200


@pytest.mark.anyio
async def test_errors_as_http_200(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, limit=2, errors_as_http_200=True)
    async with client(sim) as http, client(sim, token=None) as anonymous:
        unauthorized = await anonymous.post("/v1/generate", json={"prompt": "p"})
        invalid = await http.post("/v1/generate", json={})
        missing = await http.get("/v1/status", params={"task_id": "task_404"})
        limited = await http.post("/v1/generate", json={"prompt": "p"})
    assert [r.status_code for r in (unauthorized, invalid, missing, limited)] == [200] * 4
    assert unauthorized.json()["code"] == 401
    assert invalid.json()["code"] == 400
    assert missing.json() == {"code": 404, "message": "Task not found", "error": "NOT_FOUND"}
    assert limited.json()["code"] == 429
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" in limited.headers
    assert sim.stats.rate_limited == 1


# Videos


@pytest.mark.anyio
async def test_video_download_headers_bytes_and_auth_recording(clock: ManualClock) -> None:
    sim = Simulator(
        clock=clock, limit=1, generation_time=(0.0, 0.0), videos_per_task=2, video_bytes=1000
    )
    async with client(sim) as http, client(sim, token=None) as anonymous:
        task_id = await create(http)
        urls = [f"{BASE}/videos/{task_id}/{n}.mp4" for n in (1, 2)]
        first = await anonymous.get(urls[0])
        second = await http.get(urls[1])
        head = await anonymous.head(urls[0])
        beyond = await anonymous.get(f"{BASE}/videos/{task_id}/3.mp4")
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "video/mp4"
    assert first.headers["content-length"] == "1000"
    assert len(first.content) == 1000
    assert first.content[4:8] == b"ftyp"
    assert first.content != second.content
    # Downloads are neither authenticated nor counted: the token's one request is long gone.
    assert "x-ratelimit-remaining" not in first.headers
    assert head.headers["content-length"] == "1000"
    assert head.content == b""
    assert beyond.status_code == 404
    stats = sim.stats
    assert stats.video_requests == 4
    assert stats.video_requests_with_auth == 1
    assert all(not r.counted for r in stats.log if r.endpoint == "video")


@pytest.mark.anyio
async def test_video_urls_expire_and_wait_for_completion(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, generation_time=(10.0, 10.0), video_ttl=60.0)
    async with client(sim) as http:
        task_id = await create(http)
        early = await http.get(f"/videos/{task_id}/1.mp4")
        clock.advance(10.0)
        (url,) = (await status(http, task_id))["response"]
        clock.advance(59.0)
        fresh = await http.get(url)
        clock.advance(1.0)
        expired = await http.get(url)
    assert early.status_code == 404
    assert fresh.status_code == 200
    assert expired.status_code == 403
    assert expired.headers["content-type"] == "application/xml"
    assert b"<Code>AccessDenied</Code>" in expired.content


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("api_url", "template", "video_prefix"),
    [
        (BASE, "http://cdn.test/", "http://cdn.test/videos/task_"),
        ("http://localhost:8123", "http://127.0.0.1:{port}", "http://127.0.0.1:8123/videos/"),
        ("https://api.test", "{scheme}://media.{host}:{port}", "https://media.api.test:443/"),
        ("http://[::1]:81", "http://{host}:{port}/cdn", "http://[::1]:81/cdn/videos/"),
    ],
)
async def test_video_base_url_puts_videos_on_another_host(
    clock: ManualClock, api_url: str, template: str, video_prefix: str
) -> None:
    sim = Simulator(clock=clock, generation_time=(0.0, 0.0), video_base_url=template)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=api_url, headers=AUTH) as http:
        data = await status(http, await create(http))
    assert data["response"][0].startswith(video_prefix)


# Stats


def test_max_in_window_uses_half_open_windows() -> None:
    def record(t: float, counted: bool = True) -> RequestRecord:
        return RequestRecord(t, "generate", 200 if counted else 429, counted)

    stats = SimulatorStats(period=60.0)
    assert stats.max_in_window() == 0
    stats.log = [record(61), record(0), record(10), record(59.9), record(60), record(30, False)]
    assert stats.max_in_window() == 4
    assert stats.max_in_window(1.0) == 2
    assert stats.max_in_window(0.05) == 1
    assert stats.max_in_window(1000) == 5


@pytest.mark.anyio
async def test_stats_round_trip_and_control_endpoints(clock: ManualClock) -> None:
    sim = Simulator(clock=clock)
    async with client(sim) as http:
        task_id = await create(http, "first prompt")
        await create(http, "first prompt")
        await create(http, "second prompt")
        served = (await http.get("/_sim/stats")).json()
        local = sim.stats
        assert served == json.loads(json.dumps(local.to_dict()))
        rebuilt = SimulatorStats.from_dict(served)
        assert rebuilt.to_dict() == local.to_dict()
        assert Counter(r["prompt"] for r in rebuilt.created_requests()) == Counter(
            {"first prompt": 2, "second prompt": 1}
        )
        assert local.by_status == Counter({200: 3})
        assert local.log[0] == RequestRecord(START, "generate", 200, True)

        sim.inject("html", endpoint="video")
        reset = await http.post("/_sim/reset")
        assert reset.status_code == 200
        gone = await http.get("/v1/status", params={"task_id": task_id})
    assert gone.status_code == 404
    after = sim.stats
    # The control endpoints are not part of what the simulated API saw.
    assert after.requests == 1
    assert after.tasks_created == 0
    assert sim.tasks == {}
    # Faults are set up by the test, not by traffic, so a reset keeps them.
    assert sim.pending_faults == 1


@pytest.mark.anyio
async def test_a_reset_draws_the_same_tasks_again_with_fresh_ids(clock: ManualClock) -> None:
    sim = Simulator(clock=clock, seed=7, generation_time=(2, 8), failure_rate=0.3)

    async def draw() -> list[tuple[str, float, bool]]:
        async with client(sim) as http:
            ids = [await create(http, f"prompt {i}") for i in range(20)]
        tasks = sim.tasks
        return [(i, tasks[i].finished_at - tasks[i].created_at, tasks[i].failed) for i in ids]

    first = await draw()
    sim.reset()
    second = await draw()
    # Two runs against one simulator meet the same generations, in the same order...
    assert [(d, f) for _, d, f in first] == [(d, f) for _, d, f in second]
    assert len({d for _, d, _ in first}) == 20
    # ...and an id from before the reset never finds a task made after it.
    assert not {i for i, _, _ in first} & {i for i, _, _ in second}


# Config


def test_config_tiers_overrides_and_validation() -> None:
    assert Simulator(tier="pro").config.limit == 1000
    assert SimulatorConfig.for_tier("enterprise").limit == 5000
    assert Simulator(SimulatorConfig(limit=5), period=2.0).config.period == 2.0
    config = SimulatorConfig(status_words={"running": "generating"})
    assert dict(config.status_words) == {
        "pending": "pending",
        "running": "generating",
        "completed": "completed",
        "failed": "failed",
    }
    bad: list[dict[str, Any]] = [
        {"limit": 0},
        {"period": 0},
        {"rate_model": "token_bucket"},
        {"burst": 0},
        {"burst": 2.5},
        {"burst": True},
        {"reset_format": "iso"},
        {"background_share": 1.5},
        {"generation_time": (5.0, 1.0)},
        {"failure_rate": -0.1},
        {"failure_messages": {}},
        {"videos_per_task": -1},
        {"status_words": {"done": "x"}},
        {"tokens": {"a": 0}},
    ]
    for fields in bad:
        with pytest.raises(ValueError):  # noqa: PT011 - each field has its own message
            SimulatorConfig(**fields)
    with pytest.raises(ValueError, match="tier"):
        Simulator(tier="gold")


@pytest.mark.anyio
async def test_lifespan_messages_are_answered() -> None:
    sim = Simulator()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await sim({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# Real sockets


@pytest.mark.anyio
async def test_serve_over_a_real_socket() -> None:
    sim = Simulator(
        generation_time=(0.0, 0.0), video_bytes=2048, video_base_url="http://localhost:{port}"
    )
    tasks_before = asyncio.all_tasks()
    async with sim.serve() as base_url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as http:
            created = await http.post("/v1/generate", json={"prompt": "over tcp"})
            assert created.status_code == 200
            assert created.headers["x-ratelimit-remaining"] == "99"
            task_id = created.json()["data"]["task_id"]
            data = (await http.get("/v1/status", params={"task_id": task_id})).json()["data"]
            assert data["status"] == "completed"
            (url,) = data["response"]
            port = base_url.rsplit(":", 1)[1]
            assert url == f"http://localhost:{port}/videos/{task_id}/1.mp4"

            sim.inject("reset_after", endpoint="generate")
            with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
                await http.post("/v1/generate", json={"prompt": "dropped"})
            assert sim.stats.tasks_created == 2

            sim.inject(Fault.delay(30.0))
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/v1/generate", json={"prompt": "slow"}, timeout=0.2)
            assert (await http.get("/v1/status", params={"task_id": task_id})).status_code == 200
        async with httpx.AsyncClient() as anonymous:
            video = await anonymous.get(url)
        assert video.status_code == 200
        assert len(video.content) == 2048
    stats = sim.stats
    assert stats.tasks_created == 3
    assert stats.video_requests == 1
    assert stats.video_requests_with_auth == 0
    assert [r["prompt"] for r in stats.created_requests()] == ["over tcp", "dropped", "slow"]
    assert asyncio.all_tasks() == tasks_before


def test_serve_in_thread_with_a_dropped_connection() -> None:
    sim = Simulator(limit=50)
    with serve_in_thread(sim) as base_url, httpx.Client(base_url=base_url, headers=AUTH) as http:
        assert http.post("/v1/generate", json={"prompt": "one"}).status_code == 200
        sim.inject("reset_before", endpoint="generate")
        with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
            http.post("/v1/generate", json={"prompt": "lost"})
        eventually(lambda: sim.stats.by_status[0] == 1)
        served = SimulatorStats.from_dict(http.get("/_sim/stats").json())
        assert served.tasks_created == 1
        assert served.by_status == Counter({200: 1, 0: 1})
        assert http.post("/v1/generate", json={"prompt": "two"}).status_code == 200
    assert not [t for t in threading.enumerate() if t.name == "grokimagine-simulator"]
    assert [r["prompt"] for r in sim.stats.created_requests()] == ["one", "two"]


def test_new_faults_and_unreported_tasks_over_real_sockets() -> None:
    sim = Simulator(limit=50, generation_time=(0.0, 0.0))
    with serve_in_thread(sim) as base_url, httpx.Client(base_url=base_url, headers=AUTH) as http:
        sim.inject("server_error_after", endpoint="generate")
        failed = http.post("/v1/generate", json={"prompt": "500 after"})
        assert failed.status_code == 500
        assert failed.json()["error"] == "SERVER_ERROR"

        sim.inject("reset_after", endpoint="generate")
        with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
            http.post("/v1/generate", json={"prompt": "dropped"})

        # The client hangs up on a delayed answer: the server sees the disconnect.
        sim.inject(Fault.delay(30.0), endpoint="generate")
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/generate", json={"prompt": "gave up"}, timeout=0.2)
        eventually(lambda: sim.stats.tasks_unreported == 3)

        created = http.post("/v1/generate", json={"prompt": "seen"})
        task_id = created.json()["data"]["task_id"]
        sim.inject("status_backwards")
        backwards = http.get("/v1/status", params={"task_id": task_id}).json()["data"]
        done = http.get("/v1/status", params={"task_id": task_id}).json()["data"]
        assert (backwards["status"], backwards["response"]) == ("processing", [])
        assert done["status"] == "completed"

        (url,) = done["response"]
        sim.inject("video_not_found", times=2)
        with httpx.Client() as anonymous:
            missing = anonymous.get(url)
            retried = anonymous.get(url)
        assert missing.status_code == 404
        assert b"NoSuchKey" in missing.content
        assert retried.status_code == 200

        served = SimulatorStats.from_dict(http.get("/_sim/stats").json())
    assert served.tasks_created == 4
    assert served.tasks_unreported == 3
    assert [r["prompt"] for r in served.unreported_requests()] == [
        "500 after",
        "dropped",
        "gave up",
    ]
    assert served.faults == Counter(
        {
            "server_error_after": 1,
            "reset_after": 1,
            "delay": 1,
            "status_backwards": 1,
            "video_not_found": 1,
        }
    )


@pytest.mark.anyio
async def test_serving_without_uvicorn_explains_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    sim = Simulator()
    with pytest.raises(ImportError, match=r"grokimagine-async\[simulator\]"):
        async with sim.serve():
            pass
    with pytest.raises(ImportError, match=r"pip install"), sim.serve_in_thread():
        pass


# Command line


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--port",
        "--tier",
        "--rate-model",
        "--burst",
        "--no-rate-headers",
        "--generation-time",
        "--background-share",
    ):
        assert flag in out


def test_cli_arguments_become_config() -> None:
    config, host, port, seed = parse_args(
        [
            "--port",
            "0",
            "--tier",
            "pro",
            "--rate-model",
            "gcra",
            "--reset-format",
            "epoch_ms",
            "--generation-time",
            "1",
            "2.5",
            "--failure-rate",
            "0.25",
            "--background-share",
            "0.1",
            "--retry-after",
            "none",
            "--errors-as-http-200",
            "--seed",
            "9",
        ]
    )
    assert (host, port, seed) == ("127.0.0.1", 0, 9)
    assert config.limit == 1000
    assert config.rate_model == "gcra"
    assert config.reset_format == "epoch_ms"
    assert config.generation_time == (1.0, 2.5)
    assert config.failure_rate == 0.25
    assert config.background_share == 0.1
    assert config.retry_after is None
    assert config.errors_as_http_200
    assert parse_args(["--limit", "7"])[0].limit == 7


def test_cli_rate_models_burst_and_no_rate_headers(capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_args(["--rate-model", "leaky", "--burst", "3", "--no-rate-headers"])[0]
    assert (config.rate_model, config.burst, config.rate_headers) == ("leaky", 3, False)
    default = parse_args([])[0]
    assert (default.burst, default.rate_headers) == (None, True)
    approximate = parse_args(["--rate-model", "approximate", "--count-rejected"])[0]
    assert (approximate.rate_model, approximate.count_rejected) == ("approximate", True)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--burst", "3"])
    assert exited.value.code == 2
    assert "--burst needs --rate-model leaky" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--rate-model", "leaky", "--burst", "0"])
    assert "--burst must be a whole number of requests >= 1, got 0" in capsys.readouterr().err

    # grokimagine simulate hands its arguments to the same parser.
    shown = CliRunner().invoke(cli_app, ["simulate", "--help"])
    assert shown.exit_code == 0
    for text in ("--burst", "--no-rate-headers", "leaky", "approximate"):
        assert text in shown.output


@pytest.mark.parametrize(
    "program", [["grokimagine_async.simulator"], ["grokimagine_async", "simulate"]]
)
def test_cli_serves_until_terminated(program: list[str]) -> None:
    command = [sys.executable, "-m", *program, "--port", "0", "--limit", "5", "--period", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    # readline() has no timeout of its own; a server that never starts must not hang the run.
    watchdog = threading.Timer(20.0, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        assert "Bearer" in process.stdout.readline()
        # How to point a client at it, compressed minute included (else it keeps to a
        # real minute and stalls).
        hint = process.stdout.readline()
        assert f"GROKIMAGINE_BASE_URL={match[1]}" in hint
        assert "GROKIMAGINE_RATE_LIMIT=5/2s" in hint
        answer = httpx.post(
            f"{match[1]}/v1/generate", json={"prompt": "p"}, headers=AUTH, timeout=5
        )
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-remaining"] == "4"
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_haproxy_counter_starts_at_the_first_request_and_lets_in_only_whole_requests() -> None:
    from grokimagine_async.simulator._counters import ApproximateLimiter, HAProxyLimiter

    haproxy = HAProxyLimiter(10, 10.0)
    aligned = ApproximateLimiter(10, 10.0, origin=0.0)
    assert haproxy.window(1.0).remaining == 10
    # The first request, at 3 s, starts HAProxy's window; the aligned counter's started at 0.
    assert [haproxy.acquire(3.0, count_rejected=False) for _ in range(11)] == [True] * 10 + [False]
    for _ in range(10):
        aligned.acquire(3.0, count_rejected=False)
    # 0.5 s into HAProxy's second window the first weighs 9.5: half a request fits, which
    # HAProxy (rounding up, the request counted first) refuses; the aligned counter, 3.5 s
    # into its second window (6.5 still weighing), lets four in (9.5 is under 10).
    assert haproxy.window(13.5).remaining == 0
    assert not haproxy.acquire(13.5, count_rejected=False)
    assert [aligned.acquire(13.5, count_rejected=False) for _ in range(5)] == [True] * 4 + [False]
    # A whole request fits once the first window weighs 9, a tenth into the second.
    assert 14.0 <= haproxy.window(13.5).retry_at <= 14.01
    assert haproxy.acquire(14.0, count_rejected=False)
    assert not haproxy.acquire(14.0, count_rejected=False)
    # Two idle periods: the count is gone, and the next request starts a window afresh.
    assert haproxy.window(33.0).remaining == 10
    assert [haproxy.acquire(40.0, count_rejected=False) for _ in range(11)] == [True] * 10 + [False]
    assert haproxy.window(50.5).remaining == 0


def test_serve_under_trio_says_to_serve_in_a_thread() -> None:
    import trio

    async def main() -> None:
        async with Simulator().serve():
            pass  # pragma: no cover - it refuses first

    with pytest.raises(RuntimeError, match=r"serve_in_thread"):
        trio.run(main)
