"""Atomic, private file writes: a temp file in the same directory, fsync, rename.

A crash at any point leaves either the previous complete file or none, never a truncated one.
Private outputs get mode 0600 in directories with mode 0700.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; an existing directory's mode is left as the user set it."""
    path = Path(path)
    if path.is_dir():
        return path
    missing = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    for p in missing:  # mkdir's mode is filtered by the umask: set it exactly on what we created
        try:
            os.chmod(p, DIR_MODE)
        except OSError:
            pass
    return path


@contextmanager
def atomic_path(dest: Path):
    """Yield a temp path beside `dest`; on success it is renamed over `dest` (mode 0600)."""
    dest = Path(dest)
    ensure_private_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(dest: Path, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(dest)


def atomic_write_text(dest: Path, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))
