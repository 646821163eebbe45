"""generate_many's pipeline: its journal's life, one outcome per request, resumed errors."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from grokimagine_async import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    JournalError,
    Outcome,
    OutcomeStatus,
    RateLimit,
    SubmitUncertainError,
    TaskFailedError,
    TaskPollError,
)
from grokimagine_async._journal import SETTLED_BATCH, Journal
from grokimagine_async.simulator import Fault, Simulator

from .helpers import SIM_URL, TOKEN, Recorder, api_error, make_client, ok, prompts, running

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]

LOCK_PROBE = """
import fcntl, sys
try:
    with open(sys.argv[1]) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
except FileNotFoundError:
    print("free")
except OSError:
    print("held")
else:
    print("free")
"""


def lock_state(journal: Path) -> str:
    """Whether another process could take the journal's lock now."""
    lock = journal.with_name(journal.name + ".lock")
    probe = [sys.executable, "-c", LOCK_PROBE, str(lock)]
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def no_garbage_collector() -> Iterator[None]:
    """Only reference counting frees objects here: a cycle would keep them."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.mark.skipif(sys.platform == "win32", reason="the probe uses fcntl")
async def test_a_break_out_of_a_bare_loop_frees_the_journal_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=50) as (_, client):
        with no_garbage_collector():
            async for _ in client.generate_many(prompts(5), journal=journal):
                assert lock_state(journal) == "held"
                break
            assert lock_state(journal) == "free"
    assert not journal.with_name("batch.db.lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the probe uses fcntl")
async def test_aclose_and_async_with_free_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=50) as (_, client):
        pipeline = client.generate_many(prompts(5), journal=journal)
        await pipeline.__anext__()
        assert lock_state(journal) == "held"
        await pipeline.aclose()
        await pipeline.aclose()  # twice is fine
        assert lock_state(journal) == "free"
        with pytest.raises(StopAsyncIteration):
            await pipeline.__anext__()
        async with client.generate_many(prompts(5), journal=journal) as results:
            async for _ in results:
                assert lock_state(journal) == "held"
                break
        assert lock_state(journal) == "free"


async def test_a_second_pipeline_on_an_open_journal_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=50) as (sim, client):
        first = client.generate_many(prompts(5), journal=journal)
        await first.__anext__()
        second = client.generate_many(prompts(5), journal=journal)
        with pytest.raises(JournalError, match=r"async with.*aclose"):
            await second.__anext__()
        # The first is untouched and goes on to the end.
        rest = [o async for o in first]
    assert len(rest) == 4
    assert sim.stats.tasks_created == 5


async def test_two_requests_answered_with_one_task_id_each_get_an_outcome() -> None:
    done = {"task_id": "task_same", "status": "completed", "response": ["https://cdn.test/v.mp4"]}
    api = Recorder(
        lambda request: ok({"task_id": "task_same"}) if request.method == "POST" else ok(done)
    )
    async with (
        make_client(api, poll_interval=0.01) as client,
        client.generate_many(prompts(2), concurrency=1) as results,
    ):
        outcomes = [o async for o in results]
        assert results.progress.settled == 2
        assert results.progress.running == 0
    assert sorted(o.index for o in outcomes) == [0, 1]
    assert {o.task_id for o in outcomes} == {"task_same"}
    assert {o.status for o in outcomes} == {OutcomeStatus.COMPLETED}


async def test_a_resumed_outcome_raises_what_the_first_run_raised(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=50, failure_rate=1.0, seed=4) as (sim, client):
        sim.inject(Fault.server_error(), endpoint="generate", times=1)
        async with client.generate_many(prompts(3), journal=journal, concurrency=1) as results:
            first = sorted([o async for o in results], key=lambda o: o.index)
        async with client.generate_many(prompts(3), journal=journal) as results:
            again = sorted([o async for o in results], key=lambda o: o.index)
    assert [o.status for o in first] == [
        OutcomeStatus.UNCERTAIN,
        OutcomeStatus.FAILED,
        OutcomeStatus.FAILED,
    ]
    for before, after in zip(first, again, strict=True):
        assert after.from_journal
        assert type(after.error) is type(before.error)
        assert str(after.error) == str(before.error)
    uncertain = again[0].error
    assert isinstance(uncertain, SubmitUncertainError)
    assert uncertain.request == first[0].request
    assert type(uncertain.cause) is type(first[0].error.cause)  # type: ignore[union-attr]
    failed = again[1].error
    assert isinstance(failed, TaskFailedError)
    assert failed.task == first[1].task
    assert failed.task.failure_kind is not None


async def test_a_poll_error_outcome_chains_its_cause() -> None:
    async with running(limit=50) as (sim, client):
        sim.inject(Fault.error_in_200(code=403), endpoint="status", times=50)
        async with client.generate_many(prompts(1)) as results:
            (first,) = [o async for o in results]
    assert isinstance(first.error, TaskPollError)
    assert first.error.__cause__ is first.error.cause


async def test_resubmit_failed_sends_again_what_may_succeed_and_keeps_the_old_id(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "batch.db"
    retryable = {"grok imagine build failed": 1.0}
    async with running(limit=50, failure_rate=1.0, failure_messages=retryable) as (sim, client):
        async with client.generate_many(prompts(2), journal=journal) as results:
            first = [o async for o in results]
        assert {o.status for o in first} == {OutcomeStatus.FAILED}
        assert all(o.task is not None and o.task.resubmit_may_succeed for o in first)
        # Without the flag a rerun only reads the journal.
        async with client.generate_many(prompts(2), journal=journal) as results:
            assert {o.from_journal async for o in results} == {True}
        assert sim.stats.tasks_created == 2
    async with running(limit=50, failure_rate=0.0) as (sim, client):
        async with client.generate_many(
            prompts(2), journal=journal, resubmit_failed=True, max_credits=1000
        ) as results:
            again = [o async for o in results]
            spent = results.progress.spent_credits
        assert sim.stats.tasks_created == 2
    assert {o.status for o in again} == {OutcomeStatus.COMPLETED}
    assert not any(o.from_journal for o in again)
    assert spent == 4 * 40  # the failed attempts were paid for too
    with contextlib.closing(sqlite3.connect(journal)) as db:
        kept = {row[0] for row in db.execute("SELECT task_id FROM attempts")}
    assert kept == {o.task_id for o in first}


async def test_resubmit_failed_leaves_failures_that_would_fail_again(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    refused = {"Inappropriate content, please try another prompt.": 1.0}
    async with running(limit=50, failure_rate=1.0, failure_messages=refused) as (sim, client):
        async with client.generate_many(prompts(2), journal=journal) as results:
            [o async for o in results]
        async with client.generate_many(
            prompts(2), journal=journal, resubmit_failed=True
        ) as results:
            again = [o async for o in results]
    assert {o.from_journal for o in again} == {True}
    assert sim.stats.tasks_created == 2


async def test_an_unreachable_host_stops_the_batch_at_the_first_proof() -> None:
    api = Recorder(httpx.ConnectError("connection refused"))
    async with (
        make_client(api, max_retries=1) as client,
        client.generate_many(prompts(40), concurrency=2) as results,
    ):
        outcomes = [o async for o in results]
    reasons = {id(o.error) for o in outcomes if o.status is OutcomeStatus.SKIPPED}
    errors = [o for o in outcomes if o.status is OutcomeStatus.ERROR]
    assert len(outcomes) == 40
    assert len(reasons) == 1  # every skipped row carries the one stop reason
    assert all(isinstance(o.error, APIConnectionError) for o in errors)
    assert len(errors) <= 2
    assert len(api.requests) <= 2 * 2  # the first two rows' attempts, no more


async def test_a_refused_token_settles_the_rest_with_the_one_reason() -> None:
    api = Recorder(api_error(401, "UNAUTHORIZED", "bad token"))
    async with (
        make_client(api) as client,
        client.generate_many(prompts(10), concurrency=1) as results,
    ):
        outcomes = [o async for o in results]
    skipped = [o for o in outcomes if o.status is OutcomeStatus.SKIPPED]
    assert len(api.requests) == 1
    assert len(skipped) == 9
    assert len({id(o.error) for o in skipped}) == 1
    assert isinstance(skipped[0].error, AuthenticationError)


async def test_result_gives_the_completed_task_or_raises_the_error() -> None:
    async with (
        running(limit=50, failure_rate=0.5, seed=11) as (_, client),
        client.generate_many(prompts(8)) as results,
    ):
        outcomes = [o async for o in results]
    completed = [o for o in outcomes if o.status is OutcomeStatus.COMPLETED]
    failed = [o for o in outcomes if o.status is OutcomeStatus.FAILED]
    assert completed
    assert failed
    for o in completed:
        assert o.result().videos == o.videos
        assert o.ok
    for o in failed:
        with pytest.raises(TaskFailedError):
            o.result()


SETTLE_AND_DIE = """
import os, sys
from grokimagine_async import Outcome, OutcomeStatus
from grokimagine_async._journal import Journal

