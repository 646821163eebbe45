"""The FastAPI example, through its ASGI app, against the simulator."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from grokimagine_async import AsyncClient, RateLimit
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN, load_example

pytestmark = pytest.mark.anyio


async def test_start_follow_and_stream_a_video(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)  # the module builds a default app too
    example = load_example("fastapi_app")
    sim = Simulator(generation_time=(0.2, 0.4), seed=1)
    async with sim.serve() as url:
        app = example.create_app(
            lambda: AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, 1.0)),
            poll_every=0.05,
        )
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as http,
        ):
            with anyio.fail_after(10):
                bad = await http.post("/videos", json={"prompt": "p", "ratio": "16:9"})
                started = await http.post("/videos", json={"prompt": "a fox"})
                task_id = started.json()["task_id"]
                first = (await http.get(f"/videos/{task_id}")).json()
                unknown = await http.get("/videos/no-such-task")
                events = []
                async with http.stream("GET", f"/videos/{task_id}/events") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
    assert bad.status_code == 422
    assert bad.json()["detail"]["field"] == "ratio"
    # Advice for the web caller, in the JSON body's terms, not for a Python caller.
    assert bad.json()["detail"]["fix"] == 'send "ratio" as one of 1:1, 2:3, 3:2'
    assert "Unchecked" not in bad.text
    assert started.status_code == 202
    assert first["task_id"] == task_id
    assert first["state"] in ("pending", "running")
    assert events[-1]["state"] == "completed"
    assert events[-1]["videos"]
    assert sim.stats.tasks_created == 1
    # An id the API does not know is the web caller's 404, and how this app reaches
    # the API stays inside it.
    assert unknown.status_code == 404
    assert url not in unknown.text
    assert "/v1/" not in unknown.text
