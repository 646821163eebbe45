"""The blocking client, used as scripts, notebooks, web views and threads use it,
against the simulator on loopback."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grokimagine_async import (
    AsyncClient,
    AuthenticationError,
    Client,
    ClientClosedError,
    JournalError,
    OutcomeStatus,
    RateLimit,
    RequestValidationError,
    TaskFailedError,
    TaskState,
)
from grokimagine_async.simulator import Simulator

from .helpers import TOKEN

#: The simulator's compressed plan, stated to the clients.
PLAN = RateLimit(20, 1.0)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(limit=PLAN.requests, period=PLAN.period, generation_time=(0.2, 0.5), seed=7)


@pytest.fixture
def url(sim: Simulator) -> Iterator[str]:
    with sim.serve_in_thread() as served:
        yield served


def client(url: str, **options: object) -> Client:
    return Client(TOKEN, base_url=url, rate_limit=PLAN, poll_interval=0.1, **options)  # type: ignore[arg-type]


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "grokimagine-loop"]


def test_it_takes_what_the_async_client_takes() -> None:
    """The same arguments, and the same calls with the same arguments, so the two
    cannot drift apart."""

    def parameters(f: object) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]  # type: ignore[arg-type]

    assert parameters(Client.__init__) == parameters(AsyncClient.__init__)
    for name in ("submit", "get_task", "wait", "generate", "download", "submit_many", "watch"):
        assert parameters(getattr(Client, name)) == parameters(getattr(AsyncClient, name)), name
    assert parameters(Client.generate_many) == parameters(AsyncClient.generate_many)


def test_single_calls(url: str, sim: Simulator, tmp_path: Path) -> None:
    with client(url) as c:
        task = c.generate(prompt="a fox")
        assert task.state is TaskState.COMPLETED
        assert c.get_task(task.task_id).state is TaskState.COMPLETED
        paths = c.download(task, tmp_path)
        assert paths
        assert all(p.read_bytes()[4:8] == b"ftyp" for p in paths)
        task_id = c.submit(prompt="a boat")
        sim.fail_now(task_id)
        with pytest.raises(TaskFailedError) as failed:
            c.wait(task_id)
        assert failed.value.task.task_id == task_id
        assert "hidden" in repr(c)
        assert TOKEN not in repr(c)
    with pytest.raises(ClientClosedError):
        c.get_task(task.task_id)


def test_bad_input_is_refused_before_anything_is_sent(url: str, sim: Simulator) -> None:
    with client(url) as c:
        with pytest.raises(RequestValidationError):
            c.generate(prompt="")
        with pytest.raises(RequestValidationError):
            c.generate(prompt="a fox", timeout=-1)
    assert sim.stats.requests == 0


def test_the_same_errors() -> None:
    sim = Simulator(api_keys=[TOKEN])
    with (
        sim.serve_in_thread() as url,
        Client("wrong", base_url=url, rate_limit=PLAN) as c,
        pytest.raises(AuthenticationError),
    ):
        c.submit(prompt="a fox")


def test_bulk_calls(url: str, sim: Simulator, tmp_path: Path) -> None:
    prompts = [{"prompt": f"video {i}"} for i in range(6)]
    with client(url) as c:
        submitted = c.submit_many(prompts)
        assert [o.ok for o in submitted] == [True] * 6
        watch = c.watch([o.task_id for o in submitted if o.task_id])
        seen = [task.task_id for task in watch]
        assert sorted(seen) == sorted(o.task_id for o in submitted if o.task_id)
        assert watch.unfinished == {}
        journal = tmp_path / "batch.db"
        with c.generate_many(prompts, journal=journal) as results:
            statuses = [outcome.status for outcome in results]
            assert results.progress.settled == 6
        assert statuses == [OutcomeStatus.COMPLETED] * 6
        # A bare ``for`` over a rerun of the journal: everything from it, nothing sent.
        before = sim.stats.tasks_created
        again = list(c.generate_many(prompts, journal=journal))
        assert all(o.from_journal for o in again)
        assert sim.stats.tasks_created == before


def test_threads_with_a_client_each_keep_to_the_plan_together(url: str, sim: Simulator) -> None:
    """Each alone may spend the whole plan: on two budgets the server would see twice
    the plan, and answer 429."""
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with client(url) as c:
                outcomes = c.submit_many([{"prompt": f"{name} {i}"} for i in range(25)])
                assert all(o.ok for o in outcomes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sim.stats.tasks_created == 50
    assert sim.stats.rate_limited == 0


def test_it_works_where_an_event_loop_already_runs(url: str) -> None:
    """A Jupyter cell runs inside the kernel's running loop."""

    async def cell() -> TaskState:
        with client(url) as c:
            return c.generate(prompt="a fox").state

    assert asyncio.run(cell()) is TaskState.COMPLETED


