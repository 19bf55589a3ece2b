"""Atomic, private file writes: a temp file in the same directory, fsync, rename.

A crash at any point leaves either the previous complete file or none, never a truncated one.
A process killed mid-write (SIGKILL, power loss) can leave its temp file behind: it is named
`.<dest name>.<random>.tmp` (hidden, never the output's name) and `remove_temps` deletes such leftovers.
Private outputs get mode 0600 in directories with mode 0700.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_SUFFIX = ".tmp"


def temp_glob(dest_name: str) -> str:
    """Glob pattern of the temp files `atomic_path` makes for an output named `dest_name` (may contain `*`)."""
    return f".{dest_name}.*{TEMP_SUFFIX}"


def remove_temps(directory: Path, dest_names) -> int:
    """Delete temp files that a killed writer of these outputs left in `directory`; returns how many.
    Call it only where no other process can be writing these outputs at the same moment (e.g. under a lock)."""
    directory = Path(directory)
    n = 0
    for name in dest_names:
        for p in directory.glob(temp_glob(name)) if directory.is_dir() else []:
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
    return n


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
    # The name is chosen before the file exists, so an interrupt (Ctrl-C) at any point after the file is created
    # lands inside `try` and the temp file is removed (with mkstemp there was a window before `try`).
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:  # (2^-64) another writer's temp file: not ours to delete
            tmp = None
            raise
        os.close(fd)
        yield tmp
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(dest: Path, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(dest)


def atomic_write_text(dest: Path, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))
