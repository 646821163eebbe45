"""What a batch would send and spend, from its file and its journal, before it runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .._config import CREDITS_PER_VIDEO, RateLimit
from .._journal import Journal, JournalEntry, Resume


@dataclass(frozen=True)
class Estimate:
    """What a batch would send and spend, from its file and its journal."""

    total: int
    #: Settled in an earlier run of the journal (failed rows to resend included).
    settled: int
    #: Submitted in an earlier run, still to be followed.
    in_flight: int
    #: Under way when an earlier run stopped: may have created a task.
    uncertain: int
    #: Not yet submitted: what this run would pay for.
    to_submit: int
    credits: int
    #: Seconds the plan's rate allows at the least: a submission and one status
    #: poll a video, past the first window's whole budget.
    least_seconds: float
    rate: RateLimit
    #: Settled as failed in an earlier run in a way a new submission may cure:
    #: sent again (and paid for again) with ``--retry-failed``.
    retriable: int = 0

    @property
    def requests(self) -> int:
        return 2 * self.to_submit + self.in_flight


def estimate(
    total: int,
    entries: Iterable[JournalEntry],
    rate: RateLimit,
    *,
    max_credits: int | None,
    resubmit_uncertain: bool,
    retry_failed: bool = False,
) -> Estimate:
    """The cost and the least time of running a batch of ``total`` requests now,
    given its journal's ``entries`` (read once, in one pass): each row is taken
    as the journal's own rule says a rerun takes it."""
    actions: Counter[Resume] = Counter()
    held = settled = retriable = already = 0
    for entry in entries:
        action = entry.resume(resubmit_uncertain=resubmit_uncertain, resubmit_failed=retry_failed)
        held += 1
        actions[action] += 1
        settled += entry.state == Journal.DONE
        retriable += entry.resubmit_may_succeed
        # What earlier runs may already have paid for, as the pipeline counts it.
        already += (entry.state == Journal.DONE and action is Resume.SEND) or (
            action is not Resume.SEND and entry.may_have_paid
        )
    # A run that stopped while reading its input left fewer rows than the input's.
    to_submit = actions[Resume.SEND] + max(0, total - held)
    in_flight = actions[Resume.FOLLOW]
    uncertain = actions[Resume.UNCERTAIN]
    if max_credits is not None:
        room = max(0, max_credits - already * CREDITS_PER_VIDEO)
        to_submit = min(to_submit, room // CREDITS_PER_VIDEO)
    requests = 2 * to_submit + in_flight
    least = max(0, requests - rate.requests) / rate.per_second
    return Estimate(
        total,
        settled,
        in_flight,
        uncertain,
        to_submit,
        to_submit * CREDITS_PER_VIDEO,
        least,
        rate,
        retriable,
    )
