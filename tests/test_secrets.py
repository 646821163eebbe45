"""The API token is a secret: it goes on the API's own calls and nowhere else.

Not in a log line at any level (the library's, httpx's, httpcore's), not in a
``repr``/``str`` of the client, a pipeline, an outcome, a task or any exception
(nor in their causes or tracebacks), not in the journal, and not on any request
but the API calls: downloads and their redirects never carry it.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from grokimagine_async import (
    AsyncClient,
    AuthenticationError,
    GrokImagineError,
    NotFoundError,
    OutcomeStatus,
    RateLimit,
)
from grokimagine_async.simulator import Fault, FaultEndpoint, Simulator

from .helpers import TOKEN, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]

WRONG_TOKEN = "sk-wrong-SECRET-5d1e0b"


class Everything(logging.Handler):
    """Every record of every logger, formatted as a log file would show it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def every_log_line() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    names = ("grokimagine_async", "httpx", "httpcore", "asyncio")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    root_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for logger, _ in saved:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for logger, level in saved:
            logger.setLevel(level)


def texts_of(error: BaseException) -> list[str]:
    """All a user, a log or an error tracker can see of an exception and its causes."""
    seen: list[str] = []
    current: BaseException | None = error
    while current is not None:
        seen += [str(current), repr(current), repr(vars(current))]
        seen.append("".join(traceback.format_exception(current)))
        current = current.__cause__ or current.__context__
    return seen


async def test_the_token_goes_on_api_calls_and_nowhere_else(
    tmp_path: Path, every_log_line: Everything
) -> None:
    sim = Simulator(
        limit=200,
        period=1.0,
        generation_time=(0.05, 0.2),
        videos_per_task=2,
        video_redirect=True,
        failure_rate=0.2,
        api_keys=[TOKEN],
        seed=5,
    )
    # Answers that go wrong in every way the wire reads: each path that builds an
    # error message or a log line from what came back.
    faults: list[tuple[Fault, FaultEndpoint]] = [
        (Fault.server_error(), "generate"),
        (Fault.html(502), "generate"),
        (Fault.reset_before(), "generate"),
        (Fault.reset_after(), "generate"),
        (Fault.truncated_json(), "status"),
        (Fault.error_in_200(503), "status"),
        (Fault.html(504), "status"),
        (Fault.reset_after(), "video"),
    ]
    for fault, endpoint in faults:
        sim.inject(fault, endpoint=endpoint)
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    texts: list[str] = []
    journal = tmp_path / "batch.db"
    videos = tmp_path / "videos"
    async with (
        serving(sim) as url,
        httpx.AsyncClient(event_hooks={"request": [record]}, timeout=30) as http,
        AsyncClient(
            TOKEN,
            base_url=url,
            http_client=http,
            rate_limit=RateLimit(200, 1.0),
            poll_interval=0.05,
            backoff=0.01,
        ) as client,
    ):
        texts += [repr(client), str(client)]
        with anyio.fail_after(30):
            async with client.generate_many(
                [{"prompt": f"video {i}"} for i in range(10)], journal=journal
            ) as results:
                texts += [repr(results), str(results)]
                async for outcome in results:
                    texts += [repr(outcome), str(outcome), repr(outcome.task)]
                    if outcome.error is not None:
                        texts += texts_of(outcome.error)
                    if outcome.status is OutcomeStatus.COMPLETED and outcome.task is not None:
                        try:
                            await client.download(outcome.task, videos)
                        except GrokImagineError as exc:
                            texts += texts_of(exc)
            with pytest.raises(NotFoundError) as missing:
                await client.get_task("no-such-task")
            texts += texts_of(missing.value)
        async with AsyncClient(
            WRONG_TOKEN, base_url=url, http_client=http, rate_limit=RateLimit(200, 1.0)
        ) as stranger:
            texts.append(repr(stranger))
            with pytest.raises(AuthenticationError) as refused:
                await stranger.submit(prompt="a fox")
            texts += texts_of(refused.value)

    texts += every_log_line.lines
    texts += [p.name for p in videos.iterdir()]
    # The test sees what it means to search: errors, retries, downloads, debug lines.
    assert any("retrying" in t for t in every_log_line.lines)
    assert any(t.startswith("httpcore") for t in every_log_line.lines)
    assert any(t.startswith("httpx") for t in every_log_line.lines)
    assert sim.stats.video_requests > 0
    for text in texts:
        assert TOKEN not in text
        assert WRONG_TOKEN not in text
    stored = journal.read_bytes()
    assert TOKEN.encode() not in stored
    assert not journal.with_name(journal.name + "-wal").exists()

    api = httpx.URL(url)
    for request in seen:
        authorization = request.headers.get("authorization")
        is_api_call = request.url.host == api.host and request.url.port == api.port
        is_api_call = is_api_call and request.url.path in ("/v1/generate", "/v1/status")
        if is_api_call:
            assert authorization in (f"Bearer {TOKEN}", f"Bearer {WRONG_TOKEN}")
        else:
            assert authorization is None, request.url
    assert any("/videos/" in str(r.url) and "sig=" in str(r.url) for r in seen)
    assert sim.stats.video_requests_with_auth == 0


#: A token with characters JSON may escape: an echo of it need not show it plainly.
SLASHED = "sk-test/SECRET+9e2b"


async def test_a_server_that_echoes_the_token_gets_it_masked_everywhere(
    every_log_line: Everything,
) -> None:
    escaped = SLASHED.replace("/", "\\/")
    body = json.dumps(
        {"code": 500, "message": f"bad token {SLASHED}", "error": "SERVER_ERROR"}
    ).replace(SLASHED, escaped)
    answer = (
        "HTTP/1.1 500 Internal Server Error\r\n"
        f"X-Echo: Bearer {SLASHED}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    served = 0

    async def echo(stream: anyio.abc.SocketStream) -> None:
        nonlocal served
        async with stream:
            await stream.receive()
            served += 1
            await stream.send(answer)

    texts: list[str] = []
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            async with AsyncClient(
                SLASHED, base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01
            ) as client:
                with pytest.raises(GrokImagineError) as failed:
                    await client.get_task("task_1")
                texts += texts_of(failed.value)
            tg.cancel_scope.cancel()
    texts += every_log_line.lines
    assert served == 2
    # The echo reached the logs (httpcore's trace of the headers), masked.
    assert any("X-Echo" in line for line in every_log_line.lines)
    assert "bad token" in str(failed.value)
    for text in texts:
        assert SLASHED not in text
        assert escaped not in text
