"""Histories that arrive over HTTP: inline items, or a file under --history-dir (never anywhere else).

Both go through `p2p_edge.history.load_history`, the validation `p2p-edge personalize` uses, so a bad item gives the
CLI's one-line InputError: `history:3: field 'text': must be a non-empty string, got int` for the third item of an
inline history, `notes/alice.jsonl:3: ...` for line 3 of a file (named as the request named it).
Inline items are validated in memory; nothing of them is written to disk but the adapter and profile.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

from ..history import History, load_history
from ..personalize import RETRIEVAL_WINDOW
from .schemas import ApiError

INLINE_NAME = "history"  # what errors call an inline history (its "line N" is the N-th item)


def inline_bytes(items: list) -> bytes:
    """One JSON line per item (ASCII escapes: a lone surrogate reaches the validator as `\\ud800`, which it names)."""
    try:
        return b"".join(json.dumps(item, allow_nan=True).encode("ascii") + b"\n" for item in items)
    except (RecursionError, ValueError):
        raise ApiError(400, "field 'history': an item is nested too deeply", "invalid_history", "history") from None


def load_inline(items: list) -> History:
    data = inline_bytes(items)
    history = load_history(INLINE_NAME, keep_last=RETRIEVAL_WINDOW, opener=lambda: io.BufferedReader(io.BytesIO(data)))
    history.path = None  # not a file: profile.json records no path
    return history


def _refused(why: str) -> ApiError:
    return ApiError(400, f"field 'history_path': {why}", "history_path_refused", "history_path")


def resolve_under(root: Path, given: str) -> Path:
    """The real path of `given` (relative to `root`, or absolute) if it is a regular file inside `root` after every
    symlink is resolved; else ApiError. `root` must already be resolved."""
    if "\x00" in given:
        raise _refused("contains a NUL byte")
    cand = Path(given) if os.path.isabs(given) else root / given
    # Refuse what is lexically outside before touching the disk: no probing of files elsewhere.
    if not Path(os.path.normpath(cand)).is_relative_to(root):
        raise _refused("is outside the server's history dir (--history-dir)")
    try:
        real = cand.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _refused("no such file in the server's history dir") from None
    if not real.is_relative_to(root):
        raise _refused("resolves (through a symlink) outside the server's history dir (--history-dir)")
    try:
        if not stat.S_ISREG(real.stat().st_mode):
            raise _refused("is not a regular file")
    except OSError:
        raise _refused("no such file in the server's history dir") from None
    return real


def open_under(root: Path, given: str) -> tuple[int, Path]:
    """Open `given` read-only after `resolve_under`, then check again what was opened (a symlink swapped in between
    is not followed: O_NOFOLLOW, and the open file's own path must still lie under `root`). Returns (fd, real path)."""
    real = resolve_under(root, given)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise _refused("permission denied (the server cannot read it)") from None
    except OSError:
        raise _refused("cannot be opened (it changed while being checked)") from None
    try:
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}")) if os.path.isdir("/proc/self/fd") else real
        if not opened.is_relative_to(root) or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused("cannot be opened (it changed while being checked)")
    except BaseException:
        os.close(fd)
        raise
    return fd, real


def load_from_dir(root: Path | None, given: str) -> History:
    if root is None:
        raise _refused("not accepted: the server was started without --history-dir (send the items as 'history')")
    fd, real = open_under(root, given)
    f = os.fdopen(fd, "rb")  # closed by load_history's reader (or below, if it never opens it)
    try:
        history = load_history(given, keep_last=RETRIEVAL_WINDOW, opener=lambda: f)
    finally:
        f.close()
    history.path = real  # profile.json records the real file
    return history
