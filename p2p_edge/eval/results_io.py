"""One schema for a report's saved answers, read and written here only.

`answers_SPLIT.json` in a report's folder: method -> user id -> [[task, answer, target], ...], the answer a parsed
label / rating or free text, or null when the model's output did not parse. The report writes one per split;
`--reuse`, `--rerender`, bench.panels, bench.profile_signal and bench.headline_copy read them.
"""

from __future__ import annotations

import json
from pathlib import Path

from p2p_edge.errors import InputError
from p2p_edge.fileio import atomic_write_text

Rows = list[tuple[str, object, str]]
SCHEMA = "method -> user -> [task, answer, target] rows"


def answers_path(report_dir: Path, split: str) -> Path:
    return Path(report_dir) / f"answers_{split}.json"


def write_answers(report_dir: Path, split: str, answers: dict[str, dict[str, Rows]]) -> Path:
    return atomic_write_text(answers_path(report_dir, split), json.dumps(answers))


def read_answers(report_dir: Path, split: str) -> dict[str, dict[str, Rows]]:
    """The answers of `split` as method -> user -> [(task, answer, target)]; a missing, unreadable or malformed
    file is one InputError naming it."""
    path = answers_path(report_dir, split)
    if not path.is_file():
        raise InputError(path, "no such file (run p2p_edge.lab.report with --out here first)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read it ({e})") from None
    except ValueError as e:
        raise InputError(path, f"invalid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(path, f"not a report's answers ({SCHEMA})")
    out: dict[str, dict[str, Rows]] = {}
    for method, users in raw.items():
        if not isinstance(users, dict):
            raise InputError(path, f"not a report's answers ({SCHEMA})", field=method)
        out[method] = {}
        for uid, rows in users.items():
            if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                                                     for r in rows):
                raise InputError(path, f"user {uid}: not [task, answer, target] rows", field=method)
            out[method][uid] = [tuple(r) for r in rows]
    return out
