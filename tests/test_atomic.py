"""A write that fails part-way (full disk) leaves the previous file byte-identical, no
temporary file behind, and one clear line from the command line."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor import atomic
from saedoctor.atomic import WriteFailed, atomic_write_bytes
from saedoctor.cli import app
from saedoctor.diagnose_state import MainPassState, read_state
from saedoctor.metrics.downstream import Downstream
from saedoctor.metrics.suite import MetricSuite
from saedoctor.sae.site import Site


class _FullDisk:
    """A file whose disk fills up after `room` bytes: write() then raises ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self._f, self.room = f, room

    def write(self, data) -> int:
        n = len(data)
        if n > self.room:
            self._f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _fill_disk_after(monkeypatch, room: int, only: str | None = None) -> None:
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if only is not None and only not in os.readlink(f"/proc/self/fd/{fd}"):
            return f
        return _FullDisk(f, room)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def test_full_disk_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_bytes(b"previous report\n")
    _fill_disk_after(monkeypatch, room=3 * atomic._CHUNK + 17)
    with pytest.raises(WriteFailed) as info:
        atomic_write_bytes(target, b"x" * (5 * atomic._CHUNK))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert target.read_bytes() == b"previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_full_disk_first_write_leaves_nothing(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, room=10)
    with pytest.raises(WriteFailed):
        atomic_write_bytes(tmp_path / "new.json", b"y" * 100)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_keeps_previous_diagnose_state(tmp_path, monkeypatch):
    suite = MetricSuite(4, 8)
    unit = SimpleNamespace(suite=suite, downstream=Downstream())
    state = MainPassState(tmp_path / "s.partial.safetensors", {"options": {}}, [unit], 100)
    totals = {"tokens_processed": 10, "tokens_counted": 8, "sequences": 1}
    state.batches_done = 1
    state.save(totals)
    before = state.path.read_bytes()
    suite.reconstruction.sse += torch.tensor(1.0, dtype=torch.float64)
    state.batches_done = 2
    _fill_disk_after(monkeypatch, room=100)
    with pytest.raises(WriteFailed, match="No space left on device"):
        state.save(totals)
    assert state.path.read_bytes() == before
    assert read_state(state.path)[0]["batches_done"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.partial.safetensors"]


def test_cli_full_disk_is_one_line_and_keeps_the_old_report(
    tiny_llama_dir, text_corpus, tmp_path, monkeypatch
):
    out = tmp_path / "run.json"
    out.write_text('{"old": true}\n')
    sae = saved_sae(tmp_path / "sae", random_sae(64, 128, site=Site(0)))
    _fill_disk_after(monkeypatch, room=1000, only="run.json")
    result = CliRunner().invoke(app, [
        "diagnose", "--quiet", "--out", str(out), "--model", str(tiny_llama_dir), "--corpus",
        str(text_corpus), "--tokens", "128", "--context", "32", "--sae", str(sae),
        "--no-downstream",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"saedoctor: cannot write {out}: No space left on device"]
    assert out.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "run.json", "sae"]


def test_successful_write_replaces_and_has_plain_permissions(tmp_path):
    target = tmp_path / "a" / "b.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two" * atomic._CHUNK)
    assert target.read_bytes() == b"two" * atomic._CHUNK
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in Path(target.parent).iterdir()] == ["b.bin"]


def test_full_disk_keeps_previous_training_checkpoint(tmp_path, monkeypatch):
    from saedoctor.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(4)})
    before = path.read_bytes()
    _fill_disk_after(monkeypatch, room=1000)
    with pytest.raises(WriteFailed) as info:
        save_checkpoint(path, {"step": 2, "w": torch.ones(1 << 20)})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
