"""Whatever the server answers, only the library's own errors come out, the token
never does, and no answer holds the client back longer than its cap.

Hypothesis writes the answers: any status code, headers with garbage, negative,
huge, dated and contradictory rate-limit figures, bodies of any bytes, any JSON,
and the documented envelope with every field of the wrong type. Each example runs
in an event loop of its own on trio's virtual clock (``MockClock``): a wait the
client would take costs no real time, and the time between two requests is what
the client would really have waited.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NoReturn

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokimagine_async import (
    AsyncClient,
    DownloadError,
    GrokImagineError,
    RateLimit,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    Task,
    TaskFailedError,
    TaskPollError,
    TaskState,
    WatchTimeoutError,
)
from grokimagine_async._headers import RateFeedback
from grokimagine_async._sliding_window import SlidingWindowLimiter, WindowBudget

from .helpers import TOKEN, Recorder, api_error, make_client, on_virtual_clock

TASK: dict[str, object] = {"task_id": "task_1", "status": "processing", "response": []}

#: The compressed plan the client keeps to: waits it derives from the plan (a slot
#: held a period, a reservation fading over another) stay far below any cap tried.
PERIOD = 0.05
#: Few requests, so that a few attempts can fill a window.
PLAN = RateLimit(3, PERIOD)
#: What the plan alone may hold a request back, on top of a server-advised wait.
PLAN_SLACK = 3 * PERIOD
#: The client's caps on server-advised waits tried: under a period, ten, the default.
CAPS = st.sampled_from([0.02, 0.5, 120.0])

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- what a server may say ---------------------------------------------------------

NOW = time.time()


def _http_date(offset: float) -> str:
    when = datetime.fromtimestamp(NOW, tz=timezone.utc) + timedelta(seconds=offset)
    return format_datetime(when, usegmt=True)


#: Where the token could come back: echoed as is, in a sentence, behind "Bearer".
def _with_token(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        text,
        st.just(TOKEN),
        st.builds(lambda a, b: f"{a}{TOKEN}{b}", text, text),
        st.builds(lambda a: f"Bearer {TOKEN} {a}", text),
    )


numbers_as_text = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "1e308",
            "-1e308",
            "1e309",
            str(10**40),
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "0",
            "-0",
            "-1",
            "0.5",
            " 7 ",
            "1_000",
            "²",
            "٣",
            "9" * 5000,
            "",
            "0x10",
            str(int(NOW)),
            str(int(NOW * 1000)),
            str(int(NOW) + 10**6),
            str(int(NOW * 1000) + 10**9),
        ]
    ),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
dates = st.one_of(
    st.sampled_from([-(10**6), -5.0, 0.0, 1.0, 100.0, 10**5, 10**9]).map(_http_date),
    st.sampled_from(
        [
            "Mon, 01 Jan 0001 00:00:00 -0000",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Fri, 31 Dec 9999 23:59:59 +2359",
            "Sun, 06 Nov 1994 08:49:37 +9999",
            "Sun, 06 Nov 1994 08:49:37",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ]
    ),
)
header_values = st.one_of(
    numbers_as_text,
    dates,
    _with_token(header_text),
    st.sampled_from(["gzip", "deflate", "identity", "text/html", "application/json"]),
)
any_headers = st.dictionaries(
    st.sampled_from(
        [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "Retry-After",
            "Location",
            "Content-Type",
            "Content-Encoding",
            "X-Request-Id",
        ]
    ),
    header_values,
    max_size=6,
)
#: Figures that contradict each other, or the plan.
contradictory = st.sampled_from(
    [
        {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "5000"},
        {"X-RateLimit-Limit": "-1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1e308", "Retry-After": "0"},
        {"X-RateLimit-Remaining": "100000", "Retry-After": "-5"},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) - 3600)},
        {"Retry-After": "86400", "X-RateLimit-Reset": "1"},
    ]
)
rate_headers = st.one_of(any_headers, any_headers, contradictory)

# Any JSON value, with huge and odd numbers and the token among the strings.
json_text = _with_token(st.text(max_size=20))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**40, -(10**40), 10**400, 2**63, 1e308, -1e308, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    json_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass(frozen=True)
class _Deep:
    """A JSON list nested ``depth`` deep, written out as raw JSON."""

    depth: int


#: Deeper than json.loads, repr() or a careless recursion can follow.
deep = st.sampled_from([50, 600, 900, 5000]).map(_Deep)

status_words = st.one_of(
    st.sampled_from(
        [
            "completed",
            "COMPLETED",
            "success",
            "done",
            "failed",
            "error",
            "expired",
            "cancelled",
            "pending",
            "queued",
            "processing",
            "in_progress",
            "in-progress",
            "teleporting",
            "",
            " ",
        ]
    ),
    json_values,
    deep,
)
videos = st.one_of(
    st.lists(
        st.one_of(
            st.just("https://cdn.test/v.mp4"),
            st.just(f"https://cdn.test/{TOKEN}.mp4"),
            st.sampled_from(["not a url", "ftp://cdn.test/v.mp4", "http://[::1", "https://"]),
            st.builds(lambda u: {"url": u}, st.just("https://cdn.test/w.mp4")),
            json_values,
        ),
        max_size=3,
    ),
    json_values,
)
tasks = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.one_of(
            st.just("task_1"),
            st.sampled_from(["../escape", "a/b", "/ABS/x", "nul\x00id", "x" * 300, ".", ""]),
            json_values,
        ),
        "status": status_words,
        "error_message": st.one_of(
            st.none(), json_values, deep, st.just("grok imagine build failed")
        ),
        "consumed_credits": json_values,
        "created_at": st.one_of(
            json_values,
            st.sampled_from(
                ["2024-01-01T00:00:00Z", "9999-12-31T23:59:59+23:59", "0001-01-01", "yesterday"]
            ),
        ),
        "request": json_values,
        "response": videos,
        "extra": st.one_of(json_values, deep),
    },
)
codes = st.one_of(
    st.integers(-1000, 1000),
    st.sampled_from([200, 400, 401, 404, 429, 500, 503, "429", " 500 ", "²", "9" * 5000]),
    json_values,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "code": codes,
        "message": json_values,
        "error": json_values,
        "data": st.one_of(tasks, json_values, deep),
    },
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values,
    envelopes,
    envelopes,
    envelopes,
    deep,
    st.sampled_from(
        [
            b"<html><title>502 Bad Gateway</title></html>",
            b'{"code":200,"message":"success","data":{"task_id":"task_7"',
            b'{"data": {"task_id": "\\u0073k-test-SECRET-7f3a9c"}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
        ]
    ),
)
status_codes = st.one_of(
    st.integers(100, 599),
    st.sampled_from([200, 200, 200, 429, 429, 500, 503, 0, 1, 99, 600, 999, 10**6]),
)


def _encode(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, _Deep):
        return ("[" * body.depth + "]" * body.depth).encode()
    return json.dumps(body, default=_deep_json).encode()


def _deep_json(value: object) -> Any:
    # Nested inside an envelope, written out by hand below.
    assert isinstance(value, _Deep)
    return {"__deep__": value.depth}


def _wire_bytes(body: object) -> bytes:
    raw = _encode(body)
    # An envelope holding a deep value: splice the raw nesting in.
    marker = b'{"__deep__": '
    while marker in raw:
        start = raw.index(marker)
        end = raw.index(b"}", start)
        depth = int(raw[start + len(marker) : end])
        raw = raw[:start] + b"[" * depth + b"]" * depth + raw[end + 1 :]
    return raw


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: object

    def response(self, tmp: str = "") -> httpx.Response:
        # As bytes: a server may send any, and httpx decodes what it reads.
        headers = [(k.encode(), v.replace("/ABS", tmp).encode()) for k, v in self.headers.items()]
        return httpx.Response(self.status, headers=headers, content=_wire_bytes(self.body))


@dataclass(frozen=True)
class Broken:
    """No answer: the connection failed, perhaps quoting what the server sent."""

    error: type[httpx.TransportError]
    echo: bool

    def raise_(self) -> NoReturn:
        said = f"illegal header line: Authorization: Bearer {TOKEN}" if self.echo else ""
        raise self.error(said)


#: Close to the documented answer, so that the paths past the envelope (a task of
#: odd fields, a paid submission's id) are reached as often as the error paths.
plausible = st.builds(
    Answer,
    st.sampled_from([200, 200, 200, 201, 429, 503]),
    rate_headers,
    st.builds(
        lambda data, extra: {"code": 200, "message": "success", "data": data, **extra},
        tasks,
        st.fixed_dictionaries({}, optional={"code": codes, "message": json_values}),
    ),
)
answers = st.one_of(plausible, st.builds(Answer, status_codes, rate_headers, bodies))
broken = st.builds(
    Broken,
    st.sampled_from(
        [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError]
    ),
    st.booleans(),
)
#: A server's next few answers; the last one repeats.
scripts = st.lists(st.one_of(answers, answers, answers, broken), min_size=1, max_size=4)

# --- running the client on a virtual clock -------------------------------------------


@dataclass
class Server:
    """Answers from a script, noting when each request came (virtual seconds)."""

    script: list[Answer | Broken]
    tmp: str = ""
    #: When each request came, and when each that reached the server (one whose
    #: connection was never made did not) came.
    times: list[float] = field(default_factory=list)
    counted: list[float] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        self.times.append(now)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if not (isinstance(answer, Broken) and answer.error is httpx.ConnectError):
            self.counted.append(now)
        if isinstance(answer, Broken):
            answer.raise_()
        assert isinstance(answer, Answer)
        return answer.response(self.tmp)


def client_for(server: Server, cap: float, plan: RateLimit = PLAN, **kwargs: Any) -> AsyncClient:
    # A limiter of its own, on the loop's virtual clock, per example: nothing learnt
    # from one example's answers carries into the next.
    limiter = SlidingWindowLimiter(plan, clock=anyio.current_time)
    kwargs.setdefault("max_retries", 2)
    return AsyncClient(
        TOKEN,
        base_url="http://api.test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
        limiter=limiter,
        backoff=0.01,
        max_retry_after=cap,
        poll_interval=0.05,
        **kwargs,
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]


def assert_no_token(error: BaseException) -> None:
    for e in _chain(error):
        texts = [str(e), repr(e)]
        with contextlib.suppress(TypeError):  # no __dict__
            texts.append(repr(vars(e)))
        for text in texts:
            assert TOKEN not in text, f"the token is in {type(e).__name__}: {text[:300]}"


def assert_ours(error: BaseException, *, tokenless: bool = True) -> None:
    """Only the library's typed errors come out, and (``tokenless``) none carries
    the token."""
    if not isinstance(error, GrokImagineError):
        raise AssertionError(f"{type(error).__name__} escaped: {error!r}") from error
    if tokenless:
        assert_no_token(error)


def assert_kept_to(server: Server, cap: float) -> None:
    """No more requests than the plan in any window of its period, and no two
    further apart than the cap (plus what the plan alone holds)."""
    times = server.times
    for before, after in itertools.pairwise(times):
        assert after - before <= cap + PLAN_SLACK + 1e-6, (before, after, cap)
    counted = server.counted
    for i, at in enumerate(counted):
        # Half a nanosecond of slack for float rounding on the virtual clock.
        in_window = sum(1 for t in counted[i:] if t - at < PERIOD - 5e-10)
        assert in_window <= PLAN.requests, counted


# --- 1. the typed calls fed arbitrary answers ---------------------------------------


@FUZZ
@given(script=scripts, cap=CAPS)
def test_get_task_returns_a_task_or_raises_ours(script: list[Answer | Broken], cap: float) -> None:
    server = Server(list(script))

    async def main() -> None:
        async with client_for(server, cap) as client:
            for _ in range(2):
                try:
                    task = await client.get_task("task_1")
                except BaseException as exc:
                    assert_ours(exc)
                else:
                    assert isinstance(task, Task)
                    assert isinstance(task.task_id, str)
                    assert task.task_id
                    assert isinstance(task.state, TaskState)
                    assert TOKEN not in repr(task)

    on_virtual_clock(main)
    assert_kept_to(server, cap)


@FUZZ
@given(script=scripts, cap=CAPS, resend=st.booleans())
def test_submit_returns_an_id_or_raises_ours(
    script: list[Answer | Broken], cap: float, resend: bool
) -> None:
    server = Server(list(script))

    async def main() -> None:
        async with client_for(server, cap, retry_uncertain_submits=resend) as client:
            for _ in range(2):
                uncertain = None
                try:
                    task_id = await client.submit(prompt="a fox in the snow")
                except SubmitUncertainError as exc:
                    uncertain = exc
                except BaseException as exc:
                    assert_ours(exc)
                else:
                    assert isinstance(task_id, str)
                    assert task_id
                    assert TOKEN not in task_id
                if uncertain is not None:
                    # The documented way a paid submission ends without an id.
                    assert_ours(uncertain)
                    assert uncertain.request.prompt == "a fox in the snow"

    on_virtual_clock(main)
    assert_kept_to(server, cap)


@FUZZ
@given(script=scripts, cap=CAPS, timeout=st.sampled_from([0.3, 2.0]))
def test_wait_returns_a_completed_task_or_raises_ours(
    script: list[Answer | Broken], cap: float, timeout: float
) -> None:
    server = Server(list(script))

    async def main() -> None:
        async with client_for(server, cap) as client:
            started = anyio.current_time()
            try:
                task = await client.wait("task_1", timeout=timeout)
            except BaseException as exc:
                assert_ours(exc)
            else:
                assert task.state is TaskState.COMPLETED
                assert TOKEN not in repr(task)
            # No poll overruns the deadline, whatever the server asked for.
            assert anyio.current_time() - started <= timeout + 1e-6

    on_virtual_clock(main)


def _watch_ended(error: BaseException) -> bool:
    """Whether a watch's error ends the iteration (its deadline) or not (one task's
    polling failed for good, and the watch goes on)."""
    assert_ours(error)
    if isinstance(error, WatchTimeoutError):
        assert set(error.unfinished) <= {"task_1", "task_2"}
        return True
    assert isinstance(error, TaskPollError)
    return False


@settings(FUZZ, max_examples=40)
@given(script=scripts, cap=CAPS)
def test_watch_yields_finished_tasks_or_raises_ours(
    script: list[Answer | Broken], cap: float
) -> None:
    server = Server(list(script))
    timeout = 0.5

    async def main() -> None:
        async with client_for(server, cap) as client:
            watch = client.watch(["task_1", "task_2"], timeout=timeout)
            started = anyio.current_time()
            for _ in range(3):
                try:
                    task = await watch.__anext__()
                except StopAsyncIteration:
                    break
                except BaseException as exc:
                    if _watch_ended(exc):
                        break
                else:
                    assert task.is_terminal
                    assert TOKEN not in repr(task)
            else:
                raise AssertionError("a task came out twice")
            assert anyio.current_time() - started <= timeout + 1e-6

    on_virtual_clock(main)


video_answers = st.builds(
    Answer,
    status_codes,
    st.dictionaries(
        st.sampled_from(["Content-Type", "Content-Length", "Location", "Content-Encoding"]),
        st.one_of(
            header_values,
            st.sampled_from(
                [
                    "video/mp4",
                    "application/octet-stream",
                    "text/html",
                    "gzip",
                    "br",
                    "https://cdn.test/next.mp4",
                    "/ABS/elsewhere.mp4",
                    "http://[::1",
                    "ftp://cdn.test/x",
                    "3",
                ]
            ),
        ),
        max_size=4,
    ),
    st.one_of(st.binary(max_size=32), st.just(b"\x00\x00\x00\x18ftypmp42")),
)


@FUZZ
@given(
    status=tasks,
    answers_=st.lists(video_answers, min_size=1, max_size=4),
    cap=CAPS,
    by_id=st.booleans(),
)
def test_download_writes_inside_the_folder_or_raises_ours(
    status: dict[str, Any], answers_: list[Answer], cap: float, by_id: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "in" / "here"

        def absolute(value: object) -> object:
            # A task id such as "/ABS/x" names a path in this example's own folder.
            return value.replace("/ABS", tmp) if isinstance(value, str) else value

        status = {k: absolute(v) for k, v in status.items()}
        status["status"] = "completed"
        status.pop("error_message", None)
        task_answer = Answer(200, {}, {"code": 200, "data": status})
        server = Server([task_answer, *answers_] if by_id else list(answers_), tmp=tmp)

        async def main() -> None:
            async with client_for(server, cap) as client:
                try:
                    if by_id:
                        paths = await client.download("task_1", folder)
                    else:
                        try:
                            task = Task.model_validate(status)
                        except ValueError:
                            return
                        paths = await client.download(task, folder)
                except BaseException as exc:
                    # A task looked up comes through the wire, which masks the token.
                    # One handed in whole may carry it in a URL of the caller's making;
                    # the video host never sees the token, so it cannot echo it.
                    assert_ours(exc, tokenless=by_id)
                else:
                    for path in paths:
                        assert path.is_file()
                        assert path.parent == folder

        on_virtual_clock(main)
        for written in root.rglob("*"):
            assert written.is_dir() or written.parent == folder, written
            assert not written.name.endswith(".part"), written


# --- 2. the limiter fed arbitrary feedback ----------------------------------------------


@dataclass(order=True)
class _Pending:
    answer_at: float
    ticket: int
    sent_at: float = field(compare=False)
    feedback: RateFeedback | None = field(compare=False)


feedback_direct = st.builds(
    RateFeedback,
    status_code=st.sampled_from([200, 200, 429, 429, 500, 503]),
    remaining=st.one_of(st.none(), st.integers(-(10**30), 10**30), st.integers(0, 25)),
    reset_after=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    retry_after=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)


@st.composite
def feedbacks(draw: st.DrawFn, cap: float) -> RateFeedback | None:
    how = draw(st.sampled_from(["none", "headers", "headers", "direct"]))
    if how == "none":
        return None
    if how == "direct":
        fb: RateFeedback = draw(feedback_direct)
        return RateFeedback(fb.status_code, fb.remaining, fb.reset_after, fb.retry_after, cap)
    status = draw(st.sampled_from([200, 200, 429, 429, 500, 503]))
    headers = httpx.Headers([(k.encode(), v.encode()) for k, v in draw(rate_headers).items()])
    return RateFeedback.from_headers(status, headers, time.time(), max_wait=cap)


@st.composite
def limiter_runs(draw: st.DrawFn) -> tuple[RateLimit, float, list[tuple[float, float, Any]]]:
    limit = draw(st.integers(1, 12))
    period = draw(st.sampled_from([0.5, 2.0, 60.0]))
    cap = draw(st.sampled_from([0.1, 1.0, 5.0, 120.0]))
    reqs = draw(
        st.lists(
            st.tuples(
                st.floats(0, 6 * period),
                st.floats(0, 1.5 * period),
                feedbacks(cap),
            ),
            max_size=40,
        )
    )
    return RateLimit(limit, period), cap, reqs


@settings(max_examples=200, deadline=None)
@given(run=limiter_runs())
def test_the_limiter_keeps_to_the_plan_and_the_cap_whatever_the_headers(
    run: tuple[RateLimit, float, list[tuple[float, float, Any]]],
) -> None:
    plan, cap, reqs = run
    budget = WindowBudget(plan)
    period = plan.period
    pending: list[_Pending] = []
    sent: list[float] = []

    def answer_due(t: float) -> None:
        while pending and pending[0].answer_at <= t:
            p = heapq.heappop(pending)
            budget.answered(p.answer_at, p.feedback, p.ticket, p.sent_at)
            # The server's word closes the gate no longer than the client's cap...
            assert budget.learned.gate <= p.answer_at + cap + 1e-9
            # ...nor has its Reset hold back what Remaining says is missing...
            held = budget._cap
            if held is not None and not held.refills:
                assert held.until <= held.at + cap + 1e-9
            # ...and pacing holds a request back no longer than one paced interval
            # after it opens.
            pacing = budget.learned.pacing
            paced = None
            tat = max(budget._tat, budget.learned.gate)
            if pacing is not None and pacing.allows(p.answer_at, tat) == 0:
                _, pace, burst = pacing.now(p.answer_at)
                paced = tat - (burst - 1) / pace
            if paced is not None:
                opens = max(p.answer_at, budget.learned.gate)
                assert paced <= opens + 4 * period + 1e-6

    t = 0.0
    for arrival, latency, feedback in sorted(reqs, key=lambda r: r[0]):
        t = max(t, arrival)
        for _ in range(10_000):
            answer_due(t)
            ticket = budget.take(t)
            if ticket is not None:
                break
            candidates = [x for x in (budget.next_change(t),) if x is not None]
            if pending:
                candidates.append(pending[0].answer_at)
            assert candidates, "a waiter with nothing to wake it"
            t = max(t, min(candidates))
        else:  # pragma: no cover
            raise AssertionError("no progress")
        sent.append(t)
        heapq.heappush(pending, _Pending(t + latency, ticket, t, feedback))
    answer_due(math.inf)
    # Never more than the plan in any window of its period.
    sent.sort()
    lo = 0
    for hi, at in enumerate(sent):
        while at - sent[lo] >= period - 1e-9:
            lo += 1
        assert hi - lo + 1 <= plan.requests
    # Idle now: the next request goes within the cap, plus what the plan itself holds
    # (slots held a period after their answers, a reservation fading over another).
    last = max([p for p in sent] + [0.0]) + 1.5 * period
    when = last
    for _ in range(10_000):
        if budget.free(when) > 0:
            break
        nxt = budget.next_change(when)
        assert nxt is not None
        when = nxt
    assert when - last <= cap + 3 * period + 1e-6


# --- the bugs the fuzzing found, one regular test each ------------------------------


def first_free(budget: WindowBudget, now: float) -> float:
    """When an idle budget next lets a request go, looking no sooner than ``now``."""
    for _ in range(10_000):
        if budget.free(now) > 0:
            return now
        later = budget.next_change(now)
        assert later is not None, "nothing would wake a waiter"
        now = later
    raise AssertionError("the budget never opens")  # pragma: no cover


@pytest.mark.anyio
@pytest.mark.parametrize("code", ["²", "9" * 5000])
async def test_a_body_code_int_cannot_read_is_no_code(code: str) -> None:
    # str.isdigit() passes both; int() refused them with a ValueError out of the call.
    api = Recorder(
        httpx.Response(503, json={"code": code, "message": "busy"}),
        httpx.Response(200, json={"code": code, "data": TASK}),
    )
    async with make_client(api, max_retries=0) as client:
        with pytest.raises(ServerError) as info:
            await client.get_task("task_1")
        assert info.value.code is None
        assert (await client.get_task("task_1")).task_id == "task_1"


ECHOES: list[httpx.Response | Exception] = [
    api_error(401, "UNAUTHORIZED", f"bad token {TOKEN}"),
    api_error(400, f"NO_{TOKEN}", "x"),
    httpx.Response(502, text=f"<html>token {TOKEN} refused</html>"),
    httpx.Response(200, text=f"not json: Bearer {TOKEN}"),
    httpx.Response(200, json={"code": 200, "data": "you sent " + TOKEN}),
    httpx.Response(302, headers={"location": f"https://api.test/?key={TOKEN}"}),
    httpx.Response(429, json={"code": 429, "message": TOKEN}),
    httpx.RemoteProtocolError(f"illegal header line: Authorization: Bearer {TOKEN}"),
    httpx.ReadTimeout(f"timed out reading the answer to Bearer {TOKEN}"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("echo", ECHOES)
async def test_a_token_echoed_back_is_masked_in_every_error(
    echo: httpx.Response | Exception,
) -> None:
    api = Recorder(echo)
    errors: list[GrokImagineError] = []
    async with make_client(api, max_retries=0, rate_limit_patience=0) as client:
        for call in (lambda: client.get_task("task_1"), lambda: client.submit(prompt="p")):
            with pytest.raises(GrokImagineError) as info:
                await call()
            errors.append(info.value)
    for error in errors:
        assert_no_token(error)
        assert "********" in "".join(f"{e}{vars(e)}" for e in _chain(error))
    if isinstance(echo, Exception):
        # The transport error is still the cause, of its own kind, only masked.
        assert isinstance(errors[0].__cause__, type(echo))


@pytest.mark.anyio
async def test_a_token_echoed_in_the_data_is_masked_in_the_task_and_its_failure() -> None:
    # Escaped in the JSON, as a key and as a value: masked once decoded.
    escaped = TOKEN.replace("s", "\\u0073", 1)
    failed = f'{{"task_id": "task_1", "status": "failed", "error_message": "echo: {escaped}"}}'
    api = Recorder(
        httpx.Response(200, content=f'{{"code": 200, "data": {{"{escaped}": 1}}}}'.encode()),
        httpx.Response(200, content=f'{{"code": 200, "data": {failed}}}'.encode()),
    )
    async with make_client(api) as client:
        task = await client.get_task("task_1")
        assert TOKEN not in repr(task)
        assert task.model_extra == {"********": 1}
        with pytest.raises(TaskFailedError) as info:
            await client.wait("task_1", timeout=5)
    assert_no_token(info.value)
    assert info.value.task.error_message == "echo: ********"


def test_a_429_asking_more_than_the_cap_holds_the_token_no_longer_than_the_cap() -> None:
    # A plan of a long period: the gate's own bound (two periods) is no help here.
    server = Server(
        [
            Answer(429, {"Retry-After": "3600"}, {"code": 429, "message": "later"}),
            Answer(200, {}, {"code": 200, "data": TASK}),
        ]
    )

    async def main() -> None:
        async with client_for(server, 5.0, RateLimit(1000, 600.0)) as client:
            with pytest.raises(RateLimitError) as info:
                await client.get_task("task_1")
            assert info.value.retry_after == 3600  # what the server said, not the cap
            await client.get_task("task_1")

    on_virtual_clock(main)
    # The cap, and the reservation after a 429 letting the budget out at the plan's rate.
    first, second = server.times
    assert second - first <= 5.0 + 600 / 998 + 1e-6


def test_the_cap_reaches_the_limiter_on_the_feedback() -> None:
    headers = httpx.Headers({"Retry-After": "3600", "X-RateLimit-Reset": "7200"})
    feedback = RateFeedback.from_headers(429, headers, time.time(), max_wait=5.0)
    assert (feedback.retry_after, feedback.reset_after) == (3600, 7200)
    assert feedback.advised_wait == 5.0
    budget = WindowBudget(RateLimit(1000, 600.0))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(1.0, feedback, ticket, 0.0)
    assert budget.free(5.9) == 0
    assert first_free(budget, 1.0) <= 1.0 + 5.0 + 600 / 999 + 1e-6


def test_a_reset_further_off_than_the_cap_holds_nothing_back_until_then() -> None:
    budget = WindowBudget(RateLimit(10, 60.0))
    ticket = budget.take(0.0)
    assert ticket is not None
    # Nothing left until the reset in 50 s, says the server, to a client whose cap is 5 s.
    budget.answered(0.0, RateFeedback(200, 0, reset_after=50.0, max_wait=5.0), ticket, 0.0)
    # What is missing comes back at the plan's rate, as when no reset is said.
    assert first_free(budget, 0.0) == pytest.approx(6.0)
    # Within the cap, the reset is waited for: nothing, then all of it.
    budget = WindowBudget(RateLimit(10, 60.0))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.0, RateFeedback(200, 0, reset_after=50.0, max_wait=120.0), ticket, 0.0)
    assert first_free(budget, 0.0) == 50.0
    assert budget.free(50.0) == 9


def test_a_hung_request_does_not_have_a_waiter_look_again_every_millisecond() -> None:
    budget = WindowBudget(RateLimit(1, 60.0))
    first = budget.take(0.0)
    assert first is not None
    budget.answered(0.0, RateFeedback(200), first, 0.0)
    assert budget.take(60.0) is not None  # never answered: it went stale at 62
    assert budget.free(63.0) == 0
    # Only its answer frees the slot: nothing to wake for before then (it said 63.001,
    # then 63.002, ...: a thousand wake-ups a second while the request hung).
    assert budget.next_change(63.0) is None


@pytest.mark.parametrize(("remaining", "reset_after"), [(-7, 3.0), (-(2**53) - 1, 2.0**52)])
def test_a_hand_built_feedback_of_less_than_nothing_left_holds_a_period_at_most(
    remaining: int, reset_after: float
) -> None:
    budget = WindowBudget(RateLimit(1, 0.5))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.0, RateFeedback(200, remaining, reset_after), ticket, 0.0)
    # Taken as said, the server was missing more than the plan holds, so nothing came
    # back until its reset: 3 s, or a hundred million years (where the clock's floats
    # can no longer tell a period apart, and two requests went in one).
    assert first_free(budget, 0.0) == 0.5


def _video(headers: dict[str, str], body: bytes = b"v") -> Callable[[httpx.Request], Any]:
    """A video host's answer, made afresh for each request: its body is read as a
    stream, and decoded (or not) only then."""
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return lambda request: httpx.Response(200, headers=raw, stream=httpx.ByteStream(body))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "answer"),
    [
        # httpx.TooManyRedirects and DecodingError are no TransportError: they escaped.
        pytest.param(
            "https://cdn.test/v.mp4",
            httpx.Response(302, headers={"Location": "https://cdn.test/v.mp4"}),
            id="redirect-loop",
        ),
        pytest.param(
            "https://cdn.test/v.mp4",
            _video({"Content-Type": "video/mp4", "Content-Encoding": "gzip"}, b"plain"),
            id="undecodable",
        ),
        # httpx.InvalidURL is no HTTPError at all.
        pytest.param("http://[::1", _video({}), id="invalid-url"),
        # str.isdigit() passes it; int() refused it (a ValueError out of the call).
        pytest.param(
            "https://cdn.test/v.mp4", _video({"Content-Length": "9" * 5000}), id="long-length"
        ),
    ],
)
async def test_a_video_that_cannot_be_had_is_a_download_error(
    url: str, answer: httpx.Response | Callable[[httpx.Request], Any], tmp_path: Path
) -> None:
    task = Task.model_validate({"task_id": "task_1", "status": "completed", "response": [url]})
    async with make_client(Recorder(answer), max_retries=1) as client:
        with pytest.raises(DownloadError):
            await client.download(task, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_a_content_length_that_is_no_number_checks_nothing(tmp_path: Path) -> None:
    # str.isdigit() passes '²'; int() refused it, with a ValueError out of the call.
    task = Task.model_validate(
        {"task_id": "task_1", "status": "completed", "response": ["https://cdn.test/v.mp4"]}
    )
    async with make_client(Recorder(_video({"Content-Length": "²"}, b"mp4"))) as client:
        (path,) = await client.download(task, tmp_path)
    assert path.read_bytes() == b"mp4"


@pytest.mark.anyio
@pytest.mark.parametrize("task_id", ["../escape", "a/b", "/ABS/abs", "nul\x00id", "..", "x" * 300])
async def test_a_task_id_that_is_no_file_name_writes_inside_the_folder(
    task_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "videos"
    task_id = task_id.replace("/ABS", str(tmp_path))
    task = Task.model_validate(
        {"task_id": task_id, "status": "completed", "response": ["https://cdn.test/v.mp4"]}
    )
    video = httpx.Response(200, headers={"Content-Type": "video/mp4"}, content=b"mp4")
    async with make_client(Recorder(video)) as client:
        (path,) = await client.download(task, folder)
        # A second download finds the same file and keeps it.
        assert await client.download(task, folder) == [path]
    assert path.parent == folder
    assert path.read_bytes() == b"mp4"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


@pytest.mark.anyio
async def test_a_plain_task_id_keeps_its_file_name(tmp_path: Path) -> None:
    task = Task.model_validate(
        {"task_id": "task_12-3.a", "status": "completed", "response": ["https://cdn.test/v"] * 2}
    )
    video = httpx.Response(200, headers={"Content-Type": "video/mp4"}, content=b"mp4")
    async with make_client(Recorder(video)) as client:
        paths = await client.download(task, tmp_path)
    assert [p.name for p in paths] == ["task_12-3.a_0.mp4", "task_12-3.a_1.mp4"]
