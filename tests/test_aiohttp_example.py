"""The aiohttp example, through aiohttp's test client, against the simulator."""

from __future__ import annotations

import json

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

from grokimagine_async import AsyncClient, RateLimit
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, load_example

pytestmark = pytest.mark.anyio


async def test_start_follow_and_stream_a_video() -> None:
    example = load_example("aiohttp_app")
    sim = Simulator(generation_time=(0.2, 0.4), seed=1)
    async with sim.serve() as url:
        app = example.create_app(
            lambda: AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0)),
            poll_every=0.05,
        )
        async with TestClient(TestServer(app)) as http:
            with anyio.fail_after(10):
                bad = await http.post("/videos", json={"prompt": ""})
                bad_body = await bad.json()
                started = await http.post("/videos", json={"prompt": "a fox"})
                task_id = (await started.json())["task_id"]
                first = await (await http.get(f"/videos/{task_id}")).json()
                unknown = await http.get("/videos/no-such-task")
                unknown_text = await unknown.text()
                response = await http.get(f"/videos/{task_id}/events")
                text = await response.text()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert bad.status == 422
    assert bad_body["detail"]["field"] == "prompt"
    assert started.status == 202
    assert first["task_id"] == task_id
    assert events[-1]["state"] == "completed"
    assert events[-1]["videos"]
    assert sim.stats.tasks_created == 1
    # An unknown id is the web caller's 404, and the upstream URL stays inside.
    assert unknown.status == 404
    assert url not in unknown_text
    assert "/v1/" not in unknown_text
