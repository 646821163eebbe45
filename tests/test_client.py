"""The client against a scripted API: every error path and retry rule."""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import httpx
import pytest

from grokimagine_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    GrokImagineError,
    MalformedResponseError,
    NotFoundError,
    RateLimit,
    RateLimitError,
    RequestValidationError,
    ServerError,
    SubmitUncertainError,
    Task,
    TaskFailedError,
    TaskPollError,
    TaskState,
    TaskTimeoutError,
    Tier,
)

from .helpers import SIM_URL, TOKEN, Recorder, api_error, make_client, ok

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]

# Waits of a second or two that a header asks for, in each of its formats: how it is
# written is the parser's business (test_limiter), the same on every backend, so trio
# waits for one format of each header.
PARSER_ONLY = pytest.mark.backends("asyncio", reason="the header's format is the parser's")

TASK: dict[str, object] = {
    "task_id": "task_1",
    "status": "processing",
    "error_message": None,
    "response": [],
}


def retry_delays(records: list[logging.LogRecord]) -> list[float]:
    found = []
    for record in records:
        match = re.search(r"in (\d+\.\d+)s", record.getMessage())
        if record.levelno == logging.INFO and match:
            found.append(float(match.group(1)))
    return found


# --- construction ----------------------------------------------------------------


def test_no_token_says_how_to_give_one() -> None:
    with pytest.raises(ConfigurationError, match="GROKIMAGINE_API_KEY"):
        AsyncClient()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROKIMAGINE_API_KEY", TOKEN)
    monkeypatch.setenv("GROKIMAGINE_BASE_URL", "http://127.0.0.1:8000/")
    monkeypatch.setenv("GROKIMAGINE_TIER", "Pro")
    client = AsyncClient()
    assert str(client.base_url) == "http://127.0.0.1:8000"
    assert client.rate_limit == Tier.PRO.rate_limit


def test_unset_tier_means_free_figures() -> None:
    assert AsyncClient(TOKEN).rate_limit.requests == 100


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tier": "gold"}, "free, pro, enterprise"),
        ({"base_url": "ftp://x"}, "http(s) URL"),
        ({"base_url": "https://x/?a=1"}, "query"),
        ({"max_retries": -1}, "max_retries"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"rate_limit": 5}, "RateLimit("),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        AsyncClient(TOKEN, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["http://api.example.com", "http://10.0.0.7:8000", "http://localhost.example.com"]
)
def test_plain_http_to_another_machine_is_refused_and_names_the_opt_in(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    with pytest.raises(ConfigurationError) as info:
        AsyncClient(TOKEN, base_url=url)
    message = str(info.value)
    for opt_in in (
        "allow_insecure_http=True",
        "--allow-insecure-http",
        "GROKIMAGINE_ALLOW_INSECURE_HTTP=1",
        "https://",
    ):
        assert opt_in in message
    assert TOKEN not in message
    assert str(AsyncClient(TOKEN, base_url=url, allow_insecure_http=True).base_url) == url
    monkeypatch.setenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", "1")
    assert str(AsyncClient(TOKEN, base_url=url).base_url) == url
    # The argument wins over the environment.
    with pytest.raises(ConfigurationError, match="clear text"):
        AsyncClient(TOKEN, base_url=url, allow_insecure_http=False)
    monkeypatch.setenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", "perhaps")
    with pytest.raises(ConfigurationError, match="GROKIMAGINE_ALLOW_INSECURE_HTTP='perhaps'"):
        AsyncClient(TOKEN, base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.8.9.10",
        "http://localhost:8000",
        "http://[::1]:8000",
        "http://sim.test",
        "https://api.example.com",
    ],
)
def test_loopback_test_names_and_https_need_no_opt_in(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    assert AsyncClient(TOKEN, base_url=url).base_url.host


def test_a_base_url_carrying_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncClient(TOKEN, base_url="https://me:hunter2@api.example.com")
    assert "hunter2" not in str(info.value)
    assert "api_key" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "60"])
