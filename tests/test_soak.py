"""A short chaos soak (``benchmarks/soak.py`` at a tenth of the size).

A batch through every fault the simulator has, over real sockets: every
request has one outcome, nothing is paid for twice, nothing escapes, and every
task created but never reported is an uncertain outcome; rerun with
``resubmit_uncertain=True`` and the faults off, nothing is left uncertain and
the only duplicates are those tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from soak import account, run_batch, set_faults

from grokimagine_async import DEFAULT_TIMEOUT
from grokimagine_async.simulator import Simulator

pytestmark = pytest.mark.anyio

N, LIMIT, PERIOD = 120, 400, 2.0


async def test_a_batch_through_every_fault_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    sim = Simulator(
        limit=LIMIT,
        period=PERIOD,
        time_scale=PERIOD / 60,
        generation_time=(0.2, 0.6),
        failure_rate=0.05,
        seed=11,
    )
    # Twice the benchmark's rate, so that a short batch meets every kind of fault.
    set_faults(sim, 0.15, PERIOD)
    journal, folder = tmp_path / "soak.db", tmp_path / "videos"
    with sim.serve_in_thread() as url:
        # The client's own read timeout: the simulator shares this process (and its GIL),
        # and an answer it sent late would read as lost to a compressed one.
        first = await run_batch(
            url, N, journal, folder, limit=LIMIT, period=PERIOD, timeout=DEFAULT_TIMEOUT
        )
        seen = account(first, sim, N)
        assert seen["once"]
        assert seen["duplicates"] == 0
        assert first["escaped"] == []
        assert seen["unreported not uncertain"] == 0
        assert seen["uncertain"] >= seen["unreported"] > 0
        assert seen["faults"] >= 10
        assert first["downloads"].get("saved", 0) == first["statuses"].get("completed", 0)

        sim.clear_faults()
        second = await run_batch(
            url,
            N,
            journal,
            folder,
            limit=LIMIT,
            period=PERIOD,
            timeout=DEFAULT_TIMEOUT,
            resubmit_uncertain=True,
        )
        again = account(second, sim, N)
    assert again["once"]
    assert again["uncertain"] == 0
    assert second["escaped"] == []
    # The price accepted: each task created but never reported is paid for again.
    assert again["duplicates"] == seen["unreported"]
