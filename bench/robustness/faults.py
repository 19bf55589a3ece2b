"""(c) faults: runs killed (SIGKILL / SIGINT) at points, and concurrent runs on one output."""


from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from bench.robustness.common import ROOT, default_sigint, run_cli, write_history





# ------------------------------------------------------------------------------------------------- (c) faults


def dir_state(d: Path) -> dict:
    """What a writer changes: names, and each entry's inode/size/mtime (the lock file is not an output)."""
    try:
        return {e.name: (e.inode(), e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(d) if e.name != ".lock"}
    except FileNotFoundError:  # an entry renamed away between scandir and stat
        return {"?": time.monotonic()}


def run_and_kill(args, env, out: Path, sig: int, *, after_s: float | None = None, on_change_s: float | None = None):
    """Start `p2p-edge ARGS`; send `sig` after `after_s` seconds, or `on_change_s` seconds after the output dir first
    changes. Returns (returncode, stderr, signalled: whether the signal was sent before the process ended)."""
    p = subprocess.Popen([sys.executable, "-m", "p2p_edge.cli", *map(str, args)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    signalled = False
    if after_s is not None:
        try:
            p.wait(after_s)
        except subprocess.TimeoutExpired:
            p.send_signal(sig)
            signalled = True
    else:
        before = dir_state(out)
        while p.poll() is None:
            if dir_state(out) != before:
                if on_change_s:
                    time.sleep(on_change_s)
                if p.poll() is None:
                    p.send_signal(sig)
                    signalled = True
                break
            time.sleep(0.0002)
    _, err = p.communicate(timeout=300)
    return p.returncode, err, signalled


def _classify(path: Path, old: bytes, new: bytes, base_spec) -> str:
    from p2p_edge.gguf import validate_adapter

    if not path.exists():
        return "MISSING"
    data = path.read_bytes()
    if data not in (old, new):
        return f"CORRUPT ({len(data)} bytes)"
    validate_adapter(path, base_spec)
    return "previous" if data == old else "new"


def faults(tmp: Path, env: dict, hyp: Path, base_spec, log) -> list[dict]:
    from p2p_edge.fileio import temp_glob

    src = ROOT / "examples" / "history.jsonl"

    def args(out: Path, summary: str, history: Path = src):
        return ["personalize", history, "--hypernet", hyp, "--summary", summary, "--json", "--threads", "1", "--out", out]

    prev, ref = tmp / "f-previous", tmp / "f-reference"
    assert run_cli(args(prev, "Collects stamps and rides trains."), env)["rc"] == 0
    r = run_cli(args(ref, "Plays guitar and bakes bread."), env)
    assert r["rc"] == 0, r["stderr"]
    seconds = r["wall_s"]
    old, new = (prev / "adapter.gguf").read_bytes(), (ref / "adapter.gguf").read_bytes()
    plan = [(signal.SIGKILL, f, None) for f in (0.25, 0.5, 0.75, 0.9)]
    plan += [(signal.SIGKILL, None, s) for s in (0.0, 0.002, 0.005)]
    plan += [(signal.SIGINT, f, None) for f in (0.5, 0.9)] + [(signal.SIGINT, None, 0.0)]
    rows = []
    for i, (sig, frac, on_change) in enumerate(plan):
        out = tmp / f"f-kill{i}"
        shutil.copytree(prev, out)
        rc, _, sent = run_and_kill(args(out, "Plays guitar and bakes bread."), env, out, sig,
                                   after_s=None if frac is None else frac * seconds, on_change_s=on_change)
        temps = sorted(p.name for n in ("adapter.gguf", "profile.json") for p in out.glob(temp_glob(n)))
        when = f"{frac:.0%} of a run ({frac * seconds:.2f} s)" if frac is not None else \
            f"{on_change * 1e3:.0f} ms after the output dir first changed (adapter temp file created)"
        row = {"fault": f"{signal.Signals(sig).name} at {when}", "signal_sent": sent, "rc": rc,
               "adapter": _classify(out / "adapter.gguf", old, new, base_spec),
               "profile_json_parses": _parses(out / "profile.json"), "temp_files_left": len(temps)}
        if temps:
            r = run_cli(args(out, "Plays guitar and bakes bread."), env)
            row["next_run"] = f"rc {r['rc']}, temp files left: {len(list(out.glob('.*.tmp')))}"
        log(f"  {row['fault']}: rc {rc}, adapter {row['adapter']}, temps {len(temps)}")
        rows.append(row)
    rows.append(_concurrent(tmp, env, args, base_spec, log))
    return rows


def _parses(p: Path) -> bool:
    try:
        json.loads(p.read_text())
        return True
    except (OSError, ValueError):
        return False


def _concurrent(tmp: Path, env: dict, args, base_spec, log) -> dict:
    """Two runs with different histories into one output dir, started together."""
    from p2p_edge.gguf import read_adapter

    out = tmp / "f-concurrent"
    hists = [write_history(tmp / f"conc-{i}.jsonl", 40, seed=i) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "p2p_edge.cli", *map(str, args(out, f"User {i}.", h))], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, h in enumerate(hists)]
    res = [(p.wait(), p.stderr.read()) for p in procs]
    _, meta = read_adapter(out / "adapter.gguf", base_spec)
    prof = json.loads((out / "profile.json").read_text())
    row = {"fault": "two concurrent runs, same output dir, different histories", "rc": [r[0] for r in res],
           "stderr": sorted({x for r in res for x in r[1].splitlines()}),
           "adapter": "valid, same run as profile.json" if meta["history_sha256"] == prof["history"]["sha256"]
           else "valid, but from another run than profile.json",
           "temp_files_left": len(list(out.glob(".*.tmp")))}
    log(f"  concurrent: rc {row['rc']}, {row['adapter']}")
    return row