def test_the_cap_on_server_advised_waits_is_checked(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_retry_after"):
        AsyncClient(TOKEN, max_retry_after=bad)  # type: ignore[arg-type]


def test_the_poll_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AsyncClient(TOKEN).poll_interval == 5.0
    monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "0.25")
    assert AsyncClient(TOKEN).poll_interval == 0.25
    assert AsyncClient(TOKEN, poll_interval=2).poll_interval == 2.0
    monkeypatch.setenv("GROKIMAGINE_POLL_INTERVAL", "soon")
    with pytest.raises(ConfigurationError, match=r"GROKIMAGINE_POLL_INTERVAL.*'soon'"):
        AsyncClient(TOKEN)


def test_repr_hides_the_token() -> None:
    client = AsyncClient(TOKEN)
    assert TOKEN not in repr(client)
    assert "hidden" in repr(client)


# --- the happy path ---------------------------------------------------------------


async def test_submit_sends_the_documented_request() -> None:
    api = Recorder(ok({"task_id": "task_123456789"}))
    async with make_client(api) as client:
        task_id = await client.submit(prompt="a fox in the snow", mode="normal", ratio="2:3")
    assert task_id == "task_123456789"
    (sent,) = api.requests
    assert sent.method == "POST"
    assert sent.url == "http://api.test/v1/generate"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent.content) == {
        "mode": "normal",
        "prompt": "a fox in the snow",
        "ratio": "2:3",
    }


async def test_get_task_is_one_typed_status_call() -> None:
    api = Recorder(ok({**TASK, "status": "completed", "response": ["https://cdn/x.mp4"]}))
    async with make_client(api) as client:
        task = await client.get_task("task_1")
    assert task.state is TaskState.COMPLETED
    assert task.videos == ("https://cdn/x.mp4",)
    assert api.requests[0].url.params["task_id"] == "task_1"


async def test_status_without_task_id_in_data_keeps_the_id_asked_for() -> None:
    api = Recorder(ok({"status": "queued"}))
    async with make_client(api) as client:
        task = await client.get_task("task_9")
    assert (task.task_id, task.state) == ("task_9", TaskState.PENDING)


async def test_validation_error_sends_nothing() -> None:
    api = Recorder()
    async with make_client(api) as client:
        with pytest.raises(RequestValidationError, match="mode"):
            await client.submit(prompt="p", mode="wild")
        with pytest.raises(RequestValidationError, match="task_id"):
            await client.get_task("")
    assert api.requests == []


# --- error classes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
    ],
)
async def test_client_errors_raise_their_class_without_retry(
    status: int, cls: type[APIStatusError]
) -> None:
    api = Recorder(api_error(status, "SOME_ERROR", f"message {status}"))
    async with make_client(api) as client:
        with pytest.raises(cls) as info:
            await client.get_task("task_1")
    assert info.value.status_code == status
    assert info.value.code == status
    assert info.value.error == "SOME_ERROR"
    assert info.value.api_message == f"message {status}"
    assert len(api.requests) == 1


async def test_documented_400_body_on_submit() -> None:
    api = Recorder(
        api_error(400, "INVALID_REQUEST", "Invalid request: The prompt parameter is required")
    )
    async with make_client(api) as client:
        with pytest.raises(BadRequestError, match="The prompt parameter is required"):
            await client.submit(prompt="p")
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("code", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (429, RateLimitError), (500, ServerError)],
)
async def test_error_code_inside_http_200_raises_the_same_class(
    code: int, cls: type[APIStatusError]
) -> None:
    body = {"code": code, "message": "nope", "error": "X"}
    api = Recorder(httpx.Response(200, json=body))
    # No retries, and no waiting out a 429 either (that has tests of its own).
    async with make_client(api, max_retries=0, rate_limit_patience=0) as client:
        with pytest.raises(cls) as info:
            await client.get_task("task_1")
    assert info.value.status_code == code
    assert info.value.http_status == 200


