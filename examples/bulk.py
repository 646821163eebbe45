"""Turn a file of prompts into a folder of videos: a script to copy and adapt.

    export GROKIMAGINE_API_KEY=...        # and GROKIMAGINE_TIER=pro, say
    python examples/bulk.py prompts.txt --out videos --max-credits 4000

One prompt a line. Run it again after a crash or Ctrl-C: the journal beside the
folder resumes the batch, so no video is paid for twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from grokimagine_async import AsyncClient, GrokImagineError, Outcome, OutcomeStatus


async def main(prompts_file: Path, out: Path, max_credits: int | None) -> int:
    prompts = [
        {"prompt": line.strip()}
        for line in (await anyio.Path(prompts_file).read_text(encoding="utf-8")).splitlines()
        if line.strip()
    ]
    journal = out.with_name(out.name + ".journal.db")
    completed = 0

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
            async for outcome in results:
                if outcome.status is OutcomeStatus.COMPLETED:
                    downloads.start_soon(save, outcome)
                elif outcome.status is OutcomeStatus.FAILED and outcome.task is not None:
                    task = outcome.task
                    again = "worth a retry" if task.resubmit_may_succeed else "change it first"
                    print(f"#{outcome.index}: failed, {task.failure_kind}: {again}")
                else:
                    # error, uncertain, skipped or timed_out: the error says which and why.
                    print(f"#{outcome.index}: {outcome.status}: {outcome.error}")

    print(f"{completed} of {len(prompts)} videos in {out}/")
    return 0 if completed == len(prompts) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path, help="a text file, one prompt a line")
    parser.add_argument("--out", type=Path, default=Path("videos"), help="where videos go")
    parser.add_argument("--max-credits", type=int, help="stop before spending more")
    args = parser.parse_args()
    raise SystemExit(anyio.run(main, args.prompts, args.out, args.max_credits))
