"""Servers that count more finely than their plan: pacing, waiting out 429s."""

from __future__ import annotations

import itertools
import logging

import pytest

from grokimagine_async import (
    ConfigurationError,
    RateLimit,
)
from grokimagine_async._headers import RateFeedback
from grokimagine_async._policy import POLICY
from grokimagine_async._sliding_window import WindowBudget

from .helpers import Recorder, make_client, ok

pytestmark = pytest.mark.anyio

PERIOD = 2.0
REFUSED = RateFeedback(429)


def sent_at_once(budget: WindowBudget, now: float) -> int:
    """Take every slot the budget lets go at ``now``; how many that was."""
    n = 0
    while budget.take(now) is not None:
        n += 1
    return n


def test_a_429_the_plan_does_not_explain_starts_pacing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    first = budget.take(0.0)
    assert first is not None
    budget.answered(0.01, RateFeedback(200, remaining=59), first, 0.0)
    assert sent_at_once(budget, 0.02) == 59  # not paced: the whole plan at once
    with caplog.at_level(logging.INFO, logger="grokimagine_async"):
        budget.answered(0.05, REFUSED, 5, 0.02)
    assert (budget.pace, budget.burst) == (30.0, 1)
    assert "pacing to 30 requests/s, 1 at once" in caplog.text


def test_only_requests_sent_under_a_setting_judge_it() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    tickets = [budget.take(0.0)]
    budget.answered(0.01, RateFeedback(200, remaining=59), 0, 0.0)
    tickets += [budget.take(0.02) for _ in range(20)]
    # Twenty refusals of one burst, all sent before the first was seen: one verdict.
    for ticket in tickets[1:]:
        assert ticket is not None
        budget.answered(0.05, REFUSED, ticket, 0.02)
    assert (budget.pace, budget.burst) == (30.0, 1)
    # A refusal of a request sent under the new setting tightens it again: at one at a
    # time, the pace itself drops.
    late = budget.take(2.5)
    assert late is not None
    budget.answered(2.6, REFUSED, late, 2.5)
    assert budget.pace == pytest.approx(30.0 * 0.85)


def test_refusals_in_a_row_lengthen_the_wait_past_a_retry_after_too_short() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    first = budget.take(0.0)
    assert first is not None
    budget.answered(0.01, RateFeedback(200, remaining=59), first, 0.0)
    before, a = budget.take(0.02), budget.take(0.02)
    assert before is not None
    assert a is not None
    told = RateFeedback(429, retry_after=0.01)
    budget.answered(0.03, told, a, 0.02)
    # An answer to a request sent before that refusal does not end the run of them.
    budget.answered(0.05, RateFeedback(200), before, 0.02)
    b = budget.take(0.12)
    assert b is not None
    budget.answered(0.13, told, b, 0.12)
    # A second refusal in a row: the server's time proved too short (someone else took
    # the room it saw), so the longer of it and the doubled wait, two of the plan's
    # intervals twice over; the one the server gave would have reopened by 0.25.
    reopens = 0.13 + 2 * (2 * PERIOD / 60)
    assert budget.free(reopens - 0.01) == 0
    assert budget.free(reopens + 0.1) > 0


def test_a_server_that_says_nothing_of_its_count_gets_a_slow_start() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    at_once = []
    now = 0.0
    for _ in range(7):
        tickets = []
        while (ticket := budget.take(now)) is not None:
            tickets.append(ticket)
        at_once.append(len(tickets))
        now += 0.1
        for ticket in tickets:
            budget.answered(now, RateFeedback(200), ticket, now - 0.1)
    # One, then doubling each round trip, but never more in flight than the plan's
    # rate needs at this round trip (30 a second for 0.1 s, twice over): a full window
    # is learnt of with few requests on the way.
    assert at_once == [1, 2, 4, 6, 6, 6, 6]
    assert budget.limit - budget.used(now + PERIOD) == 60