async def test_proxy_html_502_is_a_server_error_with_an_excerpt() -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    api = Recorder(httpx.Response(502, text=html, headers={"content-type": "text/html"}))
    async with make_client(api, max_retries=2) as client:
        with pytest.raises(ServerError, match="502 Bad Gateway") as info:
            await client.get_task("task_1")
    assert info.value.status_code == 502
    assert len(api.requests) == 3


@pytest.mark.parametrize(
    "body", [b"<html>oops</html>", b"", b'{"code": 200, "message": "success", "da', b'"just text"']
)
async def test_unreadable_200_is_a_typed_error_with_status_and_excerpt(body: bytes) -> None:
    api = Recorder(httpx.Response(200, content=body))
    async with make_client(api, max_retries=1) as client:
        with pytest.raises(MalformedResponseError) as info:
            await client.get_task("task_1")
    assert info.value.status_code == 200
    assert info.value.excerpt == body.decode()[:200]
    assert len(api.requests) == 2


async def test_task_of_the_wrong_shape_is_malformed_not_a_key_error() -> None:
    api = Recorder(ok({"task_id": ["not", "a", "string"]}))
    async with make_client(api) as client:
        with pytest.raises(MalformedResponseError):
            await client.get_task("task_1")


# --- retries of reads ---------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        api_error(500, "SERVER_ERROR", "x"),
        api_error(503, "UNAVAILABLE", "x"),
        httpx.Response(504, text="<html>gateway timeout</html>"),
        httpx.Response(408),
        api_error(429, "RATE_LIMITED", "slow down"),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, content=b'{"code": 200, "da'),
    ],
)
async def test_status_calls_are_retried(first: httpx.Response | Exception) -> None:
    api = Recorder(first, ok(TASK))
    async with make_client(api) as client:
        task = await client.get_task("task_1")
    assert task.task_id == "task_1"
    assert len(api.requests) == 2


async def test_retries_give_up_after_max_retries_with_the_last_error() -> None:
    api = Recorder(httpx.ReadTimeout("timed out"))
    async with make_client(api, max_retries=2) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.get_task("task_1")
    assert len(api.requests) == 3
    assert isinstance(info.value, APIConnectionError)


async def test_retry_after_seconds_is_honoured(log_records: list[logging.LogRecord]) -> None:
    api = Recorder(api_error(503, "BUSY", "x", **{"Retry-After": "0.3"}), ok(TASK))
    async with make_client(api) as client:
        await client.get_task("task_1")
    assert retry_delays(log_records) == [pytest.approx(0.3, abs=0.01)]


@PARSER_ONLY
async def test_retry_after_http_date_is_honoured(log_records: list[logging.LogRecord]) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=2)
    api = Recorder(
        api_error(429, "RATE_LIMITED", "x", **{"Retry-After": format_datetime(when, usegmt=True)}),
        ok(TASK),
    )
    async with make_client(api) as client:
        await client.get_task("task_1")
    (delay,) = retry_delays(log_records)
    assert 0.5 <= delay <= 2.1