journal = Journal(sys.argv[1], [{"prompt": "a"}, {"prompt": "b"}])
journal.sending(0)
journal.submitted(0, "task_a")
journal.record(Outcome(0, None, OutcomeStatus.COMPLETED, "task_a", None, None, False))
os._exit(9)  # as a kill -9 would: no close, nothing flushed
"""


def test_a_settled_row_waits_for_the_next_write_and_a_crash_leaves_its_task_id(
    tmp_path: Path,
) -> None:
    payloads = [{"prompt": str(i)} for i in range(SETTLED_BATCH + 2)]
    path = tmp_path / "j.db"
    journal = Journal(path, payloads)
    for i in range(SETTLED_BATCH + 1):
        journal.submitted(i, f"task_{i}")
    journal.record(Outcome(0, None, OutcomeStatus.COMPLETED, "task_0", None, None, False))
    # Not written yet: the row is still the task to follow, id and all.
    assert Journal.peek(path, payloads)[0].state == Journal.SUBMITTED
    # The next write that must land takes it along, in one transaction.
    journal.sending(SETTLED_BATCH + 1)
    assert Journal.peek(path, payloads)[0].state == Journal.DONE
    # A full batch is written without waiting for another write.
    for i in range(1, SETTLED_BATCH + 1):
        journal.record(Outcome(i, None, OutcomeStatus.FAILED, f"task_{i}", None, None, False))
    states = [e.state for e in Journal.peek(path, payloads)]
    assert states[: SETTLED_BATCH + 1] == [Journal.DONE] * (SETTLED_BATCH + 1)
    journal.close()

    crashed = tmp_path / "crashed.db"
    subprocess.run([sys.executable, "-c", SETTLE_AND_DIE, str(crashed)], check=False)
    (entry, _) = Journal.peek(crashed, [{"prompt": "a"}, {"prompt": "b"}])
    assert (entry.state, entry.task_id) == (Journal.SUBMITTED, "task_a")


class StopOnPop(deque[Any]):
    """A queue that stops its batch as the feeder takes the ``at``-th request from it:
    that request's task is then started but has not run."""

    def __init__(self, items: Iterable[Any], batch: Any, at: int) -> None:
        super().__init__(items)
        self.batch, self.at, self.popped = batch, at, 0

    def popleft(self) -> Any:
        item = super().popleft()
        self.popped += 1
        if self.popped == self.at:
            self.batch.stop(self.batch.stop_reason)
        return item


