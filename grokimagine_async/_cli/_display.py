"""How a batch shows its progress: a live view on a terminal, log lines anywhere else."""

from __future__ import annotations

import time
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import OutcomeStatus
from ._format import duration, usd
from ._runner import Snapshot


def _counts(s: Snapshot) -> list[tuple[str, str, str]]:
    c = s.counts
    other = sum(
        c.get(k, 0)
        for k in (
            OutcomeStatus.ERROR,
            OutcomeStatus.UNCERTAIN,
            OutcomeStatus.SKIPPED,
            OutcomeStatus.TIMED_OUT,
        )
    )
    return [
        ("submitted", str(s.submitted), ""),
        ("running", str(s.running), "cyan"),
        ("completed", str(c.get(OutcomeStatus.COMPLETED, 0)), "green"),
        ("failed", str(c.get(OutcomeStatus.FAILED, 0)), "red"),
        ("other", str(other), "yellow"),
        ("downloaded", str(s.downloaded), "green"),
        ("credits", f"{s.credits:,} ({usd(s.credits)})", ""),
        ("requests left", f"{s.requests_left}/{s.limit} per {s.period:g}s", ""),
    ]


def _eta(s: Snapshot) -> str:
    return "-" if s.eta is None else duration(s.eta)


class LiveDisplay:
    """A progress bar and running counts, redrawn in place; events print above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._snapshot: Snapshot | None = None
        self._live = Live(
            get_renderable=self._render,
            console=console,
            refresh_per_second=4,
            transient=False,
        )

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def event(self, message: str, *, style: str = "") -> None:
        self.console.print(Text(message, style=style))

    def refresh(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def _render(self) -> RenderableType:
        s = self._snapshot
        if s is None:
            return Text("starting...")
        settled = sum(s.counts.values())
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(1, s.total), completed=settled, width=40),
            Text(f"{settled}/{s.total} settled"),
            Text(f"elapsed {duration(s.elapsed)}", style="dim"),
            Text(f"ETA {_eta(s)}", style="bold"),
        )
        counts = _counts(s)
        lines = []
        # Requests on one line, money and budget on the next: each fits 80 columns.
        for part in (counts[:6], counts[6:]):
            line = Text()
            for i, (name, value, style) in enumerate(part):
                if i:
                    line.append("  ")
                line.append(f"{name} ", style="dim")
                line.append(value, style=style)
            lines.append(line)
        return Group(head, *lines)


class PlainDisplay:
    """One line an event, and a status line every ``every`` seconds: for logs and pipes."""

    def __init__(self, stream: IO[str], *, every: float = 10.0) -> None:
        self.stream = stream
        self.every = every
        self._started = time.monotonic()
        self._last = self._started

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, message: str) -> None:
        self.stream.write(f"[{time.monotonic() - self._started:7.1f}s] {message}\n")
        self.stream.flush()

    def event(self, message: str, *, style: str = "") -> None:
        self._line(message)

    def refresh(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        settled = sum(snapshot.counts.values())
        if now - self._last < self.every and settled < snapshot.total:
            return
        if settled == snapshot.total and self._last == -1.0:
            return
        self._last = -1.0 if settled == snapshot.total else now
        counts = ", ".join(f"{name} {value}" for name, value, _ in _counts(snapshot))
        self._line(f"{settled}/{snapshot.total} settled: {counts}; ETA {_eta(snapshot)}")