@pytest.mark.parametrize(
    "fmt",
    [
        "delta",
        pytest.param("epoch_s", marks=PARSER_ONLY),
        pytest.param("epoch_ms", marks=PARSER_ONLY),
    ],
)
async def test_rate_limit_reset_is_honoured_on_429(
    fmt: str, log_records: list[logging.LogRecord]
) -> None:
    target = time.time() + 1.5
    value = {"delta": "1", "epoch_s": str(int(target) + 1), "epoch_ms": str(int(target * 1000))}
    api = Recorder(
        api_error(
            429,
            "RATE_LIMITED",
            "x",
            **{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": value[fmt]},
        ),
        ok(TASK),
    )
    async with make_client(api) as client:
        await client.get_task("task_1")
    (delay,) = retry_delays(log_records)
    assert 0.4 <= delay <= 2.6


async def test_a_wait_longer_than_the_cap_is_not_waited_for() -> None:
    api = Recorder(api_error(429, "RATE_LIMITED", "x", **{"Retry-After": "3600"}))
    async with make_client(api) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get_task("task_1")
    assert info.value.retry_after == 3600
    assert len(api.requests) == 1


async def test_the_cap_on_server_advised_waits_is_an_option() -> None:
    api = Recorder(api_error(503, "BUSY", "x", **{"Retry-After": "2"}), ok(TASK))
    async with make_client(api, max_retry_after=1.5) as client:
        with pytest.raises(ServerError):
            await client.get_task("task_1")
    assert len(api.requests) == 1


# --- retries of paid submissions ------------------------------------------------------


async def test_submit_is_retried_after_a_429() -> None:
    api = Recorder(api_error(429, "RATE_LIMITED", "slow down"), ok({"task_id": "task_2"}))
    async with make_client(api) as client:
        assert await client.submit(prompt="p") == "task_2"
    assert len(api.requests) == 2


async def test_submit_is_retried_when_the_connection_was_never_made() -> None:
    api = Recorder(httpx.ConnectError("connection refused"), ok({"task_id": "task_2"}))
    async with make_client(api) as client:
        assert await client.submit(prompt="p") == "task_2"
    assert len(api.requests) == 2


@pytest.mark.parametrize(
    "failure",
    [
        api_error(500, "SERVER_ERROR", "x"),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ReadTimeout("timed out"),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.Response(200, content=b""),
        httpx.Response(200, json={"code": 500, "message": "internal", "error": "SERVER_ERROR"}),
        ok({"status": "no id here"}),
    ],
)
async def test_ambiguous_submit_failure_is_not_resent(failure: httpx.Response | Exception) -> None:
    api = Recorder(failure, ok({"task_id": "task_2"}))
    async with make_client(api) as client:
        with pytest.raises(SubmitUncertainError) as info:
            await client.submit(prompt="a paid video")
    assert len(api.requests) == 1
    assert info.value.request.prompt == "a paid video"
    assert info.value.cause is not None
    assert "not resent" in str(info.value)


async def test_ambiguous_submit_is_resent_when_the_caller_allows_it() -> None:
    api = Recorder(api_error(500, "SERVER_ERROR", "x"), ok({"task_id": "task_2"}))
    async with make_client(api, retry_uncertain_submits=True) as client:
        assert await client.submit(prompt="p") == "task_2"
    assert len(api.requests) == 2


async def test_ambiguous_submit_with_retries_allowed_still_ends_uncertain() -> None:
    api = Recorder(httpx.ReadTimeout("timed out"))
    async with make_client(api, retry_uncertain_submits=True, max_retries=1) as client:
        with pytest.raises(SubmitUncertainError):
            await client.submit(prompt="p")
    assert len(api.requests) == 2


async def test_truncated_submit_answer_that_names_the_task_keeps_it() -> None:
    api = Recorder(
        httpx.Response(200, content=b'{"code":200,"message":"success","data":{"task_id":"task_77"')
    )
    async with make_client(api) as client:
        assert await client.submit(prompt="p") == "task_77"
    assert len(api.requests) == 1


async def test_submit_refused_with_4xx_is_not_uncertain() -> None:
    api = Recorder(api_error(401, "UNAUTHORIZED", "bad token"))
    async with make_client(api) as client:
        with pytest.raises(AuthenticationError):
            await client.submit(prompt="p")


async def test_submit_to_a_closed_port_is_retried_then_a_connection_error() -> None:
    # A real socket: nothing listens on the port, so the connection is never made.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncClient(
        TOKEN, base_url=f"http://127.0.0.1:{port}", backoff=0.001, max_retries=2
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.submit(prompt="p")
    assert not isinstance(info.value, SubmitUncertainError)
    assert info.value.request_sent is False


# --- waiting ---------------------------------------------------------------------------


async def test_wait_polls_until_completed() -> None:
    api = Recorder(
        ok({**TASK, "status": "queued"}),
        ok({**TASK, "status": "processing"}),
        ok({**TASK, "status": "success", "response": ["https://cdn/v.mp4"]}),
    )
    async with make_client(api, poll_interval=0.01) as client:
        task = await client.wait("task_1", timeout=10)
    assert task.videos == ("https://cdn/v.mp4",)
    assert len(api.requests) == 3


async def test_wait_raises_task_failed_with_the_task() -> None:
    api = Recorder(ok({**TASK, "status": "failed", "error_message": "grok imagine build failed"}))
    async with make_client(api, poll_interval=0.01) as client:
        with pytest.raises(TaskFailedError) as info:
            await client.wait("task_1")
    assert info.value.task.error_message == "grok imagine build failed"
    assert info.value.task.resubmit_may_succeed
    assert "may succeed" in str(info.value)


async def test_wait_timeout_keeps_the_task_id_and_last_state() -> None:
    api = Recorder(ok({**TASK, "status": "generating"}))
    async with make_client(api, poll_interval=0.01) as client:
        with pytest.raises(TaskTimeoutError) as info:
            await client.wait("task_1", timeout=0.05)
    assert info.value.task_id == "task_1"
    assert info.value.last_task is not None
    assert info.value.last_task.state is TaskState.RUNNING
    assert isinstance(info.value, TimeoutError)


async def test_generate_times_out_without_losing_the_paid_task() -> None:
    api = Recorder(ok({"task_id": "task_5"}), ok({**TASK, "task_id": "task_5"}))
    async with make_client(api, poll_interval=0.01) as client:
        with pytest.raises(TaskTimeoutError) as info:
            await client.generate(prompt="p", timeout=0.05)
    assert info.value.task_id == "task_5"


# --- the token is a secret -----------------------------------------------------------


async def test_token_appears_in_no_log_line_repr_or_exception(
    log_records: list[logging.LogRecord],
) -> None:
    api = Recorder(
        api_error(503, "BUSY", "x"),
        httpx.ReadError("reset"),
        ok({"task_id": "task_1"}),
        api_error(500, "SERVER_ERROR", "x"),
        httpx.Response(200, content=b"<html>"),
        api_error(401, "UNAUTHORIZED", "bad token"),
    )
    errors: list[BaseException] = []
    async with make_client(api, max_retries=1) as client:
        texts = [repr(client), str(client)]
        for call in (
            lambda: client.get_task("task_1"),
            lambda: client.submit(prompt="p"),
            lambda: client.submit(prompt="p"),
            lambda: client.get_task("task_1"),
        ):
            try:
                await call()
            except GrokImagineError as exc:
                errors.append(exc)
    assert len(errors) >= 2
    for error in errors:
        texts += [str(error), repr(error), repr(vars(error))]
        if error.__cause__ is not None:
            texts += [str(error.__cause__), repr(error.__cause__)]
    texts += [r.getMessage() for r in log_records]
    assert any("retrying" in t for t in texts)
    assert any("/v1/status" in t for t in texts)
    for text in texts:
        assert TOKEN not in text


# --- found in review -------------------------------------------------------------------


async def test_wait_rides_out_passing_errors_and_a_young_404() -> None:
    api = Recorder(
        ok({"task_id": "task_1"}),
        api_error(404, "NOT_FOUND", "Task not found"),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ReadError("reset"),
        ok({**TASK, "status": "completed", "response": ["https://cdn/v.mp4"]}),
    )
    async with make_client(api, poll_interval=0.01, max_retries=0) as client:
        # Just submitted by this client: the API may not show it yet.
        task = await client.wait(await client.submit(prompt="p"), timeout=10)
    assert task.state is TaskState.COMPLETED
    assert len(api.requests) == 5


async def test_a_404_for_an_id_this_client_did_not_just_submit_is_final_at_once() -> None:
    not_found = api_error(404, "NOT_FOUND", "Task not found")
    api = Recorder(not_found, not_found)
    async with make_client(api, poll_interval=0.01) as client:
        with pytest.raises(TaskPollError) as waited:
            await client.wait("task_9", timeout=600)
        with pytest.raises(TaskPollError) as watched:
            async for _ in client.watch(["task_9"]):
                pass
    assert isinstance(waited.value.__cause__, NotFoundError)
    assert isinstance(watched.value.__cause__, NotFoundError)
    # One status call each, not half a minute of them.
    assert len(api.requests) == 2


async def test_wait_gives_up_on_errors_waiting_wont_cure_but_keeps_the_id() -> None:
    api = Recorder(ok({"task_id": "task_8"}), api_error(401, "UNAUTHORIZED", "token revoked"))
    async with make_client(api, poll_interval=0.01) as client:
        with pytest.raises(TaskPollError) as info:
            await client.generate(prompt="p")
    assert info.value.task_id == "task_8"
    assert isinstance(info.value.__cause__, AuthenticationError)


async def test_no_poll_overruns_the_wait_deadline() -> None:
    api = Recorder(api_error(429, "RATE_LIMITED", "x", **{"Retry-After": "30"}))
    async with make_client(api, poll_interval=0.01) as client:
        with anyio.fail_after(10):
            with pytest.raises(TaskTimeoutError) as info:
                await client.wait("task_1", timeout=0.2)
    assert info.value.task_id == "task_1"


async def test_undecodable_body_on_submit_is_uncertain_not_a_raw_httpx_error() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b"not gzip"))

    api = Recorder(broken)
    async with make_client(api) as client:
        with pytest.raises(SubmitUncertainError):
            await client.submit(prompt="p")
    assert len(api.requests) == 1