def test_a_429_in_the_slow_start_ends_it_with_a_few_refused() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    sent = 0
    now = 0.0
    refused = 0
    for _ in range(4):
        tickets = []
        while (ticket := budget.take(now)) is not None:
            tickets.append(ticket)
        now += 0.01
        for ticket in tickets:
            sent += 1
            # A gateway that takes three at once, then one every 1/30 s.
            if sent > 3:
                refused += 1
            feedback = REFUSED if sent > 3 else RateFeedback(200)
            budget.answered(now, feedback, ticket, now - 0.01)
    assert refused <= 4
    assert budget.pace == 30.0


def test_pacing_spaces_sends_at_the_pace_after_the_burst() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD, burst=2))
    assert (budget.pace, budget.burst) == (30.0, 2)
    sends = []
    now = 0.0
    while now < 1.0:
        while budget.take(now) is not None:
            sends.append(now)
            budget.answered(now, RateFeedback(200), len(sends) - 1, now)
        now = round(now + 0.001, 6)
    assert sends[:2] == [0.0, 0.0]  # the burst
    gaps = [b - a for a, b in itertools.pairwise(sends[1:])]
    assert all(abs(g - 1 / 30) < 0.0015 for g in gaps)
    assert 30 <= len(sends) <= 32


def test_a_stated_burst_is_kept_and_never_exceeded() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD, burst=4))
    assert sent_at_once(budget, 0.0) == 1  # the first request probes the token
    budget.answered(0.01, RateFeedback(200), 0, 0.0)
    assert sent_at_once(budget, 100.0) <= 4
    assert budget.burst == 4
    assert budget.pace == 30.0


def test_quiet_spells_relax_pacing_until_the_plan_goes_at_once_again() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.01, REFUSED, ticket, 0.0)
    assert budget.burst == 1
    assert budget.free(0.01 + 2 * PERIOD + 0.5) == 2
    assert budget.free(60.0) == POLICY.flight_least  # the server never said more
    assert budget.pace is None
    assert budget.burst is None


def test_a_429_right_after_relaxing_lengthens_the_next_quiet_spell() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    ticket = budget.take(0.0)
    assert ticket is not None
    budget.answered(0.01, REFUSED, ticket, 0.0)
    relaxed_at = 0.01 + 2 * PERIOD
    assert budget.free(relaxed_at + 0.1) == 2
    probe = budget.take(relaxed_at + 0.1)
    assert probe is not None
    budget.answered(relaxed_at + 0.2, REFUSED, probe, relaxed_at + 0.1)
    assert budget.burst == 1
    # Two periods on, it has not relaxed yet: the quiet spell doubled to four.
    assert budget.free(relaxed_at + 0.2 + 2 * PERIOD + 0.1) == 1
    assert budget.free(relaxed_at + 0.2 + 4 * PERIOD + 0.1) == 2


def fill_without_headers(budget: WindowBudget, n: int, at: float) -> None:
    """``n`` requests sent at ``at``, each answered 10 ms later saying nothing of the count."""
    for _ in range(n):
        ticket = budget.take(at)
        assert ticket is not None
        budget.answered(at + 0.01, RateFeedback(200), ticket, at)
        at += 0.01


def refuse_one(budget: WindowBudget, at: float) -> None:
    """One request sent at ``at``, refused 10 ms later."""
    ticket = budget.take(at)
    assert ticket is not None
    budget.answered(at + 0.01, REFUSED, ticket, at)


def test_a_refusal_with_most_of_the_window_ours_paces_under_our_share() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    fill_without_headers(budget, 40, 0.0)
    refuse_one(budget, 0.5)
    # Forty of ours were let in when the window was full: the other twenty are someone
    # else's, so the pace keeps to our forty a period, not the plan's sixty.
    assert budget.pace == pytest.approx(40 / PERIOD)
    # Their share (and a margin) stays set aside for a whole period after the gate
    # opens: the window frees no sooner than ours age out of it, and then only ours.
    assert budget.free(1.5) == 0
    assert budget.reserved(0.51 + PERIOD) >= 21
    assert budget.limit - budget.used(0.51 + PERIOD) <= 60 - 21


