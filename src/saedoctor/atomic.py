"""Writes that never leave a half-written file: write beside the target, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, document: Any) -> Path:
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def _umask() -> int:
    # mkstemp creates 0600 files; give reports the permissions a plain open() would.
    mask = os.umask(0)
    os.umask(mask)
    return mask