async def test_a_closed_client_says_so() -> None:
    api = Recorder(ok(TASK))
    client = make_client(api)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.get_task("task_1")


@pytest.mark.parametrize(
    "later",
    [
        api_error(400, "INVALID_REQUEST", "x"),
        httpx.ConnectError("refused"),
        api_error(429, "RATE_LIMITED", "x"),
    ],
)
async def test_once_a_submit_may_have_created_a_task_the_doubt_is_never_dropped(
    later: httpx.Response | Exception,
) -> None:
    api = Recorder(httpx.ReadTimeout("timed out"), later)
    async with make_client(api, retry_uncertain_submits=True, max_retries=1) as client:
        with pytest.raises(SubmitUncertainError):
            await client.submit(prompt="p")
    assert len(api.requests) == 2


async def test_a_submit_refused_with_a_long_retry_after_on_5xx_is_uncertain() -> None:
    api = Recorder(api_error(503, "BUSY", "x", **{"Retry-After": "3600"}))
    async with make_client(api) as client:
        with pytest.raises(SubmitUncertainError):
            await client.submit(prompt="p")


async def test_a_task_id_is_kept_whatever_code_the_body_carries() -> None:
    api = Recorder(httpx.Response(200, json={"code": 0, "data": {"task_id": "task_9"}}))
    async with make_client(api) as client:
        assert await client.submit(prompt="p") == "task_9"


