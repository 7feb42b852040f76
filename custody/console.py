"""What the command line prints: one-line operator errors and progress that suits its sink.

An operator's mistake (a wrong passphrase, a missing variable, a server that does not
answer) ends the command with one line on stderr and an exit status, never a traceback:
``fail``. The status follows the approver's convention: 1 refused or not verified, 2 a
local problem (configuration, key, passphrase), 3 the server unreachable.

Progress (the demo's transfers, the audit download) is a live rich display on a terminal
and plain lines otherwise (a log file, CI, a pipe), where a live display would only show
its last frame: :class:`ProgressLines`.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

#: Exit statuses (the command-line approver's too).
REFUSED, LOCAL, UNREACHABLE = 1, 2, 3


def fail(message: str, code: int = LOCAL) -> NoReturn:
    """One line on stderr (whatever the terminal's width), then exit with ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def console() -> Console:
    """stdout: rich on a terminal; on anything else wide enough that a table keeps its
    rows (a log keeps the demo's table) and without colour codes."""
    return Console() if sys.stdout.isatty() else Console(width=120, no_color=True)


class ProgressLines:
    """Tasks whose description changes: a live display on a terminal, else one plain
    line per change (``with ProgressLines(console) as p: t = p.add(...); p.update(t, ...)``).
    """

    def __init__(self, out: Console) -> None:
        self.out = out
        self.live = out.is_terminal
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=out, transient=False)
        self._last: dict[TaskID, str] = {}

    def __enter__(self) -> ProgressLines:
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live:
            self._progress.stop()

    def add(self, description: str) -> TaskID:
        task = self._progress.add_task(description, total=None)
        self._line(task, description)
        return task

    def update(self, task: TaskID, description: str) -> None:
        self._progress.update(task, description=description)
        self._line(task, description)

    def _line(self, task: TaskID, description: str) -> None:
        if not self.live and self._last.get(task) != description:
            self.out.print(description, highlight=False, markup=False)
        self._last[task] = description
