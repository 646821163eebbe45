"""submit_many, watch and generate_many against the simulator: on loopback, or in-process (trio)."""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from grokimagine_async import (
    AsyncClient,
    AuthenticationError,
    BudgetExceededError,
    GenerateRequest,
    OutcomeStatus,
    RateLimit,
    RequestValidationError,
    SubmitUncertainError,
    TaskState,
    WatchTimeoutError,
)
from grokimagine_async._exceptions import ConfigurationError, JournalError
from grokimagine_async._journal import Journal
from grokimagine_async.simulator import Fault, Simulator

from .helpers import TOKEN, Recorder, make_client, ok, prompts, running, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]


async def test_submit_many_keeps_input_order_and_isolates_failures() -> None:
    async with running() as (sim, client):
        sim.inject(Fault.server_error(), endpoint="generate", times=1)

        async def source() -> AsyncIterator[Any]:
            yield {"prompt": "a"}
            yield GenerateRequest(prompt="b")
            yield {"prompt": ""}
            yield {"prompt": "d"}

        outcomes = await client.submit_many(source(), concurrency=1)
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert isinstance(outcomes[2].error, RequestValidationError)
    # The first request sent meets the fault: the one the outcomes mark uncertain, and
    # only that one (which one that is: test_submit_many_sends_in_input_order).
    sent = [outcomes[i] for i in (0, 1, 3)]
    uncertain = [o for o in sent if isinstance(o.error, SubmitUncertainError)]
    assert len(uncertain) == 1
    assert uncertain[0].error.request == uncertain[0].request  # type: ignore[union-attr]
    created = {r["prompt"] for r in sim.stats.created_requests()}
    assert {o.request.prompt for o in sent if o.ok} == created  # type: ignore[union-attr]
    assert len(created) == 2


async def test_submit_many_sends_in_input_order() -> None:
    api = Recorder(lambda sent: ok({"task_id": f"task_{json.loads(sent.content)['prompt']}"}))
    async with make_client(api) as client:
        # Trio starts a batch of new tasks in either order: twenty rounds all in order
        # by chance would be one in a million.
        for _ in range(20):
            outcomes = await client.submit_many(prompts(3), concurrency=1)
            assert all(o.ok for o in outcomes)
    sent = [json.loads(r.content)["prompt"] for r in api.requests]
    assert sent == [p["prompt"] for p in prompts(3)] * 20


async def test_watch_yields_each_task_once_in_finishing_order_failures_included() -> None:
    async with running(failure_rate=0.3) as (sim, client):
        ids = [o.task_id for o in await client.submit_many(prompts(12))]
        assert None not in ids
        seen = [task async for task in client.watch([i for i in ids if i])]
    assert sorted(t.task_id for t in seen) == sorted(i for i in ids if i)
    assert all(t.state.is_terminal for t in seen)
    assert any(t.state is TaskState.FAILED for t in seen)
    finished = [sim.tasks[t.task_id].finished_at for t in seen]
    # In finishing order, give or take the polls that found them.
    assert sum(a > b + 0.5 for a, b in itertools.pairwise(finished)) == 0


async def test_ids_can_be_added_while_watching() -> None:
    async with running() as (_sim, client):
        first = await client.submit(prompt="first")
        watch = client.watch([first])
        got = []
        async for task in watch:
            got.append(task.task_id)
            if len(got) == 1:
                watch.add(await client.submit(prompt="second"))
    assert len(got) == 2


async def test_breaking_out_or_cancelling_leaves_nothing_running() -> None:
    async with running(generation_time=(0.1, 5.0)) as (sim, client):
        ids = [o.task_id for o in await client.submit_many(prompts(10))]
        before = len(anyio.get_running_tasks())
        async for _ in client.watch([i for i in ids if i]):
            break
        assert len(anyio.get_running_tasks()) == before
        with anyio.move_on_after(0.3):
            async for _ in client.watch([i for i in ids if i]):
                pass
        assert len(anyio.get_running_tasks()) == before
        # No task of the watch is left to poll: whatever is ready to run runs, and the
        # server hears nothing more.
        requests = sim.stats.requests
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert sim.stats.requests == requests


