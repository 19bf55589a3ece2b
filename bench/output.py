"""Writing a benchmark's result: OUT.json and OUT.md, each atomically, the markdown headed by its command."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable

from p2p_edge.fileio import atomic_write_text


def write_result(out: Path, result: dict, render: Callable[[dict, str], str], module: str, argv=None) -> str:
    """Writes OUT.json and OUT.md (render(result, command)); the command is shell-quoted so it reruns as is.
    Returns the markdown."""
    cmd = f"python -m {module} " + shlex.join(argv if argv is not None else sys.argv[1:])
    md = render(result, cmd)   # first: a render error must not leave a new .json beside a stale .md
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), md)
    return md
