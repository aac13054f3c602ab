"""Writes that never leave a half-written file: write beside the target, then rename.

A failed write (full disk, quota, I/O error) leaves the previous file byte-identical and no
temporary file behind, and raises `WriteFailed`: an OSError that names the target, which
the command line prints as one line (`cannot write <path>: <reason>`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from saedoctor.errors import InputError

_CHUNK = 1 << 20  # bytes per write() call


class WriteFailed(OSError):
    """Writing `path` failed; the previous content (if any) is untouched."""

    def __init__(self, path: Path, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno, reason, str(path))
        self.path = path

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_with(path, lambda f: _write_all(f, data))


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """`write(f)` streams the content (e.g. `torch.save(obj, f)`), so large checkpoints
    are never held in memory twice."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        cause = _os_error_in(err)
        if cause is None or isinstance(err, WriteFailed):
            raise
        raise WriteFailed(path, cause) from err
    return path


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind `err`: torch.save, for one, re-raises a full disk as RuntimeError."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_all(f: BinaryIO, data: bytes) -> None:
    # In chunks: a full disk shows up part-way, as ENOSPC from one write() (tests do the same).
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_json(path: str | Path, document: Any) -> Path:
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def _umask() -> int:
    # mkstemp creates 0600 files; give reports the permissions a plain open() would.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str | Path, what: str) -> Iterator[Path]:
    """Yield a fresh folder beside `path` to fill; on success it becomes `path` (a new folder
    appears whole or not at all; in an existing one, which may hold other files, each file
    is replaced atomically). On any error nothing of it is left. `what` names the flag or
    file for the error when `path` is not a directory."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{what} {directory}: exists and is not a directory; expected a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp (which makes 0700 folders): the result gets the usual permissions.
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if not directory.exists():
            os.replace(tmp, directory)
            return
        for item in sorted(tmp.iterdir()):
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
