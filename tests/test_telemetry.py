"""Traces and metrics through OpenTelemetry, read back with the SDK's in-memory
exporters: the spans' names, attributes and parents, the metrics, and that the
token and (unless asked for) the prompts never appear."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind

from grokimagine_async import AsyncClient, NotFoundError, RateLimit
from grokimagine_async._telemetry import ENV_CAPTURE_PROMPTS, PROVIDER
from grokimagine_async.simulator import Fault, Simulator

from .helpers import TOKEN

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]


class _WhileHere(Sampler):
    """Records spans only while a test of this file runs: the providers, set once for
    the process, stay set for the other tests a worker runs after these."""

    recording = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if not self.recording:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "while a telemetry test runs"


# Global providers can be set once a process: these serve every test here.
_SPANS = InMemorySpanExporter()
_READER = InMemoryMetricReader()
_SAMPLER = _WhileHere()
_tracing = TracerProvider(sampler=_SAMPLER)
_tracing.add_span_processor(SimpleSpanProcessor(_SPANS))
trace.set_tracer_provider(_tracing)
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))

PROMPT = "a fox in the snow, secret project"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _SPANS.clear()
    _SAMPLER.recording = True
    try:
        yield _SPANS
    finally:
        _SAMPLER.recording = False
        _SPANS.clear()


def client_of(sim: Simulator) -> AsyncClient:
    http = httpx.AsyncClient(transport=sim.transport(), base_url="http://127.0.0.1:9")
    return AsyncClient(
        TOKEN,
        base_url="http://127.0.0.1:9",
        http_client=http,
        rate_limit=RateLimit(100, 1.0),
        poll_interval=0.05,
        backoff=0.01,
    )


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def points(name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """The metric's data points now, by their attributes."""
    found: dict[tuple[tuple[str, Any], ...], Any] = {}
    data = _READER.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[tuple(sorted((point.attributes or {}).items()))] = point
    return found


def everything(spans: InMemorySpanExporter) -> str:
    """Every span's name, attributes and events, as text."""
    return json.dumps(
        [
            [
                s.name,
                dict(s.attributes or {}),
                [(e.name, dict(e.attributes or {})) for e in s.events],
            ]
            for s in spans.get_finished_spans()
        ],
        default=str,
    )


async def test_a_submission_is_a_span_with_its_http_attempt_inside(
    spans: InMemorySpanExporter,
) -> None:
    sim = Simulator(generation_time=(0.05, 0.1), seed=1)
    async with client_of(sim) as client:
        task_id = await client.submit(prompt=PROMPT)
    (call,) = named(spans, "grokimagine submit")
    assert call.attributes is not None
    assert call.attributes["gen_ai.operation.name"] == "submit"
    assert call.attributes["gen_ai.provider.name"] == PROVIDER
    assert call.attributes["grokimagine.task.id"] == task_id
    assert call.attributes["grokimagine.credits"] == 40
    (attempt,) = named(spans, "POST")
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.parent is not None
    assert attempt.parent.span_id == call.context.span_id
    assert attempt.attributes == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": 9,
        "url.full": "http://127.0.0.1:9/v1/generate",
        "http.response.status_code": 200,
    }
    assert [e.name for e in attempt.events] == ["grokimagine.rate_limiter.wait"]
    text = everything(spans)
    assert TOKEN not in text
    assert "secret project" not in text


async def test_prompts_are_recorded_only_when_asked_for(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CAPTURE_PROMPTS, "1")
    sim = Simulator(seed=1)
    async with client_of(sim) as client:
        await client.submit(prompt=PROMPT)
    (call,) = named(spans, "grokimagine submit")
    assert call.attributes is not None
    assert call.attributes["gen_ai.prompt"] == PROMPT
    assert TOKEN not in everything(spans)


