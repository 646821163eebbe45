"""The two limiters, in one process and through Redis, make the same decisions.

Each scenario is a list of answers. A request takes a slot, the time of the
grant is noted, and the answer is recorded at once; then the next. Both
backends run the same scenario on the real clock (a real ``redis-server`` on
loopback for the shared one, a "minute" of one second), and the grants must
come at the same times, within a fifth of the period.

Each scenario's comment names what the scripts did before they were made to
agree (the drift the scenario caught).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import pytest

from grokimagine_async import RateLimit, RedisLimiter, SlidingWindowLimiter
from grokimagine_async._headers import RateFeedback

from .redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", reason="redis.asyncio")]

LIMIT, PERIOD = 20, 1.0
RATE = RateLimit(LIMIT, PERIOD)
#: How far apart the two backends' grants may be: Redis's round trips and a loaded
#: machine's late wake-ups, well under what the drifts caught moved a grant by (0.55 s
#: and more).
TOLERANCE = 0.2 * PERIOD

OK = RateFeedback(200)
T = TypeVar("T")


def told(remaining: int, reset_after: float | None = None) -> RateFeedback:
    return RateFeedback(200, remaining=remaining, reset_after=reset_after)


def refused(retry_after: float | None = None) -> RateFeedback:
    return RateFeedback(429, retry_after=retry_after)


#: The answer to the i-th request (from 0), given when each request so far was granted
#: (this one last); None: no answer came.
Answer = Callable[[int, Sequence[float]], RateFeedback | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: int
    answer: Answer


def counting(others: int) -> Answer:
    """A server that counts a sliding window of ours and ``others`` of someone
    else's, and says what is left."""

    def answer(i: int, grants: Sequence[float]) -> RateFeedback:
        ours = sum(1 for t in grants if t > grants[-1] - PERIOD)
        return told(max(0, LIMIT - others - ours), reset_after=PERIOD)

    return answer


def per_tenth(i: int, grants: Sequence[float]) -> RateFeedback:
    """A server that counts per tenth of the period (a per-second gateway in front
    of a per-minute plan): more than a tenth of the plan in one is refused."""
    recent = sum(1 for t in grants if t > grants[-1] - PERIOD / 10)
    return refused() if recent > LIMIT // 10 else OK


SCENARIOS = [
    Scenario("200s, nothing said", 25, lambda i, g: OK),
    Scenario("200s with Remaining and Reset", 25, counting(others=0)),
    Scenario("a 429 without advice", 8, lambda i, g: refused() if i == 3 else OK),
    Scenario("a 429 with Retry-After", 6, lambda i, g: refused(retry_after=0.3) if i == 2 else OK),
    Scenario("two 429s in a row", 8, lambda i, g: refused() if i in (2, 3) else OK),
    Scenario("a per-second server", 30, per_tenth),
    Scenario("a request that never answers", 22, lambda i, g: None if i == 0 else OK),
    Scenario("a hidden second spender", 20, counting(others=6)),
    Scenario(
        "a full window refused",
        20,
        # Most of the budget ours and let in, then a refusal: someone else holds the
        # rest. Their share is reserved for a period after the gate, and the pace
        # keeps under ours. (The scripts let the whole budget out within 0.3 s.)
        lambda i, g: refused() if i == 14 else OK,
    ),
    Scenario(
        "Remaining 0, everything back at a near Reset",
        4,
        # A fixed window near its end: nothing comes back before the reset, then all.
        # (The scripts refilled at the plan's rate: grants at 0.05 s, not 0.6 s.)
        lambda i, g: told(0, reset_after=0.6) if i == 0 else OK,
    ),
]


async def drive(limiter: SlidingWindowLimiter | RedisLimiter, scenario: Scenario) -> list[float]:
    """Run the scenario: when each request was granted, from the first grant."""
    grants: list[float] = []
    start: float | None = None
    with anyio.fail_after(10 * PERIOD):
        for i in range(scenario.requests):
            slot = await limiter.acquire()
            now = time.monotonic()
            start = now if start is None else start
            grants.append(now - start)
            slot.record(scenario.answer(i, grants))
    return grants


def compare(local: Sequence[float], shared: Sequence[float]) -> list[str]:
    return [
        f"request {i}: in-process {a:.3f}s, Redis {b:.3f}s"
        for i, (a, b) in enumerate(zip(local, shared, strict=True))
        if abs(a - b) > TOLERANCE
    ]


async def on_both(
    run: Callable[[SlidingWindowLimiter | RedisLimiter], Awaitable[T]],
    redis_server: RedisServer,
    key: str,
) -> tuple[T, T]:
    """``run`` on a fresh in-process limiter, then on a fresh Redis one: both results."""
    local = await run(SlidingWindowLimiter(RATE))
    shared_limiter = RedisLimiter(redis_server.url, RATE, key=key)
    try:
        shared = await run(shared_limiter)
    finally:
        await shared_limiter.aclose()
    return local, shared


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_both_backends_grant_at_the_same_times(
    scenario: Scenario, redis_server: RedisServer
) -> None:
    local, shared = await on_both(
        lambda limiter: drive(limiter, scenario), redis_server, f"parity-{scenario.name}"
    )
    differ = compare(local, shared)
    assert not differ, f"{scenario.name}: " + "; ".join(differ)


async def tightened_then_relaxed(
    limiter: SlidingWindowLimiter | RedisLimiter,
) -> tuple[float, float | None]:
    """Pacing at the plan's rate, then refused at it: the pace it drops to, and the
    pace it relaxes to after a quiet spell (the limiter's own figures, not its timing,
    which a loaded machine's round trips would blur over a long run)."""
    await drive(
        limiter, Scenario("refused twice", 6, lambda i, g: refused() if i in (2, 5) else OK)
    )
    plan = LIMIT / PERIOD
    with anyio.fail_after(10 * PERIOD):
        while not ((pace := limiter.status().pace) and pace < 0.99 * plan):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        tightened = pace
        relaxed: float | None = tightened
        while relaxed is not None and relaxed <= tightened * 1.001:
            await anyio.sleep(0.01)
            relaxed = limiter.status().pace
    return tightened, relaxed


async def test_both_backends_relax_a_refused_pace_by_half_steps(redis_server: RedisServer) -> None:
    local, shared = await on_both(tightened_then_relaxed, redis_server, "parity-relax")
    # Back up toward the pace that was refused by a half step, not straight to it (the
    # scripts stepped straight back: 20 a second where the in-process limiter took 18.4).
    assert local[1] is not None
    assert local[1] < 0.99 * LIMIT / PERIOD, local
    assert shared[0] == pytest.approx(local[0], rel=0.01)
    assert shared[1] == pytest.approx(local[1], rel=0.01)


def test_the_scripts_hold_no_rule_of_their_own() -> None:
    from grokimagine_async import _redis_scripts as scripts

    text = scripts.ACQUIRE + scripts.RECORD + scripts.APPLY + scripts.RESEED
    # What a response teaches is _rules.py's: the scripts never read the run of 429s,
    # the quiet spell, or the policy's tuning.
    for name in ("streak", "quiet", "last_refused", "policy", "P."):
        assert name not in re.sub(r"--[^\n]*", "", text), name
    # No tuning number as a literal: what is left is indices, units and rounding guards.
    code = re.sub(r"--[^\n]*", "", text)
    code = re.sub(r"(KEYS|ARGV)\[\d+\]", "", code)
    literals = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", code))
    assert literals <= {"0", "1", "2", "3", "1000", "1000000", "0.001", "1e-9", "1e15"}