async def test_a_code_outside_http_range_is_not_an_error_when_data_is_there() -> None:
    api = Recorder(httpx.Response(200, json={"code": 40001, "data": TASK}))
    async with make_client(api) as client:
        assert (await client.get_task("task_1")).task_id == "task_1"


async def test_a_redirect_is_not_retried_and_names_where_it_points() -> None:
    api = Recorder(httpx.Response(301, headers={"location": "https://api.test/v1/generate"}))
    async with make_client(api) as client:
        with pytest.raises(APIStatusError, match=r"https://api\.test") as info:
            await client.submit(prompt="p")
    assert not isinstance(info.value, SubmitUncertainError)
    assert len(api.requests) == 1


async def test_your_http_clients_timeout_is_used_unless_you_give_one() -> None:
    api = Recorder(ok(TASK))
    http = httpx.AsyncClient(transport=httpx.MockTransport(api), timeout=300)
    async with AsyncClient(TOKEN, base_url=SIM_URL, http_client=http) as client:
        await client.get_task("task_1")
    async with AsyncClient(TOKEN, base_url=SIM_URL, http_client=http, timeout=7) as client:
        await client.get_task("task_1")
    assert api.requests[0].extensions["timeout"]["read"] == 300
    assert api.requests[1].extensions["timeout"]["read"] == 7
    await http.aclose()


