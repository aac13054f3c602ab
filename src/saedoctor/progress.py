"""Progress for long work, on stderr so JSON on stdout stays clean: a rich bar on a terminal;
elsewhere (a log file, a CI job) one plain line per task every `LOG_EVERY_S` seconds, with
tokens done, rate and time left, since a bar that is never drawn tells a log nothing."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)

LOG_EVERY_S = 10.0


def token_progress(quiet: bool = False, log_every_s: float = LOG_EVERY_S) -> Progress:
    """A token-counting progress display: a live bar on a terminal, log lines elsewhere."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("tokens"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    if quiet or stderr_console.is_terminal:
        return Progress(*columns, console=stderr_console, disable=quiet, transient=False)
    return LoggedProgress(*columns, console=stderr_console, log_every_s=log_every_s)


class LoggedProgress(Progress):
    """Draws nothing; prints a line when a task starts, every `log_every_s` seconds while it
    runs and when the display stops."""

    def __init__(self, *columns: Any, console: Console, log_every_s: float) -> None:
        super().__init__(*columns, console=console, disable=True)
        self.log_every_s = log_every_s
        self._started: dict[TaskID, float] = {}
        self._logged: dict[TaskID, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        now = time.monotonic()
        self._started[task_id] = self._logged[task_id] = now
        task = self._tasks[task_id]
        self._print(f"{_plain(description)}: started, {_tokens(task.total)} tokens"
                    + (f" ({task.completed:,.0f} done before)" if task.completed else ""))
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        now = time.monotonic()
        if now - self._logged.get(task_id, now) >= self.log_every_s:
            self._logged[task_id] = now
            self._print(self._line(task_id, now))

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def stop(self) -> None:
        now = time.monotonic()
        for task_id in list(self._started):
            task = self._tasks[task_id]
            elapsed = now - self._started[task_id]
            self._print(f"{_plain(task.description)}: finished, {task.completed:,.0f} tokens in "
                        f"{duration(elapsed)}{_rate(task.completed, elapsed)}")  # fmt: skip
        self._started.clear()
        super().stop()

    def _line(self, task_id: TaskID, now: float) -> str:
        task = self._tasks[task_id]
        elapsed = max(now - self._started[task_id], 1e-9)
        done, total = task.completed, task.total
        line = f"{_plain(task.description)}: {done:,.0f}/{_tokens(total)} tokens"
        if total:
            line += f" ({100 * done / total:.0f}%)"
        line += _rate(done, elapsed)
        if total and done > 0:
            line += f", about {duration((total - done) * elapsed / done)} left"
        return line

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _tokens(total: float | None) -> str:
    return "?" if total is None else f"{total:,.0f}"


def _rate(done: float, elapsed: float) -> str:
    return f", {done / elapsed:,.0f} tokens/s" if elapsed > 0 and done > 0 else ""


def _plain(description: str) -> str:
    """The task's description without rich markup ("[bold]x[/]")."""
    from rich.text import Text

    return Text.from_markup(description).plain