def test_the_loop_thread_stops_with_the_last_client(url: str) -> None:
    first, second = client(url), client(url)
    assert len(loop_threads()) == 1
    first.close()
    assert len(loop_threads()) == 1
    second.close()
    second.close()  # twice is fine
    deadline = time.monotonic() + 10
    while loop_threads():
        assert time.monotonic() < deadline, "the loop thread is still running"
        time.sleep(0.01)  # another thread stops it: look again


SCRIPT = textwrap.dedent(
    """
    import sys
    from grokimagine_async import Client, RateLimit

    prompts = [{"prompt": f"video {i}"} for i in range(int(sys.argv[2]))]
    with Client(rate_limit=RateLimit(int(sys.argv[3]), 1.0), poll_interval=0.1) as client:
        done = 0
        try:
            with client.generate_many(prompts, journal=sys.argv[1]) as results:
                for outcome in results:
                    done += outcome.ok
        except KeyboardInterrupt:
            print(f"interrupted: {done} done", flush=True)
            sys.exit(130)
    print(f"{done} done", flush=True)
    """
)


def test_ctrl_c_sends_nothing_more_and_a_rerun_pays_once(
    url: str, sim: Simulator, tmp_path: Path
) -> None:
    n = 30
    script = tmp_path / "batch.py"
    script.write_text(SCRIPT)
    journal = str(tmp_path / "batch.db")
    env = {**os.environ, "GROKIMAGINE_API_KEY": TOKEN, "GROKIMAGINE_BASE_URL": url}
    # Slow enough that the Ctrl-C lands with most of the batch unsent.
    command = [sys.executable, str(script), journal, str(n)]
    proc = subprocess.Popen(
        [*command, "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    while sim.stats.tasks_created < 3:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.005)  # the script's process moves the state: look again
    proc.send_signal(signal.SIGINT)
    printed, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130, errors
    assert "Traceback" not in errors
    assert printed.startswith("interrupted:")
    created = sim.stats.tasks_created
    assert 3 <= created < n
    rerun = subprocess.run(
        [*command, str(PLAN.requests)], capture_output=True, text=True, env=env, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n} done" in rerun.stdout
    assert sim.stats.tasks_created == n


def test_a_batch_left_early_in_a_bare_for_lets_go_of_its_journal(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "batch.db"
    prompts = [{"prompt": f"video {i}"} for i in range(4)]
    with client(url) as c:
        for _ in c.generate_many(prompts, journal=journal):
            break
        gc.collect()
        deadline = time.monotonic() + 10
        while True:
            # The batch closes on the loop's thread, which holds its journal: look again.
            try:
                outcomes = list(c.generate_many(prompts, journal=journal))
                break
            except JournalError:
                assert time.monotonic() < deadline, "the journal was never let go"
                time.sleep(0.01)
    assert len(outcomes) == 4


def test_watch_after_close_says_the_client_is_closed(url: str) -> None:
    with client(url) as c:
        task_id = c.submit(prompt="a fox")
        watch = c.watch([task_id])
    with pytest.raises(ClientClosedError):
        next(watch)


def test_a_client_never_closed_does_not_keep_the_program_from_exiting() -> None:
    script = (
        "from grokimagine_async import Client\n"
        "Client('sk-test-unclosed', base_url='http://127.0.0.1:9')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=30, capture_output=True)
    assert done.returncode == 0, done.stderr


INTERRUPTED_SUBMIT = textwrap.dedent(
    """
    import sys
    from grokimagine_async import Client, RateLimit

    with Client(rate_limit=RateLimit(1, 30.0)) as client:
        client.submit(prompt="the one the plan allows")
        try:
            print("waiting for a slot", flush=True)
            client.submit(prompt="one the plan has no room for yet")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


def test_ctrl_c_stops_a_submission_still_waiting_for_its_slot_unsent(
    url: str, sim: Simulator
) -> None:
    env = {**os.environ, "GROKIMAGINE_API_KEY": TOKEN, "GROKIMAGINE_BASE_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_SUBMIT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting for a slot"
    proc.send_signal(signal.SIGINT)
    printed, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert printed.strip() == "interrupted"
    assert sim.stats.tasks_created == 1
