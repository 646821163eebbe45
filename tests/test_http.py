"""The wire: one answer to "what may a failed submission have left?", one retry
decision that names its reason, 429s waited out against a patience, and how many
requests are on the wire at once."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from grokimagine_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    RateLimit,
    RateLimitError,
    RateLimiterUnavailableError,
    ServerError,
    SubmitUncertainError,
)
from grokimagine_async._exceptions import Creation, creation
from grokimagine_async._limiter import RateLimitStatus, Slot
from grokimagine_async._sliding_window import SlidingWindowLimiter

from .helpers import LimiterAround, Recorder, api_error, make_client, ok, on_virtual_clock

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (APIConnectionError("x", request_sent=False), Creation.NOTHING),
        (RateLimiterUnavailableError("x"), Creation.NOTHING),
        (RateLimitError("x", status_code=429), Creation.NOTHING),
        (BadRequestError("x", status_code=400), Creation.REFUSED),
        (AuthenticationError("x", status_code=401), Creation.REFUSED),
        (APIConnectionError("x", request_sent=True), Creation.MAYBE),
        (ServerError("x", status_code=502), Creation.MAYBE),
        (ServerError("x", status_code=408), Creation.MAYBE),
        (MalformedResponseError("x", status_code=200, excerpt=""), Creation.MAYBE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_what_a_failed_submission_may_have_left(error: Exception, expected: Creation) -> None:
    assert creation(error) is expected


async def test_a_submission_that_may_have_created_a_task_is_not_resent_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="grokimagine_async")
    api = Recorder(httpx.Response(502, text="<html>bad gateway</html>"), ok({"task_id": "t"}))
    async with make_client(api) as client:
        with pytest.raises(SubmitUncertainError):
            await client.submit(prompt="p")
    assert len(api.requests) == 1
    assert any("retry_uncertain_submits=False" in r.getMessage() for r in caplog.records)


async def test_every_retry_names_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="grokimagine_async")
    api = Recorder(
        api_error(429, "RATE_LIMITED", "slow down"),
        httpx.Response(503, text="busy"),
        ok({"task_id": "t", "status": "running"}),
    )
    async with make_client(api) as client:
        await client.get_task("t")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert len(said) == 2
    assert "the server said slow down" in said[0]
    assert "retry 1 of 3 after" in said[1]


async def test_429s_are_waited_out_beyond_max_retries() -> None:
    refused = api_error(429, "RATE_LIMITED", "slow down")
    api = Recorder(*[refused] * 6, ok({"task_id": "t", "status": "running"}))
    async with make_client(api, max_retries=1, rate_limit=RateLimit(1000, 0.2)) as client:
        task = await client.get_task("t")
    assert task.task_id == "t"
    assert len(api.requests) == 7


async def test_past_its_patience_a_call_raises_rate_limit_error() -> None:
    refused = api_error(429, "RATE_LIMITED", "slow down")
    api = Recorder(refused)
    async with make_client(api, rate_limit=RateLimit(1000, 0.2), rate_limit_patience=0.3) as client:
        with pytest.raises(RateLimitError):
            await client.get_task("t")
    assert len(api.requests) >= 3


def test_time_queued_behind_other_requests_is_not_held_against_patience() -> None:
    # On a virtual clock: the queue's 0.3 s and the patience's 0.2 s are exact.
    on_virtual_clock(time_queued_is_not_held_against_patience)


async def time_queued_is_not_held_against_patience() -> None:
    refused = api_error(429, "RATE_LIMITED", "slow down")
    api = Recorder(refused, refused, ok({"task_id": "t", "status": "running"}))

    class Crowded(LimiterAround):
        """A limiter with others always ahead: every slot after the first waits 0.3 s."""

        def __init__(self) -> None:
            super().__init__(SlidingWindowLimiter(RateLimit(1000, 0.2)))
            self.asked = 0

        def status(self) -> RateLimitStatus:
            return dataclasses.replace(self.inner.status(), waiting=5)

        @contextlib.asynccontextmanager
        async def slot(self) -> AsyncIterator[Slot]:
            self.asked += 1
            if self.asked > 1:
                await anyio.sleep(0.3)
            async with self.inner.slot() as slot:
                yield slot

    async with make_client(api, limiter=Crowded(), rate_limit_patience=0.2) as client:
        task = await client.get_task("t")
    assert task.task_id == "t"
    assert len(api.requests) == 3
