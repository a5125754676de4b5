"""Terminal output for people: one rich Console on stderr, live status lines, progress bars.

Interactive means the shared console writes to a terminal that can move its cursor: stderr is
a TTY and ``TERM`` is not ``dumb`` (``TTY_INTERACTIVE=0/1`` forces it either way; rich reads
``NO_COLOR`` itself). Then a live status redraws in place (``rich.live``, a one-row table) and
progress bars show (``rich.progress``). Otherwise a status update is one plain line (no ANSI,
no markup) and a progress bar is silent: logs, pipes, CI and tests see lines, never escapes.

Machine-readable output (JSON, reports, the summary lines tests and scripts read) never goes
through here: commands print it to stdout themselves. rich is imported on first use, so
importing this module (as the models do) costs nothing.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import Progress, TaskID
    from rich.table import Table

REFRESH_PER_S = 4  # redraws per second at most: a bar is never updated per event
Metrics = Mapping[str, object]


def isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


@functools.cache
def console() -> Console:
    """The one console of the process, on stderr (created on first use)."""
    from rich.console import Console

    forced = os.environ.get("TTY_INTERACTIVE") in ("0", "1")  # rich reads it when we pass None
    # FORCE_COLOR makes rich call a pipe a terminal: colours yes, cursor movement no
    return Console(stderr=True, force_interactive=None if forced or isatty(sys.stderr) else False)


def interactive(con: Console | None = None) -> bool:
    """Whether live displays and progress bars should draw on ``con`` (default: the console)."""
    if con is None and not isatty(sys.stderr) and os.environ.get("TTY_INTERACTIVE") != "1":
        return False  # the console would say so too: no need to import rich to learn it
    return bool((con or console()).is_interactive)


def format_value(v: object) -> str:
    """Metric value as text: floats with precision by magnitude, everything else as str."""
    if isinstance(v, float):
        if v != v or abs(v) >= 100:  # NaN, or large: no decimals
            return f"{v:.0f}"
        return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3f}"
    return str(v)


def status_line(metrics: Metrics, title: str | None = None) -> str:
    """``[title] key value  key value`` (plain text)."""
    body = "  ".join(f"{k} {format_value(v)}" for k, v in metrics.items())
    return f"[{title}] {body}" if title else body


def status_table(metrics: Metrics, title: str | None = None) -> Table:
    """A one-row table: the metric names as headers, their values below (text, never markup)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title=None if title is None else Text(title),
                  title_justify="left", title_style="bold", padding=(0, 1), collapse_padding=True,
                  pad_edge=False)
    for key in metrics:
        table.add_column(Text(key), justify="right", no_wrap=True, min_width=max(5, len(key)))
    table.add_row(*(Text(format_value(v)) for v in metrics.values()))
    return table


def _redirect_stdout() -> bool:
    # prints to stderr while a display is live go above it (redirect_stderr); prints to
    # stdout only when it is the terminal too (a redirected stdout must keep its lines)
    return isatty(sys.stdout)


class LiveStatus:
    """A status that redraws in place when interactive, else one plain line per update.

    ``update(metrics)`` shows ``metrics`` as a one-row table (interactive) or prints
    ``line`` (default ``status_line(metrics, title)``) to ``file`` (default stderr).
    ``show(renderable, text)`` is the same for any rich renderable and its plain text.
    """

    def __init__(self, title: str | None = None, *, con: Console | None = None,
                 enabled: bool | None = None, file: IO[str] | None = None) -> None:
        self.title = title
        self.con = con
        self.enabled = interactive(con) if enabled is None else enabled
        self.file = file
        self._live: Live | None = None

    def __enter__(self) -> LiveStatus:
        if self.enabled:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=self.con or console(), auto_refresh=False,
                              redirect_stdout=_redirect_stdout(), redirect_stderr=True)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, metrics: Metrics, line: str | None = None) -> None:
        if self._live is not None:
            self._live.update(status_table(metrics, self.title), refresh=True)
        else:
            self._plain(line if line is not None else status_line(metrics, self.title))

    def show(self, renderable: RenderableType, text: str) -> None:
        if self._live is not None:
            self._live.update(renderable, refresh=True)
        else:
            self._plain(text)

    def _plain(self, text: str) -> None:
        print(text, file=self.file or sys.stderr, flush=True)


class Tracker:
    """Counts work done; pushes the count to its progress bar (if any) a few times a second.

    ``advance`` and ``update`` cost a clock read when a bar shows and nothing more when not,
    so a loop may call them per step or per chunk (not per event of a hot loop).
    """

    def __init__(self, total: float | None = None, bar: Progress | None = None,
                 task: TaskID | None = None) -> None:
        self.completed: float = 0
        self.total = total
        self.info = ""
        self._bar, self._task = bar, task
        self._next_push = 0.0

    def advance(self, n: float = 1) -> None:
        self.completed += n
        if self._bar is not None:
            self._maybe_push()

    def update(self, completed: float | None = None, *, total: float | None = None,
               info: str | None = None, force: bool = False) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._maybe_push(force or info is not None or total is not None)

    def _maybe_push(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_push:
            self.push()
            self._next_push = now + 1.0 / REFRESH_PER_S

    def push(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, info=self.info)


@contextmanager
def progress(description: str, total: float | None = None, *, unit: str = "",
             con: Console | None = None, enabled: bool | None = None,
             transient: bool = False) -> Iterator[Tracker]:
    """A progress bar while the block runs, when interactive (``enabled`` forces it);
    otherwise a silent ``Tracker``. ``unit="bytes"`` shows sizes (MB) instead of counts."""
    if not (interactive(con) if enabled is None else enabled):
        yield Tracker(total)
        return
    con = con or console()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(), count, TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=con, transient=transient, refresh_per_second=REFRESH_PER_S,
        redirect_stdout=_redirect_stdout(), redirect_stderr=True,
    )
    with bar:
        tracker = Tracker(total, bar, bar.add_task(description, total=total, info=""))
        try:
            yield tracker
        finally:
            tracker.push()  # the final count, whatever the rate limit held back


class _CountingReader(io.RawIOBase):
    """A binary file that reports the bytes read to a Tracker (once per block, not per line)."""

    def __init__(self, raw: IO[bytes], tracker: Tracker) -> None:
        self._raw, self._tracker = raw, tracker

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b)  # type: ignore[attr-defined]
        self._tracker.advance(n or 0)
        return int(n or 0)

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextmanager
def open_text(path: str | Path, description: str | None = None, *, gz: bool | None = None,
              enabled: bool | None = None) -> Iterator[IO[str]]:
    """Open a text file (gzip if ``gz``, default: by the ``.gz`` suffix) for reading, with a
    bytes-read progress bar (transient) while it is read when interactive."""
    p = Path(path)
    gz = p.suffix == ".gz" if gz is None else gz
    if not (interactive() if enabled is None else enabled):
        with (gzip.open(p, "rt", encoding="utf-8") if gz else p.open("r", encoding="utf-8")) as fh:
            yield fh
        return
    raw = p.open("rb")  # before the bar: a missing file raises as with open()
    try:
        with progress(description or f"reading {p.name}", total=os.path.getsize(p),
                      unit="bytes", enabled=True, transient=True) as tracker:
            buffered = io.BufferedReader(_CountingReader(raw, tracker))
            text: IO[str] = (io.TextIOWrapper(gzip.GzipFile(fileobj=buffered, mode="rb"), encoding="utf-8")
                             if gz else io.TextIOWrapper(buffered, encoding="utf-8"))
            with text as fh:
                yield fh
    finally:
        raw.close()  # GzipFile leaves a file object it was handed open
