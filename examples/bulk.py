"""Turn a file of prompts into a folder of videos: a script to copy and adapt.

    export GROKIMAGINE_API_KEY=...        # and GROKIMAGINE_TIER=pro, say
    python examples/bulk.py prompts.txt --out videos --max-credits 4000

One prompt a line. Run it again after a crash or Ctrl-C: the journal beside the
folder resumes the batch, so no video is paid for twice.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio

from grokimagine_async import (
    AsyncClient,
    GenerationPipeline,
    GrokImagineError,
    Outcome,
    OutcomeStatus,
)

#: After a Ctrl-C, how long the requests already on the wire get to answer (past a
#: read timeout): their task ids, paid for, reach the journal.
STOP_GRACE = 45.0


async def main(prompts_file: Path, out: Path, max_credits: int | None) -> int:
    prompts = [
        {"prompt": line.strip()}
        for line in (await anyio.Path(prompts_file).read_text(encoding="utf-8")).splitlines()
        if line.strip()
    ]
    journal = out.with_name(out.name + ".journal.db")
    completed = skipped = 0

    async with AsyncClient() as client:

        async def save(outcome: Outcome) -> None:
            # Downloading beside the batch, not after it: links expire, and the
            # first videos are ready long before the last prompt is submitted.
            nonlocal completed
            assert outcome.task is not None
            try:
                paths = await client.download(outcome.task, out)
            except GrokImagineError as exc:
                print(f"#{outcome.index}: not downloaded: {exc}", file=sys.stderr)
                return
            completed += 1
            print(f"#{outcome.index}: {', '.join(map(str, paths))}")

        async with (
            anyio.create_task_group() as downloads,
            client.generate_many(prompts, journal=journal, max_credits=max_credits) as results,
        ):
            with anyio.CancelScope() as batch:
                async with anyio.create_task_group() as watching:
                    watching.start_soon(stop_on_ctrl_c, results, batch)
                    async for outcome in results:
                        if outcome.status is OutcomeStatus.COMPLETED:
                            downloads.start_soon(save, outcome)
                        elif outcome.status is OutcomeStatus.SKIPPED:
                            skipped += 1  # said once, at the end
                        elif outcome.status is OutcomeStatus.FAILED and outcome.task:
                            task = outcome.task
                            again = "worth a retry" if task.resubmit_may_succeed else "change it"
                            print(f"#{outcome.index}: failed, {task.failure_kind}: {again}")
                        else:
                            # error, uncertain or timed_out: the error says which and why.
                            print(f"#{outcome.index}: {outcome.status}: {outcome.error}")
                    watching.cancel_scope.cancel()  # done: Ctrl-C is Python's again
            if batch.cancel_called:
                # Interrupted: videos half downloaded are left for the rerun.
                downloads.cancel_scope.cancel()

    if batch.cancel_called:
        print(
            f"interrupted: {completed} of {len(prompts)} videos in {out}/; "
            "run the same command again to resume (nothing is paid for twice)"
        )
        return 130
    if skipped:
        print(f"{skipped} prompts not submitted (--max-credits); raise it and run again")
    print(f"{completed} of {len(prompts)} videos in {out}/")
    return 0 if completed == len(prompts) else 1


async def stop_on_ctrl_c(results: GenerationPipeline, batch: anyio.CancelScope) -> None:
    """The first Ctrl-C sends nothing more and lets the requests on the wire answer,
    so that every task paid for is in the journal; a second stops at once."""
    try:
        signals = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        receiver = signals.__enter__()
    except (NotImplementedError, ValueError, RuntimeError):
        return  # no signals here (Windows, a thread): Ctrl-C stops at once
    try:
        async for _ in receiver:
            break
        results.stop_submitting()
        print("stopping: sending nothing more (Ctrl-C again to stop at once)", file=sys.stderr)
        async with anyio.create_task_group() as waiting:

            async def at_once() -> None:
                async for _ in receiver:
                    waiting.cancel_scope.cancel()

            waiting.start_soon(at_once)
            with anyio.move_on_after(STOP_GRACE):
                await results.wait_submitted()
            waiting.cancel_scope.cancel()
    finally:
        signals.__exit__(None, None, None)
    batch.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path, help="a text file, one prompt a line")
    parser.add_argument("--out", type=Path, default=Path("videos"), help="where videos go")
    parser.add_argument("--max-credits", type=int, help="stop before spending more")
    args = parser.parse_args()
    raise SystemExit(anyio.run(main, args.prompts, args.out, args.max_credits))
