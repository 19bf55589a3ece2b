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
    cmd = " ".join(["python -m", module, shlex.join(argv if argv is not None else sys.argv[1:])]).rstrip()
    md = render(result, cmd)   # first: a render error must not leave a new .json beside a stale .md
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), md)
    return md


def run_and_write(module: str, run: Callable, render: Callable[[dict, str], str], args, argv=None) -> int:
    """A benchmark's main after argument parsing: run(args, log) -> result, a P2PError as one line and its exit
    code (nothing written), else OUT.json + OUT.md (wall_s added) and the markdown printed."""
    import time

    from p2p_edge.errors import P2PError

    t0 = time.time()
    log = lambda m: print(f"[{time.time() - t0:6.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        r = run(args, log)
    except P2PError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    r["wall_s"] = round(time.time() - t0)
    print(write_result(args.out, r, render, module, argv))
    return 0


def paired_ci(a, b) -> dict:
    """{"diff": mean(a - b), "ci": [lo, hi]}: paired 95% bootstrap over users (a[i], b[i] belong to user i)."""
    import numpy as np

    from p2p_edge.eval import metrics as M

    d, lo, hi = M.paired_bootstrap_ci(np.asarray(a, float), np.asarray(b, float))
    return {"diff": round(float(d), 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}


def ci_cell(d: dict) -> str:
    """A paired_ci as a table cell: +0.123 [+0.045, +0.201]."""
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def named_paths(d: dict) -> str:
    """{name: path} as a sentence's list: **a** (`x.onnx`), **b** (`y.pt`)."""
    return ", ".join(f"**{k}** (`{v}`)" for k, v in d.items())
