"""Run a command as a child process and measure it: wall time, peak RSS, when each line came.

Used by the benchmarks that time whole commands (`make demo`, `saedoctor demo`, model loads,
`make test`): every run is a fresh process, so nothing is warm in-process.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.1  # how often the log is read: the resolution of the line timeline
TIMELINE_LINES = 60  # first lines kept with their times (the rest only counted)
LINE_CHARS = 200


@dataclass
class Measured:
    """One finished child process."""

    returncode: int
    wall_s: float
    peak_rss_mib: float  # of the child and the descendants it waited for (wait4's ru_maxrss)
    log: Path  # stdout and stderr, interleaved as written
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (seconds, line)

    def first_line(self, skip: Sequence[str] = ()) -> tuple[float, str] | None:
        """The first non-empty line that starts with none of `skip`, with its time."""
        for seconds, text in self.timeline:
            stripped = text.strip()
            if stripped and not stripped.startswith(tuple(skip)):
                return seconds, stripped
        return None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def run_measured(cmd: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> Measured:  # fmt: skip
    """Run `cmd` with stdout+stderr redirected to `log`; note when each line appears."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timeline: list[tuple[float, str]] = []
    pending = b""
    with open(log, "wb") as sink, open(log, "rb") as source:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                env=None if env is None else dict(env))  # fmt: skip
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            pending = _read_lines(source, pending, time.perf_counter() - start, timeline)
            if pid:
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    if pending.strip() and len(timeline) < TIMELINE_LINES:
        timeline.append((wall, pending.decode(errors="replace")[:LINE_CHARS]))
    return Measured(proc.returncode, wall, usage.ru_maxrss / 1024, log, timeline)


def _read_lines(source, pending: bytes, now: float, timeline: list[tuple[float, str]]) -> bytes:
    """Append the complete lines written since the last poll; return the unfinished tail."""
    data = pending + source.read()
    # Progress bars redraw with carriage returns: each redraw counts as a line.
    *lines, tail = data.replace(b"\r", b"\n").split(b"\n")
    for line in lines:
        if len(timeline) < TIMELINE_LINES and line.strip():
            timeline.append((now, line.decode(errors="replace")[:LINE_CHARS]))
    return tail


def check(measured: Measured, what: str) -> Measured:
    """Stop the benchmark, pointing at the log, when the command failed."""
    if measured.returncode != 0:
        tail = "\n".join(measured.text().splitlines()[-20:])
        raise SystemExit(f"{what} exited {measured.returncode} (log: {measured.log}):\n{tail}")
    return measured
