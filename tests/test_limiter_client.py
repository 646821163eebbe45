"""The shared limiter against the simulator's three ways of counting, over loopback."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest

from grokimagine_async import AsyncClient, OutcomeStatus, RateLimit, Tier
from grokimagine_async.simulator import Fault, Simulator

from .helpers import TOKEN, prompts, serving

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "trio")]

LIMIT, PERIOD = 12, 0.5

# Each run of the sole user hammers for 2 s. Trio runs one, where a slot let go too
# early shows at once: an exact sliding window (any 0.5 s holding 13 is a 429), with the
# plainest header; how the header is written is the parser's business (test_limiter).
ONE_ON_TRIO = pytest.mark.backends("asyncio", reason="trio hammers the exact count once")


async def hammer(
    sim: Simulator, *, clients: int = 1, seconds: float = 4 * PERIOD, **kwargs: Any
) -> list[AsyncClient]:
    """Poll as fast as the clients allow, from many tasks, for a while."""
    kwargs.setdefault("rate_limit", RateLimit(LIMIT, PERIOD))
    async with serving(sim) as url:
        made = [AsyncClient(TOKEN, base_url=url, backoff=0.01, **kwargs) for _ in range(clients)]
        task_id = await made[0].submit(prompt="p")

        async def poll(client: AsyncClient) -> None:
            while True:
                await client.get_task(task_id)

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                for n in range(4 * LIMIT):
                    tg.start_soon(poll, made[n % clients])
        for client in made:
            await client.aclose()
    return made


@pytest.mark.parametrize(
    "model",
    [pytest.param("fixed", marks=ONE_ON_TRIO), "sliding", pytest.param("gcra", marks=ONE_ON_TRIO)],
)
@pytest.mark.parametrize(
    "reset_format",
    [
        pytest.param("epoch_s", marks=ONE_ON_TRIO),
        pytest.param("epoch_ms", marks=ONE_ON_TRIO),
        "delta_s",
    ],
)
async def test_a_sole_user_never_sees_a_429(model: str, reset_format: str) -> None:
    sim = Simulator(limit=LIMIT, period=PERIOD, rate_model=model, reset_format=reset_format, seed=1)
    await hammer(sim, clients=3)
    stats = sim.stats
    assert stats.rate_limited == 0
    assert stats.max_in_window() <= LIMIT
    # and it did use the budget: at least 3 full windows' worth in 4 periods
    assert stats.requests >= 3 * LIMIT


@pytest.mark.backends(
    "asyncio",
    reason="4 s of hammering: what it adds to the sole user's runs is the budget's "
    "arithmetic for another spender (test_limiter), the same on every backend",
)
async def test_a_second_spender_is_noticed_and_left_its_share() -> None:
    limit = LIMIT * 4
    sim = Simulator(limit=limit, period=PERIOD, background_share=0.3, seed=2)
    await hammer(sim, rate_limit=RateLimit(limit, PERIOD), seconds=8 * PERIOD)
    stats = sim.stats
    start = stats.log[0].time
    # The first burst may meet the other spender before any answer reveals it (and a
    # 429's whole-second Retry-After then holds two short periods); after that, none.
    settled = [r for r in stats.log if r.time > start + 4 * PERIOD]
    assert [r for r in settled if r.status == 429] == []
    accepted = sum(1 for r in settled if r.status == 200)
    span = settled[-1].time - settled[0].time
    assert accepted >= 0.5 * limit * span / PERIOD


async def test_an_unstated_plan_moves_up_to_what_the_headers_prove() -> None:
    sim = Simulator(tier="pro", seed=3)
    async with serving(sim) as url, AsyncClient(TOKEN, base_url=url) as client:
        assert client.rate_limit == Tier.FREE.rate_limit
        await client.submit(prompt="p")
        assert client.rate_limit == Tier.PRO.rate_limit
    async with serving(sim) as url, AsyncClient(TOKEN, base_url=url, tier="free") as client:
        await client.submit(prompt="p")
        assert client.rate_limit == Tier.FREE.rate_limit


async def test_a_429_closes_the_gate_for_everyone_then_the_request_is_retried() -> None:
    sim = Simulator(limit=100, period=PERIOD, seed=4)
    async with serving(sim) as url:
        client = AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(100, PERIOD), backoff=0.01)
        sim.inject(Fault.rate_limited(retry_after=1.0), endpoint="generate", times=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(client.submit, prompt="p"))
            with anyio.fail_after(5):
                while sim.stats.rate_limited == 0:  # noqa: ASYNC110 - state lives in the simulator
                    await anyio.sleep(0.01)
            assert client.rate_limit_status().remaining == 0
        await client.aclose()
    assert sim.stats.tasks_created == 1
    assert sim.stats.rate_limited == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100;w=60", (100, 60.0)),
        ('"default";q=20;w=2', (20, 2.0)),
        ("q=5; w=0.5", (5, 0.5)),
        ("100", None),
        ("100;w=0", None),
        ('"a";q=10;w=1, "b";q=100;w=60', None),
        ("", None),
    ],
)
def test_the_servers_word_on_its_window_is_read_plainly_or_not_at_all(
    value: str, expected: tuple[int, float] | None
) -> None:
    from grokimagine_async._headers import parse_policy

    assert parse_policy(value) == expected


async def test_an_unstated_plan_takes_the_window_the_server_names() -> None:
    # The simulator's compressed minute, named by its RateLimit-Policy header: a client
    # told no plan keeps to it rather than to a real minute (which would stall here).
    sim = Simulator(limit=20, period=1.0, generation_time=(0.05, 0.1), seed=3)
    async with serving(sim) as url:
        async with AsyncClient(TOKEN, base_url=url, poll_interval=0.05) as client:
            with anyio.fail_after(30):
                async with client.generate_many(prompts(30)) as results:
                    statuses = {o.status async for o in results}
            learnt = client.rate_limit_status()
        # Stated, a plan is kept whatever the server names.
        async with AsyncClient(TOKEN, base_url=url, rate_limit=RateLimit(10, 1.0)) as stated:
            await stated.get_task(await stated.submit(prompt="p"))
            kept = stated.rate_limit_status()
    assert statuses == {OutcomeStatus.COMPLETED}
    assert (learnt.limit, learnt.period) == (20, 1.0)
    assert (kept.limit, kept.period) == (10, 1.0)
    assert sim.stats.rate_limited == 0
