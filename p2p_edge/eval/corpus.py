"""Per-user datasets in the shared schema: read and validate a users file, and resolve a task's label space.

Standard library + numpy only (no torch). One line per user: ``{"user_id", "history": [item, ...]}``, items in
time order; errors name the file, the 1-based line and the field.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from p2p_edge.errors import InputError
from p2p_edge.eval.task import Task

__all__ = ["read_users", "resolve_task_labels"]

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}")


def _open_bytes(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _check_user(obj, path: Path, line: int) -> dict:
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object per line, got {type(obj).__name__}", line=line)
    uid = obj.get("user_id")
    if not isinstance(uid, str) or not uid.strip():
        raise InputError(path, "must be a non-empty string", line=line, field="user_id")
    hist = obj.get("history")
    if not isinstance(hist, list):
        raise InputError(path, f"user {uid}: must be a list of items", line=line, field="history")
    last_time = None
    for i, it in enumerate(hist):
        where = f"history[{i}]"
        if not isinstance(it, dict):
            raise InputError(path, f"user {uid}: item must be an object", line=line, field=where)
        if not isinstance(it.get("id"), str) or not it["id"]:
            raise InputError(path, f"user {uid}: must be a non-empty string", line=line, field=f"{where}.id")
        if not isinstance(it.get("text"), str):
            raise InputError(path, f"user {uid}: must be a string", line=line, field=f"{where}.text")
        if "time" not in it:
            raise InputError(path, f"user {uid}: missing (use null when unknown)", line=line, field=f"{where}.time")
        t = it["time"]
        if t is not None:
            if not isinstance(t, str) or not _TIME.match(t):
                raise InputError(path, f"user {uid}: must be 'YYYY-MM-DD...' or null, got {t!r}", line=line,
                                 field=f"{where}.time")
            if last_time is not None and t < last_time:
                raise InputError(path, f"user {uid}: history is not sorted by time ({t} after {last_time})",
                                 line=line, field=f"{where}.time")
            last_time = t
    return obj


def read_users(path: str | os.PathLike) -> Iterator[dict]:
    """Yield ``{"user_id", "history": [item, ...]}`` dicts from a .jsonl or .jsonl.gz file (gzip detected by its
    magic bytes), validating each line (1-based line numbers in errors): a JSON object with a non-empty string
    ``user_id``, ``history`` a list of items with string ``id`` and ``text`` and ``time`` "YYYY-MM-DD..." or null,
    non-decreasing in time; user ids unique. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    seen: set[str] = set()
    line = 0
    try:
        with _open_bytes(path) as f:
            for line, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(path, f"not UTF-8: {e.reason} at byte {e.start}", line=line) from None
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=line) from None
                user = _check_user(obj, path, line)
                if user["user_id"] in seen:
                    raise InputError(path, f"duplicate user {user['user_id']!r}", line=line, field="user_id")
                seen.add(user["user_id"])
                yield user
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(path, f"corrupt gzip data: {e}", line=line + 1) from None


def resolve_task_labels(task: Task, users: Iterable[dict], train_user_ids: Iterable[str]) -> Task:
    """``task`` with auto_top_k labels resolved from the history items of TRAIN users only."""
    train = set(train_user_ids)
    return task.resolve_labels(it for u in users if u["user_id"] in train for it in u["history"])