async def test_watch_timeout_loses_no_id() -> None:
    async with running(generation_time=(60.0, 60.0)) as (_sim, client):
        ids = [o.task_id for o in await client.submit_many(prompts(3))]
        with pytest.raises(WatchTimeoutError) as info:
            async for _ in client.watch([i for i in ids if i], timeout=0.5):
                pass
    assert sorted(info.value.unfinished) == sorted(i for i in ids if i)


async def test_generate_many_settles_every_request_once() -> None:
    async with running(failure_rate=0.2) as (sim, client):
        requests: list[Any] = [*prompts(15), {"prompt": "p", "ratio": "16:9"}]
        async with client.generate_many(requests) as results:
            outcomes = [o async for o in results]
    assert sorted(o.index for o in outcomes) == list(range(16))
    statuses = Counter(o.status for o in outcomes)
    assert statuses[OutcomeStatus.ERROR] == 1
    assert statuses[OutcomeStatus.COMPLETED] + statuses[OutcomeStatus.FAILED] == 15
    for o in outcomes:
        if o.status is OutcomeStatus.COMPLETED:
            assert o.task is not None
            assert o.videos
    assert sim.stats.tasks_created == 15


async def test_progress_adds_up_at_every_step() -> None:
    async with running() as (_sim, client):
        pipeline = client.generate_many(prompts(8), concurrency=2)
        assert pipeline.progress.total == 0
        seen = []
        async with pipeline as results:
            async for _ in results:
                p = results.progress
                seen.append(p)
                assert p.total == 8
                assert p.queued + p.submitting + p.running + p.settled == 8
        final = pipeline.progress
    assert final.settled == 8
    assert final.queued == final.submitting == final.running == 0
    assert final.spent_credits == 8 * 40
    assert [p.settled >= i + 1 for i, p in enumerate(seen)] == [True] * 8


async def test_a_bare_async_for_works_too() -> None:
    async with running() as (_sim, client):
        outcomes = [o async for o in client.generate_many(prompts(5))]
    assert sorted(o.index for o in outcomes) == list(range(5))


async def test_max_credits_stops_submitting_and_says_so() -> None:
    async with (
        running() as (sim, client),
        client.generate_many(prompts(5), max_credits=120, concurrency=1) as results,
    ):
        outcomes = [o async for o in results]
    skipped = [o for o in outcomes if o.status is OutcomeStatus.SKIPPED]
    assert len(skipped) == 2
    assert all(isinstance(o.error, BudgetExceededError) for o in skipped)
    assert sim.stats.tasks_created == 3


