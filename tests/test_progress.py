"""Progress in a log: a line when a task starts, every ~10 s while it runs, and when it ends."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from saedoctor import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logged(monkeypatch: pytest.MonkeyPatch, log_every_s: float = 10.0):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    return progress.LoggedProgress(console=console, log_every_s=log_every_s), clock, out


def test_lines_every_interval_with_rate_and_time_left(monkeypatch) -> None:
    bar, clock, out = logged(monkeypatch)
    with bar:
        task = bar.add_task("[bold]diagnose[/]", total=60_000)
        for _ in range(6):  # 1 000 tokens every 2.5 s: 400 tokens/s
            clock.now += 2.5
            bar.update(task, advance=1_000)
        clock.now += 5.0
        bar.update(task, advance=2_000)
    assert out.getvalue().splitlines() == [  # one line per 10 s, not one per update
        "diagnose: started, 60,000 tokens",
        "diagnose: 4,000/60,000 tokens (7%), 400 tokens/s, about 2 min 20 s left",
        "diagnose: 8,000/60,000 tokens (13%), 400 tokens/s, about 2 min 10 s left",
        "diagnose: finished, 8,000 tokens in 20 s, 400 tokens/s",
    ]


def test_resumed_task_says_what_was_done_before(monkeypatch) -> None:
    bar, _, out = logged(monkeypatch)
    with bar:
        bar.add_task("train", total=1_000, completed=400)
    assert out.getvalue().splitlines()[0] == "train: started, 1,000 tokens (400 done before)"


def test_terminal_gets_a_bar_and_quiet_gets_nothing(monkeypatch) -> None:
    monkeypatch.setattr(progress, "stderr_console", Console(file=io.StringIO(),
                                                             force_terminal=True))  # fmt: skip
    assert not isinstance(progress.token_progress(), progress.LoggedProgress)
    monkeypatch.setattr(progress, "stderr_console", Console(file=io.StringIO(),
                                                             force_terminal=False))  # fmt: skip
    assert isinstance(progress.token_progress(), progress.LoggedProgress)
    quiet = progress.token_progress(quiet=True)
    assert not isinstance(quiet, progress.LoggedProgress) and quiet.disable


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (42, "42 s"), (185, "3 min 05 s"),
                                               (3720, "1 h 02 min")])  # fmt: skip
def test_duration(seconds: float, text: str) -> None:
    assert progress.duration(seconds) == text
