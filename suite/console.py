"""What every CLI command shares: the consoles, the bad-input policy, logging and progress.

Everything the suite says while it works goes through one logger, ``depthbench``:
``configure_logging`` sends it to stderr, through rich on a terminal and as plain lines
(``time LEVEL message``) otherwise, so that CI logs and ``nohup`` runs read line by line. Python
warnings go to the same logger as ``Category: message``. ``step_progress`` shows named steps as
rich bars on a terminal; without one it logs each step every tenth of the way instead.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TextIO

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from suite.errors import DepthbenchError

console = Console()
err_console = Console(stderr=True)
logger = logging.getLogger("depthbench")

Verbosity = Literal["quiet", "normal", "verbose"]
_LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


def configure_logging(verbosity: Verbosity = "normal", stream: TextIO | None = None) -> None:
    """Send the ``depthbench`` logger and Python warnings to ``stream`` (default: stderr).

    quiet: warnings and errors only; normal: also progress; verbose: also debug detail.
    """
    if (stream or sys.stderr).isatty():
        terminal = Console(file=stream) if stream else Console(stderr=True)
        handler: logging.Handler = RichHandler(console=terminal, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(stream) if stream else _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[verbosity])
    logger.propagate = False
    # the standard library's logging.captureWarnings, minus the source path and code line
    warnings.showwarning = _log_warning


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, like ``logging.lastResort``."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    logger.warning("%s: %s", category.__name__, message)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a DepthbenchError into its message on stderr and exit code 1, not a traceback."""
    try:
        yield
    except DepthbenchError as err:
        # soft_wrap: paths in the message stay whole, ready to copy
        err_console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from err


class Steps:
    """Progress of named steps, called as ``steps(what, done, total)``.

    With ``bars`` (a terminal), each step is a rich bar with its time left; without, a step is
    logged when it starts, at every further tenth of its total and when it ends, with an ETA from
    its rate so far (what was already done when the step first reported, e.g. cached entries,
    does not count towards the rate).
    """

    def __init__(self, bars: Progress | None) -> None:
        self.bars = bars
        self._tasks: dict[str, int] = {}  # step -> its bar, or the last tenth logged
        self._began: dict[str, tuple[float, int]] = {}  # step -> (when, done) at its first report

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if self.bars is not None:
            if what not in self._tasks:
                self._tasks[what] = self.bars.add_task(escape(what), total=total)
            self.bars.update(self._tasks[what], completed=done, total=total)
            return
        if not total:
            return  # nothing to count yet
        began, done_then = self._began.setdefault(what, (time.monotonic(), done))
        tenth = min(10, done * 10 // total)
        if self._tasks.get(what) == tenth:
            return
        self._tasks[what] = tenth
        eta = ""
        if done_then < done < total:
            rate = (time.monotonic() - began) / (done - done_then)
            eta = f", ETA {duration(rate * (total - done))}"
        logger.info("%s: %d/%d (%d%%)%s", what, done, total, 100 * done // total, eta)

    def end(self, what: str) -> None:
        """Remove the step's bar; it counts from the start if it comes again."""
        task = self._tasks.pop(what, None)
        self._began.pop(what, None)
        if self.bars is not None and task is not None:
            self.bars.remove_task(task)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextmanager
def step_progress() -> Iterator[Steps]:
    """Bars on the terminal the ``depthbench`` logger writes to (unless quiet), else log lines."""
    terminal = next((h.console for h in logger.handlers if isinstance(h, RichHandler)), None)
    if terminal is None or not logger.isEnabledFor(logging.INFO):
        yield Steps(None)
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=terminal,
        transient=True,
    )
    with bars:
        yield Steps(bars)