async def test_a_retry_is_a_second_attempt_that_says_so(spans: InMemorySpanExporter) -> None:
    sim = Simulator(seed=1)
    sim.inject(Fault.rate_limited(retry_after=0.0), endpoint="status")
    async with client_of(sim) as client:
        task_id = await client.submit(prompt="a boat")
        before = points("grokimagine.rate_limited")
        await client.get_task(task_id)
    (call,) = named(spans, "grokimagine get_task")
    first, second = sorted(named(spans, "GET"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["http.response.status_code"] == 429
    assert first.attributes["error.type"] == "429"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert {first.parent.span_id, second.parent.span_id} == {call.context.span_id}  # type: ignore[union-attr]
    after = points("grokimagine.rate_limited")
    assert sum(p.value for p in after.values()) - sum(p.value for p in before.values()) == 1


async def test_a_failed_call_is_marked_with_its_error(spans: InMemorySpanExporter) -> None:
    sim = Simulator(seed=1)
    async with client_of(sim) as client:
        with pytest.raises(NotFoundError):
            await client.get_task("no-such-task")
    (call,) = named(spans, "grokimagine get_task")
    assert call.attributes is not None
    assert call.attributes["error.type"] == "NotFoundError"
    assert not call.status.is_ok


async def test_a_batch_row_is_a_span_and_the_metrics_count_the_batch(
    spans: InMemorySpanExporter,
) -> None:
    sim = Simulator(generation_time=(0.05, 0.1), seed=3)
    requests = [{"prompt": f"video {i}"} for i in range(5)]
    before_credits = points("grokimagine.credits")
    async with client_of(sim) as client:
        async for outcome in client.generate_many(requests):
            assert outcome.ok
        usage = points("grokimagine.rate_limit.usage")
    rows = named(spans, "grokimagine batch row")
    assert len(rows) == 5
    for row in rows:
        assert row.attributes is not None
        assert row.attributes["grokimagine.outcome"] == "completed"
        assert row.attributes["grokimagine.credits"] == 40
        assert row.attributes["gen_ai.provider.name"] == PROVIDER
    row_ids = {row.context.span_id for row in rows}
    posts = named(spans, "POST")
    assert len(posts) == 5
    assert {p.parent.span_id for p in posts if p.parent} == row_ids
    credits = sum(p.value for p in points("grokimagine.credits").values())
    assert credits - sum(p.value for p in before_credits.values()) == 200
    videos = points("grokimagine.videos")
    assert videos[(("grokimagine.outcome", "completed"),)].value >= 5
    kinds = {dict(k)["grokimagine.request.kind"] for k in points("grokimagine.requests")}
    assert kinds == {"submit", "read"}
    durations = points("http.client.request.duration")
    assert any(dict(k).get("http.response.status_code") == 200 for k in durations)
    assert points("grokimagine.rate_limiter.wait")
    assert usage
    assert all(0.0 <= p.value <= 1.0 for p in usage.values())
    assert TOKEN not in everything(spans)


def test_without_the_api_the_client_works_and_records_nothing(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"  # as if the extra were not installed
        "import anyio, httpx\n"
        "from grokimagine_async import AsyncClient, RateLimit, _telemetry\n"
        "from grokimagine_async.simulator import Simulator\n"
        "async def main():\n"
        "    sim = Simulator(generation_time=(0.05, 0.1))\n"
        "    http = httpx.AsyncClient(transport=sim.transport())\n"
        "    async with AsyncClient('sk-test-otel-absent', base_url='http://127.0.0.1:9',\n"
        "                           http_client=http,\n"
        "                           rate_limit=RateLimit(100, 1.0), poll_interval=0.05) as c:\n"
        "        task = await c.generate(prompt='a fox')\n"
        "    print(_telemetry.ENABLED, task.state.value)\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "completed"]


async def test_rows_left_when_a_batch_is_closed_end_their_spans(
    spans: InMemorySpanExporter,
) -> None:
    sim = Simulator(generation_time=(30.0, 40.0), seed=4)
    async with client_of(sim) as client:
        requests = [{"prompt": f"video {i}"} for i in range(3)]
        async with client.generate_many(requests) as results:
            with anyio.fail_after(10):
                while results.progress.running < 3:  # noqa: ASYNC110 - the batch's state
                    await anyio.sleep(0.01)
    rows = named(spans, "grokimagine batch row")
    assert len(rows) == 3
    assert {r.attributes["grokimagine.outcome"] for r in rows if r.attributes} == {"closed"}
