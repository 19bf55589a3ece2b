"""Faults: `p2p-edge personalize` killed mid-run (SIGKILL, SIGINT) leaves the previous complete adapter or a
complete new one, never a truncated file; temp files of a killed write are hidden `.NAME.*.tmp` files that the next
run (or `forget`) deletes; concurrent runs for one output dir wait for each other and both succeed.

Real processes and real timing: kills at fractions of a measured run, and the instant the output dir changes
(the adapter's temp file appears), which lands inside the write.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE_HISTORY, ROOT
from bench.robustness import run_and_kill
from p2p_edge.fileio import temp_glob

OUTPUTS = ("adapter.gguf", "profile.json", "token_prior.npz")   # the shipped token prior's table is on
OLD_SUMMARY = "Writes about trains and collects stamps."
NEW_SUMMARY = "Plays acoustic guitar and bakes sourdough."

pytestmark = pytest.mark.slow  # a dozen real `personalize` processes (~1-2 s each)


def env_for(home: Path, encoder_dir: Path) -> dict[str, str]:
    env = dict(os.environ, P2P_EDGE_HOME=str(home), P2P_EDGE_ENCODER=str(encoder_dir), HF_HUB_OFFLINE="1")
    env.pop("P2P_EDGE_BASE_MODEL", None)
    return env


def cli(args) -> list[str]:
    return [sys.executable, "-m", "p2p_edge.cli", *map(str, args)]


def personalize_args(hyp: Path, out: Path, summary: str, history: Path = EXAMPLE_HISTORY) -> list:
    return ["personalize", history, "--hypernet", hyp, "--summary", summary, "--json", "--out", out, "--threads", "1"]


def run_ok(args, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cli(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.perf_counter() - t


def temps(d: Path) -> list[str]:
    return sorted(p.name for name in OUTPUTS for p in d.glob(temp_glob(name)))


def check_survivors(out: Path, old: dict[str, bytes], new_adapter: bytes, new_sha: str, base_spec) -> str:
    """Each output is the previous complete file or a complete new one; nothing else but the lock and temps."""
    from p2p_edge.gguf import read_adapter, validate_adapter

    data = (out / "adapter.gguf").read_bytes()
    assert data in (old["adapter.gguf"], new_adapter), f"adapter.gguf is neither the old nor the new one ({len(data)} B)"
    validate_adapter(out / "adapter.gguf", base_spec)
    read_adapter(out / "adapter.gguf", base_spec)
    prof = (out / "profile.json").read_bytes()
    if prof != old["profile.json"]:
        assert json.loads(prof)["history"]["sha256"] == new_sha  # a complete new profile
    extra = {p.name for p in out.iterdir()} - {".lock", *OUTPUTS} - set(temps(out))
    assert not extra, f"stray files in the output dir: {extra}"
    return "new" if data == new_adapter else "old"


@pytest.fixture(scope="module")
def kill_setup(random_hypernet_path, encoder_dir, tmp_path_factory):
    """A previous complete output (OLD_SUMMARY), and the reference new adapter (NEW_SUMMARY) with its run time."""
    d = tmp_path_factory.mktemp("kill")
    env = env_for(d / "home", encoder_dir)
    run_ok(personalize_args(random_hypernet_path, d / "previous", OLD_SUMMARY), env)
    seconds = run_ok(personalize_args(random_hypernet_path, d / "reference", NEW_SUMMARY), env)
    return d, env, seconds


def copy_previous(d: Path, name: str) -> Path:
    import shutil

    out = d / name
    shutil.copytree(d / "previous", out)
    return out


KILLS = [  # (signal, after this fraction of a full run | None, delay after the output dir changes)
    (signal.SIGKILL, 0.3, None), (signal.SIGKILL, 0.6, None), (signal.SIGKILL, 0.9, None),
    (signal.SIGKILL, None, 0.0), (signal.SIGKILL, None, 0.002), (signal.SIGKILL, None, 0.006),
    (signal.SIGINT, 0.3, None), (signal.SIGINT, 0.5, None), (signal.SIGINT, 0.7, None), (signal.SIGINT, 0.9, None),
    (signal.SIGINT, None, 0.0),
]


def test_killed_personalize_leaves_old_or_new_adapter_never_a_truncated_one(kill_setup, random_hypernet_path,
                                                                            base_spec):
    d, env, seconds = kill_setup
    old = {n: (d / "previous" / n).read_bytes() for n in OUTPUTS}
    new_adapter = (d / "reference" / "adapter.gguf").read_bytes()
    new_sha = json.loads((d / "reference" / "profile.json").read_text())["history"]["sha256"]
    assert new_adapter != old["adapter.gguf"]
    outcomes = []
    for i, (sig, frac, on_change) in enumerate(KILLS):
        out = copy_previous(d, f"kill{i}")
        args = personalize_args(random_hypernet_path, out, NEW_SUMMARY)
        rc, err, signalled = run_and_kill(args, env, out, sig, after_s=None if frac is None else frac * seconds,
                                          on_change_s=on_change)
        survived = check_survivors(out, old, new_adapter, new_sha, base_spec)
        left = temps(out)
        if not signalled or rc == 0:  # finished before the signal (or it came during interpreter exit)
            assert rc == 0 and survived == "new" and not left, (rc, err, survived, left)
        elif sig == signal.SIGINT:
            assert not left, f"an interrupted run cleans its temp files: {left}"
            assert rc in (130, -signal.SIGINT), (rc, err)  # -SIGINT: interrupted while Python was starting
            if rc == 130:
                assert err.strip().splitlines()[-1] == "interrupted", err
        else:
            assert rc == -signal.SIGKILL
        outcomes.append((sig.name, frac, on_change, signalled, survived, len(left)))
    print("\n".join(map(str, outcomes)))
    # the dir-change kills hit the write itself: the temp file existed, the previous adapter survived whole
    assert any(o[0] == "SIGKILL" and o[2] is not None and o[3] for o in outcomes), outcomes
    assert any(o[3] and o[4] == "old" for o in outcomes), outcomes

    # The next complete run in a dir a SIGKILL left temp files in removes them (planted if no kill left any).
    out = d / "kill3"
    if not temps(out):
        (out / ".adapter.gguf.x1y2z3.tmp").write_bytes(new_adapter[:1000])
    (out / "notes.txt").write_text("the user's own file")
    run_ok(personalize_args(random_hypernet_path, out, NEW_SUMMARY), env)
    assert temps(out) == []
    assert (out / "adapter.gguf").read_bytes() == new_adapter
    assert (out / "notes.txt").is_file()  # only our temp files are deleted


def test_concurrent_runs_for_one_output_dir_wait_for_each_other(random_hypernet_path, encoder_dir, tmp_path,
                                                                 base_spec):
    """Two runs start while a third party holds the dir's lock: both wait (and say so), neither writes; once
    released, both finish cleanly one after the other and the dir holds one run's adapter and its profile."""
    from p2p_edge.gguf import read_adapter

    env = env_for(tmp_path / "home", encoder_dir)
    out = tmp_path / "out"
    histories = []
    for name, lines in (("a", slice(0, 20)), ("b", slice(10, 34))):
        h = tmp_path / f"{name}.jsonl"
        h.write_bytes(b"".join(EXAMPLE_HISTORY.read_bytes().splitlines(keepends=True)[lines]))
        histories.append(h)
    seconds = run_ok(personalize_args(random_hypernet_path, out, OLD_SUMMARY, histories[0]), env)
    before = (out / "adapter.gguf").read_bytes()

    with open(out / ".lock", "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen(cli(personalize_args(random_hypernet_path, out, NEW_SUMMARY, h)), cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in histories]
        time.sleep(max(2.0, 2 * seconds))
        assert [p.poll() for p in procs] == [None, None], "runs must wait for the lock"
        assert (out / "adapter.gguf").read_bytes() == before
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert stderr.splitlines() == [f"waiting: another p2p-edge run is writing {out}"]
        assert json.loads(stdout)["adapter"] == str(out / "adapter.gguf")
    _, meta = read_adapter(out / "adapter.gguf", base_spec)
    prof = json.loads((out / "profile.json").read_text())
    assert len({json.loads(r[0])["n_items"] for r in results}) == 2  # the two runs had different histories
    assert meta["history_sha256"] == prof["history"]["sha256"]  # adapter and profile come from the same run
    assert prof["summary"] == NEW_SUMMARY
    assert temps(out) == [] and {p.name for p in out.iterdir()} == {".lock", *OUTPUTS}


def _die_before_rename(code: str, env: dict) -> None:
    """Run `code` in a process that is SIGKILLed at the rename of its first atomic write: its temp file stays."""
    prelude = "import os, signal; os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
    r = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_forget_deletes_cache_temp_files_left_by_a_killed_run(tmp_path):
    """A run killed while writing the summary or item-vector cache leaves a temp file holding history-derived
    data; `forget` finds it by the history's hash and deletes it."""
    import hashlib

    from typer.testing import CliRunner

    from p2p_edge.cli import app
    from p2p_edge.paths import cache_dir

    hist = tmp_path / "carol.jsonl"
    hist.write_text('{"text": "likes kayaks"}\n')
    sha = hashlib.sha256(hist.read_bytes()).hexdigest()
    env = dict(os.environ)
    _die_before_rename(f"from p2p_edge.profile import SummaryCache as S; c = S(); "
                       f"c.put(c.key({sha!r}, 'm' * 64, 'prompt'), 'CANARY summary', {sha!r})", env)
    _die_before_rename(f"import numpy as np; from p2p_edge.profile import EmbeddingCache as E; "
                       f"E('enc').encode(lambda t: np.ones((len(t), 4), np.float32), ['x'], {sha!r})", env)
    left = sorted(p.name for p in cache_dir().rglob("*.tmp"))
    assert len(left) == 2 and all(n.startswith(".") for n in left), left
    assert any(b"CANARY" in p.read_bytes() for p in cache_dir().rglob("*.tmp"))

    r = CliRunner().invoke(app, ["forget", str(hist)])
    assert r.exit_code == 0, r.output
    assert list(cache_dir().rglob("*.tmp")) == []
    assert "deleted 2 cached file(s)" in r.stdout