def test_errors_survive_pickling() -> None:
    task = Task.model_validate({"task_id": "t", "status": "failed", "error_message": "x"})
    errors: list[GrokImagineError] = [
        BadRequestError("m", status_code=400, code=400, error="E", api_message="a"),
        MalformedResponseError("m", status_code=200, excerpt="<html>"),
        TaskTimeoutError("t", 5.0, None),
        TaskFailedError(task),
        RequestValidationError("mode", "bad", "fix it"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy).keys() == vars(error).keys()


async def test_clients_of_one_token_share_a_limiter_and_the_stricter_stated_rate_wins() -> None:
    api = Recorder(ok(TASK))
    guessed = make_client(api, rate_limit=None)
    stated = make_client(api, rate_limit=RateLimit(50, 1.0))
    stricter = make_client(api, rate_limit=RateLimit(20, 1.0))
    looser = make_client(api, rate_limit=RateLimit(500, 1.0))
    for client in (guessed, stated, stricter, looser):
        await client.get_task("task_1")
    assert guessed.rate_limit_status().limit == 20
    assert looser.rate_limit == RateLimit(20, 1.0)
    for client in (guessed, stated, stricter, looser):
        await client.aclose()


def test_rate_limit_status_works_outside_an_event_loop() -> None:
    status = AsyncClient(TOKEN, tier="pro").rate_limit_status()
    assert (status.limit, status.remaining, status.waiting) == (1000, 1000, 0)


async def test_a_connection_error_after_the_retries_chains_the_transport_error() -> None:
    api = Recorder(httpx.ReadError("peer went away"))
    async with make_client(api, max_retries=1) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.get_task("task_1")
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert "peer went away" in str(info.value.__cause__)


# -- which limiter a client joins ---------------------------------------------------------


@pytest.mark.backends("asyncio", reason="the Redis limiter runs on asyncio only")
async def test_a_client_naming_redis_never_gets_an_in_process_limiter_left_on_the_loop() -> None:
    from grokimagine_async import RedisLimiter, SlidingWindowLimiter

    async with AsyncClient(TOKEN, base_url=SIM_URL) as before:
        assert isinstance(before._get_limiter(), SlidingWindowLimiter)
    # Closed, its limiter stays on the loop; a client naming Redis does not take it.
    shared = AsyncClient(TOKEN, base_url=SIM_URL, redis_url="redis://127.0.0.1:1/0")
    assert isinstance(shared._get_limiter(), RedisLimiter)
    await shared.aclose()
    # Nor does a later client without Redis join a Redis limiter.
    async with AsyncClient(TOKEN, base_url=SIM_URL) as after:
        assert isinstance(after._get_limiter(), SlidingWindowLimiter)


@pytest.mark.backends("asyncio", reason="the Redis limiter runs on asyncio only")
async def test_open_clients_of_one_token_that_disagree_on_redis_get_a_clear_error() -> None:
    async with AsyncClient(TOKEN, base_url=SIM_URL) as local:
        local._get_limiter()
        shared = AsyncClient(TOKEN, base_url=SIM_URL, redis_url="redis://127.0.0.1:1/0")
        with pytest.raises(ConfigurationError, match="redis_url") as caught:
            shared._get_limiter()
        assert "in-process" in str(caught.value)
        await shared.aclose()
    first = AsyncClient(TOKEN, base_url=SIM_URL, redis_url="redis://127.0.0.1:1/0")
    other = AsyncClient(TOKEN, base_url=SIM_URL, redis_url="redis://127.0.0.1:2/0")
    first._get_limiter()
    with pytest.raises(ConfigurationError, match="another Redis"):
        other._get_limiter()
    await other.aclose()
    await first.aclose()