def test_a_refusal_early_in_the_window_paces_at_the_plans_rate() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    fill_without_headers(budget, 3, 0.0)
    refuse_one(budget, 0.05)
    # Three of ours, then a refusal: a server that counts finely, not a full window.
    assert budget.pace == 30.0
    assert budget.reserved(0.06 + 1.5 * PERIOD) == 0


def test_relaxing_comes_back_to_a_refused_pace_by_half_steps() -> None:
    budget = WindowBudget(RateLimit(60, PERIOD))
    now = 0.0
    for _ in range(3):  # 30, then 25.5, then 21.7 a second
        refuse_one(budget, now)
        now += PERIOD
    assert budget.pace == pytest.approx(30 * 0.85**2)
    paces = []
    for _ in range(4):
        now += 2 * PERIOD  # a quiet spell
        budget.free(now)
        paces.append(budget.pace)
    # Half steps up to the pace last refused (25.5), full steps past it.
    assert paces == pytest.approx([30 * 0.85**1.5, 30 * 0.85, 30.0, 30.0])


@pytest.mark.parametrize("burst", [0, 61, 2.5, True])
def test_a_burst_that_cannot_be_is_refused(burst: object) -> None:
    with pytest.raises(ConfigurationError, match="burst"):
        RateLimit(60, PERIOD, burst=burst)  # type: ignore[arg-type]


async def test_status_shows_what_was_learnt() -> None:
    api = Recorder(ok({"task_id": "t", "status": "running"}))
    async with make_client(api, rate_limit=RateLimit(60, PERIOD, burst=3)) as client:
        await client.get_task("t")
        status = client.rate_limit_status()
    assert (status.pace, status.burst) == (30.0, 3)


def test_ours_that_left_the_window_while_an_answer_was_on_its_way_are_not_someone_elses() -> None:
    budget = WindowBudget(RateLimit(100, PERIOD))
    # Ten of ours, answered at once: each holds its slot for a period from its answer.
    first = budget.take(0.0)
    assert first is not None
    budget.answered(0.001, RateFeedback(200, remaining=99), first, 0.0)
    tickets = [budget.take(0.001) for _ in range(9)]
    for counted, ticket in enumerate(tickets, start=2):
        assert ticket is not None
        budget.answered(0.002, RateFeedback(200, remaining=100 - counted), ticket, 0.001)
    assert budget.reserved(0.002) == 0
    # One more, sent just before they leave our window; the server answers while it
    # still counts them, and a busy event loop reads that answer only after they left.
    sent = PERIOD - 0.01
    late = budget.take(sent)
    assert late is not None
    budget.answered(PERIOD + 0.05, RateFeedback(200, remaining=89), late, sent)
    # Nobody else spends the token: nothing is set aside for them.
    assert budget.reserved(PERIOD + 0.05) == 0


def test_a_full_sliding_window_answered_late_is_not_taken_for_a_fixed_one() -> None:
    limit = 60
    gap = PERIOD / limit
    budget = WindowBudget(RateLimit(limit, PERIOD))
    # The plan spent evenly over a period, each answered at once.
    for counted in range(1, limit):
        at = (counted - 1) * gap
        ticket = budget.take(at)
        assert ticket is not None
        budget.answered(at, RateFeedback(200, remaining=limit - counted), ticket, at)
    sent = (limit - 1) * gap
    last = budget.take(sent)
    assert last is not None
    # The server counted the last one last, so it says its window empties a period
    # from then; the answer took two slots' time to come back.
    out = 2 * gap
    feedback = RateFeedback(200, remaining=0, reset_after=PERIOD - out)
    budget.answered(sent + out, feedback, last, sent)
    # A sliding window: the first slots come back a period after they were taken, not
    # all at once a period after the last (a fixed window near its end).
    assert budget.free(PERIOD + 0.2) > 0