async def test_a_journal_resumes_without_paying_twice(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running() as (sim, client):
        first: list[Any] = []
        async for outcome in client.generate_many(prompts(8), journal=journal):
            first.append(outcome)
            if len(first) == 2:
                break
        created = sim.stats.tasks_created
        assert 2 <= created <= 8
        async with client.generate_many(prompts(8), journal=journal) as results:
            second = [o async for o in results]
    assert sorted(o.index for o in second) == list(range(8))
    assert {o.index for o in second if o.from_journal} >= {o.index for o in first}
    per_prompt = Counter(r["prompt"] for r in sim.stats.created_requests())
    assert set(per_prompt.values()) == {1}
    assert len(per_prompt) == 8


async def test_a_journal_of_another_batch_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running() as (_sim, client):
        async with client.generate_many(prompts(2), journal=journal) as results:
            _ = [o async for o in results]
        with pytest.raises(Exception, match="different batch"):
            async with client.generate_many(prompts(3), journal=journal) as results:
                pass


async def test_an_async_input_that_knows_its_length_is_counted_from_the_start() -> None:
    class Rows:
        def __len__(self) -> int:
            return 6

        async def __aiter__(self) -> AsyncIterator[dict[str, str]]:
            for i in range(6):
                yield {"prompt": f"video {i}"}

    async with running() as (_sim, client), client.generate_many(Rows()) as results:
        assert results.progress.total == 6
        outcomes = [o async for o in results]
    assert sorted(o.index for o in outcomes) == list(range(6))


async def test_a_streamed_input_is_read_as_submissions_need_it() -> None:
    pulled = 0
    seen_at_first_submit: list[int] = []
    progress_before_end = []

    def source() -> Any:
        nonlocal pulled
        for i in range(300):
            pulled += 1
            yield {"prompt": f"video {i}"}

    async with running(limit=100) as (sim, client), client.generate_many(source()) as results:
        async for outcome in results:
            if not seen_at_first_submit:
                seen_at_first_submit.append(pulled)
                progress_before_end.append(results.progress)
            assert outcome.status is OutcomeStatus.COMPLETED
        final = results.progress
    # The first video came back while the input was not all read (a chunk of 256 is), and the
    # progress said the total was not known yet.
    assert seen_at_first_submit[0] < 300
    assert progress_before_end[0].total is None
    assert final.total == 300
    assert final.settled == 300
    assert sim.stats.tasks_created == 300


async def test_a_streamed_rerun_resumes_and_refuses_rows_of_another_batch(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"

    def source(n: int, odd: int | None = None) -> Any:
        for i in range(n):
            yield {"prompt": f"other {i}" if i == odd else f"video {i}"}

    async with running(limit=400) as (sim, client):
        async with client.generate_many(source(300), journal=journal) as results:
            assert {o.status async for o in results} == {OutcomeStatus.COMPLETED}
        created = sim.stats.tasks_created
        # The same batch again: every row is read from the journal, nothing is sent.
        async with client.generate_many(source(300), journal=journal) as results:
            again = [o async for o in results]
        assert len(again) == 300
        assert all(o.from_journal for o in again)
        assert sim.stats.tasks_created == created
        # A batch that differs at row 280: the rows before it resume, the rest are
        # refused unsent, and the journal of the first batch is left as it was.
        async with client.generate_many(source(300, odd=280), journal=journal) as results:
            mixed = [o async for o in results]
        assert sim.stats.tasks_created == created
        assert len(mixed) == 300
        refused = [o for o in mixed if o.status is OutcomeStatus.SKIPPED]
        assert refused
        assert all("different batch" in str(o.error) for o in refused)
        assert min(o.index for o in refused) <= 280
        assert all(o.from_journal for o in mixed if o.status is not OutcomeStatus.SKIPPED)
        batch = [GenerateRequest(prompt=f"video {i}").to_payload() for i in range(300)]
        states = {e.state for e in Journal.peek(journal, batch)}
        assert states == {Journal.DONE}
        # Longer than the batch the journal recorded: refused once past its end.
        async with client.generate_many(source(301), journal=journal) as results:
            longer = [o async for o in results]
        assert sim.stats.tasks_created == created
        assert any("different batch" in str(o.error) for o in longer)
        # Shorter: the rows read are the same requests, and the end says the rest.
        with pytest.raises(ConfigurationError, match="different batch"):
            async with client.generate_many(source(200), journal=journal) as results:
                [o async for o in results]
        assert sim.stats.tasks_created == created


BATCH_SCRIPT = """
import sys, anyio
from grokimagine_async import AsyncClient, RateLimit

async def main(url, journal, n):
    # A plan of 16 a second: 100 videos are more than ten windows of work, so outcomes
    # come while it submits (a shorter batch polls once its submissions are out).
    async with AsyncClient("{token}", base_url=url, rate_limit=RateLimit(16, 1.0),
                           poll_interval=0.2) as client:
        requests = [{{"prompt": f"video {{i}}"}} for i in range(n)]
        async with client.generate_many(requests, journal=journal, concurrency=2) as results:
            async for outcome in results:
                print(outcome.index, outcome.status.value, outcome.from_journal, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


@pytest.mark.backends(
    "asyncio",
    reason="the client runs in a child process on anyio's default backend; this loop only "
    "reads its output, and the journal's resume rules are the same on trio (tests above)",
)
async def test_a_killed_batch_resumes_and_creates_each_video_once(tmp_path: Path) -> None:
    journal = str(tmp_path / "batch.db")
    script = tmp_path / "batch.py"
    script.write_text(BATCH_SCRIPT.format(token=TOKEN))
    sim = Simulator(limit=80, period=1.0, generation_time=(0.3, 1.0), seed=3)
    n = 100
    async with serving(sim) as url:
        args = [sys.executable, str(script), url, journal, str(n)]
        with anyio.fail_after(90):
            async with await anyio.open_process(args) as proc:
                assert proc.stdout is not None
                lines = 0
                async for chunk in proc.stdout:
                    lines += chunk.count(b"\n")
                    if lines >= 5:
                        break
                proc.kill()  # SIGKILL: no cleanup, no goodbye
            killed_after = sim.stats.tasks_created
            done = await anyio.run_process(args, check=True)
    assert 5 <= killed_after < n
    outcomes = [line.split() for line in done.stdout.decode().splitlines()]
    assert sorted(int(o[0]) for o in outcomes) == list(range(n))
    assert any(o[2] == "True" for o in outcomes)  # some came from the journal
    per_prompt = Counter(r["prompt"] for r in sim.stats.created_requests())
    uncertain = {int(o[0]) for o in outcomes if o[1] == "uncertain"}
    assert max(per_prompt.values()) == 1
    assert len(per_prompt) >= n - len(uncertain)


async def test_stop_submitting_keeps_every_id_and_a_rerun_sends_the_rest(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=20, deadline=60, generation_time=(0.2, 0.5), seed=9) as (
        sim,
        client,
    ):
        async with client.generate_many(prompts(20), journal=journal, concurrency=4) as run:
            with anyio.fail_after(10):
                while sim.stats.tasks_created < 3:
                    await run.__anext__()  # outcomes come as the batch goes
            run.stop_submitting()
            await run.wait_submitted()
            sent = sim.stats.tasks_created
            assert run.progress.submitting == 0
            stopped = [o async for o in run]
        assert sim.stats.tasks_created == sent  # nothing was sent after the stop
        skipped = [o for o in stopped if o.status is OutcomeStatus.SKIPPED]
        assert len(skipped) == 20 - sent
        assert all("stopped" in str(o.error) for o in skipped)
        async with client.generate_many(prompts(20), journal=journal) as rerun:
            outcomes = [o async for o in rerun]
    assert not [o for o in outcomes if o.status is OutcomeStatus.UNCERTAIN]
    assert Counter(r["prompt"] for r in sim.stats.created_requests()) == Counter(
        p["prompt"] for p in prompts(20)
    )


async def test_a_429_leaves_nothing_uncertain_and_a_stop_does_not_wait_for_its_retry(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "batch.db"
    async with running() as (sim, client):
        sim.inject(Fault.rate_limited(retry_after=60), endpoint="generate", times=1)
        async with client.generate_many(prompts(1), journal=journal) as run:
            with anyio.fail_after(10):
                while sim.stats.rate_limited == 0:  # noqa: ASYNC110 - the simulator's state
                    await anyio.sleep(0.01)
                run.stop_submitting()
                await run.wait_submitted()  # not the minute the Retry-After asks for
            (outcome,) = [o async for o in run]
        assert outcome.status is OutcomeStatus.SKIPPED
        assert [
            e.state for e in Journal.peek(journal, [GenerateRequest(prompt="video 0").to_payload()])
        ] == [Journal.NEW]
        async with client.generate_many(prompts(1), journal=journal) as rerun:
            (again,) = [o async for o in rerun]
    assert again.status is OutcomeStatus.COMPLETED
    assert sim.stats.tasks_created == 1


async def test_a_refused_token_stops_the_batch_and_a_rerun_sends_again(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    sim = Simulator(limit=100, period=1.0, generation_time=(0.1, 0.3), api_keys=["good"], seed=3)
    async with serving(sim) as url:
        bad = AsyncClient("bad", base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.1)
        async with bad, bad.generate_many(prompts(5), journal=journal, concurrency=1) as run:
            refused = [o async for o in run]
        assert sim.stats.requests == 1  # one 401, not five
        assert {type(o.error) for o in refused} == {AuthenticationError}
        good = AsyncClient("good", base_url=url, rate_limit=RateLimit(100, 1.0), poll_interval=0.1)
        async with good, good.generate_many(prompts(5), journal=journal) as run:
            outcomes = [o async for o in run]
    assert {o.status for o in outcomes} == {OutcomeStatus.COMPLETED}
    assert sim.stats.tasks_created == 5


async def test_every_caller_of_wait_submitted_returns() -> None:
    async with running() as (sim, client):
        sim.inject(Fault.delay(0.5), endpoint="generate", times=4)
        async with client.generate_many(prompts(4), concurrency=4) as run:
            with anyio.fail_after(10):
                while run.progress.submitting < 4:  # noqa: ASYNC110 - the pipeline's state
                    await anyio.sleep(0.01)
                run.stop_submitting()
                returned = []

                async def wait(name: str) -> None:
                    await run.wait_submitted()
                    returned.append(name)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait, "first")
                    tg.start_soon(wait, "second")
    assert sorted(returned) == ["first", "second"]


async def test_a_poll_error_leaves_the_task_for_a_rerun_to_follow(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running() as (sim, client):
        sim.inject(Fault.error_in_200(code=403), endpoint="status", times=50)
        async with client.generate_many(prompts(1), journal=journal) as results:
            (first,) = [o async for o in results]
        assert first.status is OutcomeStatus.ERROR
        assert first.task_id is not None
        sim.clear_faults()
        async with client.generate_many(prompts(1), journal=journal) as results:
            (second,) = [o async for o in results]
    assert second.status is OutcomeStatus.COMPLETED
    assert second.task_id == first.task_id
    assert sim.stats.tasks_created == 1


async def test_stopping_early_marks_nothing_unsent_as_uncertain(tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    async with running(limit=20, deadline=60, generation_time=(0.2, 0.5), seed=5) as (
        sim,
        client,
    ):
        async for _ in client.generate_many(prompts(20), journal=journal, concurrency=10):
            break
        async with client.generate_many(prompts(20), journal=journal) as results:
            outcomes = [o async for o in results]
    assert not [o for o in outcomes if o.status is OutcomeStatus.UNCERTAIN]
    assert Counter(r["prompt"] for r in sim.stats.created_requests()) == Counter(
        p["prompt"] for p in prompts(20)
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["list", "generator"])
async def test_nothing_is_sent_after_the_deadline(streamed: bool) -> None:
    # A generator longer than a chunk: rows never read by the deadline get theirs too.
    n = 600 if streamed else 30
    requests = (p for p in prompts(n)) if streamed else prompts(n)
    async with (
        running(limit=5, deadline=10, generation_time=(0.2, 0.5), seed=6) as (sim, client),
        client.generate_many(requests, timeout=1.0) as results,
    ):
        outcomes = [o async for o in results]
    created = sim.stats.tasks_created
    assert created <= 10
    skipped = [o for o in outcomes if o.status is OutcomeStatus.SKIPPED]
    assert len(skipped) == n - created
    assert sorted(o.index for o in outcomes) == list(range(n))


async def test_a_stop_settles_the_rows_of_a_streamed_input_not_yet_read() -> None:
    async with running(limit=20, deadline=60, generation_time=(0.2, 0.5), seed=9) as (
        sim,
        client,
    ):
        requests = (p for p in prompts(600))
        async with client.generate_many(requests, concurrency=4) as run:
            with anyio.fail_after(10):
                while sim.stats.tasks_created < 3:
                    await run.__anext__()
            run.stop_submitting()
            await run.wait_submitted()
            sent = sim.stats.tasks_created
            rest = [o async for o in run]
            progress = run.progress
    assert sim.stats.tasks_created == sent
    assert len([o for o in rest if o.status is OutcomeStatus.SKIPPED]) == 600 - sent
    assert progress.total == 600
    assert progress.settled == 600


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": -5}, "timeout"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
async def test_bad_bulk_arguments_are_named(kwargs: dict[str, Any], field: str) -> None:
    async with running() as (_sim, client):
        with pytest.raises(RequestValidationError) as info:
            client.generate_many(prompts(1), **kwargs)
    assert info.value.field == field


async def test_a_journal_that_cannot_be_opened_says_so(tmp_path: Path) -> None:
    async with running() as (_sim, client):
        with pytest.raises(JournalError, match="cannot be used"):
            async with client.generate_many(prompts(1), journal=tmp_path):
                pass
