"""The wire: one answer to "what may a failed submission have left?", and one
retry decision that names its reason."""

from __future__ import annotations

import logging

import httpx
import pytest

from grokimagine_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    RateLimitError,
    RateLimiterUnavailableError,
    ServerError,
    SubmitUncertainError,
)
from grokimagine_async._exceptions import Creation, creation

from .helpers import Recorder, api_error, make_client, ok

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