async def test_a_stop_reaches_a_submission_started_but_not_yet_run() -> None:
    sim = Simulator(limit=100, period=1.0, generation_time=(0.05, 0.1), seed=3)
    # Two slots in five seconds: the third submission would wait that long for one,
    # only to find the batch stopped.
    async with (
        httpx.AsyncClient(transport=sim.transport()) as http,
        AsyncClient(TOKEN, base_url=SIM_URL, http_client=http, rate_limit=RateLimit(2, 5.0)) as c,
    ):
        pipeline = c.generate_many(prompts(6))
        async with pipeline as results:
            batch = pipeline._batch
            batch.queue = StopOnPop(batch.queue, batch, at=3)
            with anyio.fail_after(10):
                async for _ in results:
                    if batch.stopping:
                        break
                stopped = anyio.current_time()
                await pipeline.wait_submitted()
                quiet_after = anyio.current_time() - stopped
    # The two before it may have gone; the third and the rest never do.
    assert sim.stats.tasks_created <= 2
    # At once, not after the five seconds a slot would have taken.
    assert quiet_after < 2.5


async def test_a_batch_never_fails_a_request_because_the_server_said_slow_down() -> None:
    refused = api_error(429, "RATE_LIMITED", "slow down")
    state = {"refusals": 12}
    done = {"task_id": "t", "status": "completed", "response": ["https://cdn.test/v.mp4"]}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and state["refusals"] > 0:
            state["refusals"] -= 1
            return refused
        return ok({"task_id": "t"}) if request.method == "POST" else ok(done)

    api = Recorder(answer)
    async with (
        make_client(
            api, rate_limit=RateLimit(1000, 0.2), rate_limit_patience=0.05, poll_interval=0.01
        ) as client,
        client.generate_many(prompts(2), concurrency=1) as results,
    ):
        outcomes = [o async for o in results]
    assert {o.status for o in outcomes} == {OutcomeStatus.COMPLETED}


async def test_the_spend_counts_exactly_the_tasks_made_when_the_rest_were_stopped() -> None:
    # Requests stopped while queued for a slot, and tasks made: the credits reserved
    # for the first come back, in the one place they are given back.
    async with (
        running(limit=10) as (sim, client),
        client.generate_many(prompts(40), concurrency=20) as results,
    ):
        with anyio.fail_after(30):
            while sim.stats.tasks_created < 5:  # noqa: ASYNC110 - the state is the server's
                await anyio.sleep(0.005)
            results.stop_submitting()
            await results.wait_submitted()
        spent = results.progress.spent_credits
        created = sim.stats.tasks_created
    assert 5 <= created < 40
    assert spent == 40 * created
