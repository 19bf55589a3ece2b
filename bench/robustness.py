"""Robustness on this machine, through the real `p2p-edge` CLI and the library:

    nice -n 10 python -m bench.robustness [--items 1000000] [--users 1000] [--swaps 1100] [--quick]

(a) a 1,000,000-item synthetic history through `p2p-edge personalize --no-summary` (wall time, peak RSS of the
    child; 1,000 and 100,000 items beside it), (b) every bad input through the real CLI (exit code, what the user
    saw, whether the previous output survived), (c) faults: runs killed (SIGKILL / SIGINT) at points, concurrent runs,
    (d) a soak: N synthetic users personalized in one process and their adapters swapped in and out of one llama.cpp
    model, with RSS samples and logits checks. Writes bench/results/robustness.md and .json. Synthetic data lives in a
    temp dir and is deleted afterwards; nothing here touches the real data dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024

TOPICS = {  # synthetic users write about two topics each: profiles (and so adapters) differ between users
    "music": "guitar capo strings amp pedal chord tuning pick fret bass drum cable".split(),
    "baking": "sourdough starter flour oven crust proof loaf rye yeast dough crumb".split(),
    "travel": "train hostel backpack ferry passport map museum coast hike border".split(),
    "tech": "laptop keyboard battery screen charger mouse ssd router firmware port".split(),
    "garden": "tomato seedling compost hose trowel basil soil mulch pruning shed".split(),
    "sport": "running shoes marathon bike helmet swim goggles racket gym stretch".split(),
    "books": "novel chapter author paperback library poetry thriller plot series".split(),
    "kitchen": "knife pan skillet blender kettle spatula whisk grater mandoline".split(),
}
FILLER = "the a is was very quite really good bad great okay works broke after with for and but".split()


# --------------------------------------------------------------------------------------------------- helpers


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job's children inherit SIGINT ignored


def cli_env(home: Path, encoder: Path) -> dict[str, str]:
    env = dict(os.environ, P2P_EDGE_HOME=str(home), P2P_EDGE_ENCODER=str(encoder), HF_HUB_OFFLINE="1")
    env.pop("P2P_EDGE_BASE_MODEL", None)
    return env


def run_cli(args, env, *, stdin: str | None = None, timeout: float = 3600) -> dict:
    """One `python -m p2p_edge.cli` process: exit code, wall time, its own peak RSS (wait4), stdout, stderr."""
    cmd = [sys.executable, "-m", "p2p_edge.cli", *map(str, args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                             stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, preexec_fn=default_sigint)
        if stdin is not None:
            p.stdin.write(stdin.encode())
            p.stdin.close()
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        return {"rc": p.returncode, "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}


def write_history(path: Path, n: int, seed: int = 0, topics: tuple[str, str] | None = None) -> Path:
    """n synthetic JSONL items (file order = time order), written in blocks."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    t1, t2 = topics or (names[seed % len(names)], names[(seed * 3 + 1) % len(names)])
    vocab = {t1: TOPICS[t1], t2: TOPICS[t2]}
    bias = rng.choice([2, 3, 4, 5])
    with open(path, "w", encoding="utf-8") as f:
        block = []
        for i in range(n):
            topic = t1 if rng.random() < 0.7 else t2
            words = rng.choices(vocab[topic], k=4) + rng.choices(FILLER, k=6)
            rng.shuffle(words)
            rating = min(5, max(1, bias + rng.choice((-1, 0, 0, 1))))
            block.append(f'{{"id": "i{i}", "label": "{topic}", "rating": {rating}, "text": "{" ".join(words)}"}}\n')
            if len(block) == 10_000:
                f.writelines(block)
                block.clear()
        f.writelines(block)
    return path


def one_line(stderr: str, tmp: Path) -> str:
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    text = lines[-1] if lines else ""
    return text.replace(str(tmp), "$TMP")


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} if d.is_dir() else {}


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """This process's peak RSS so far (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- (a) big history


def big_history(tmp: Path, env: dict, sizes: list[int], log) -> list[dict]:
    rows = []
    for n in sizes:
        hist = tmp / f"big-{n}.jsonl"
        t = time.perf_counter()
        write_history(hist, n)
        gen_s = time.perf_counter() - t
        r = run_cli(["personalize", hist, "--no-summary", "--json", "--threads", "1", "--out", tmp / f"big-out-{n}"], env)
        row = {"items": n, "file_mib": round(hist.stat().st_size / MIB, 1), "generate_s": round(gen_s, 1),
               "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
        if r["rc"] == 0:
            doc = json.loads(r["stdout"])
            prof = json.loads(Path(doc["profile"]).read_text())
            row.update(read_ms=doc["timings_ms"]["read"], total_ms=doc["timings_ms"]["total"],
                       n_items=doc["n_items"], n_used=prof["history"]["n_used"])
        else:
            row["error"] = one_line(r["stderr"], tmp)
        hist.unlink()
        log(f"  {n:>9,} items: rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB")
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------- (b) bad input


def bad_input_cases(tmp: Path, hyp: Path, base_spec) -> list[tuple[str, list, str | None]]:
    """(name, argv, stdin): each must fail with one line and leave the previous output untouched."""
    from p2p_edge.adapter import write_adapter
    from p2p_edge.hypernet import Hypernet

    d = tmp / "bad"
    d.mkdir()
    good = b'{"id": "a", "text": "first"}\n'

    def hist(name: str, body: bytes) -> Path:
        p = d / name
        p.write_bytes(body)
        return p

    unreadable = hist("unreadable.jsonl", good)
    os.chmod(unreadable, 0)
    (d / "adir.jsonl").mkdir()
    import gzip

    gz = gzip.compress(good * 2000)
    cases = [
        ("malformed JSON", hist("malformed.jsonl", good + b'{"text": "x",}\n')),
        ("wrong type (rating is a string)", hist("wrongtype.jsonl", good + b'{"text": "x", "rating": "five"}\n')),
        ("missing text", hist("missing.jsonl", good + b'{"id": "b", "title": "t"}\n')),
        ("text not a string", hist("textint.jsonl", b'{"text": 17}\n')),
        ("line is not an object", hist("array.jsonl", b'["text", "a"]\n')),
        ("empty file", hist("empty.jsonl", b"")),
        ("only blank lines", hist("blank.jsonl", b"\n  \n\n")),
        ("invalid UTF-8", hist("latin1.jsonl", good + b'{"text": "caf\xe9"}\n')),
        ("UTF-16 file", hist("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16"))),
        ("binary file (NUL bytes)", hist("binary.jsonl", b"\x00\x01\x02GGUF" * 100)),
        ("huge line (2 MiB)", hist("huge.jsonl", good + b'{"text": "' + b"x" * (2 * MIB) + b'"}\n')),
        ("truncated gzip", hist("trunc.jsonl.gz", gz[: len(gz) // 2])),
        ("directory instead of file", d / "adir.jsonl"),
        ("missing file", d / "nope.jsonl"),
        ("unreadable file (mode 0000)", unreadable),
    ]
    out = [(name, ["personalize", p, "--hypernet", hyp, "--json"], None) for name, p in cases]

    # hypernets: truncated, corrupted in place, card for another base model, no card
    onnx = hyp.read_bytes()
    card = json.loads(hyp.with_suffix(".json").read_text())

    def hypernet(name: str, data: bytes, card_doc: dict | None) -> Path:
        sub = d / name
        sub.mkdir()
        (sub / "hypernet.onnx").write_bytes(data)
        if card_doc is not None:
            (sub / "hypernet.json").write_text(json.dumps(card_doc))
        return sub / "hypernet.onnx"

    flipped = bytearray(onnx)
    flipped[len(flipped) // 2: len(flipped) // 2 + 64] = bytes(64)
    other = json.loads(json.dumps(card))
    other["base_model"].update(sha256="f" * 64, name="SomeOtherModel-7B")
    no_sha = {k: v for k, v in card.items() if k != "onnx_sha256"}
    hn_cases = [
        ("hypernet ONNX truncated", hypernet("trunc", onnx[: len(onnx) // 3], card)),
        ("hypernet ONNX corrupted (bytes zeroed)", hypernet("flip", bytes(flipped), card)),
        ("hypernet ONNX truncated, card without sha256", hypernet("trunc-nosha", onnx[: len(onnx) // 3], no_sha)),
        ("hypernet card for another base model", hypernet("other", onnx, other)),
        ("hypernet without its card", hypernet("nocard", onnx, None)),
    ]
    ok_hist = hist("ok.jsonl", good * 3)
    out += [(name, ["personalize", ok_hist, "--hypernet", p, "--json"], None) for name, p in hn_cases]
    out.append(("base model GGUF truncated", ["personalize", ok_hist, "--hypernet", hyp, "--json", "--base-model",
                                              _truncated_base(d)], None))

    # adapters given to chat: for another base model, truncated, empty, not GGUF
    e = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    lora = Hypernet(hyp).generate(e / np.linalg.norm(e))
    real = write_adapter(d / "real.gguf", lora, base_spec)
    other_base = dataclasses.replace(base_spec, name="OtherModel-135M", sha256="1" * 64)
    adapters = [
        ("adapter for a different base model", write_adapter(d / "other-base.gguf", lora, other_base)),
        ("adapter truncated", hist("trunc.gguf", real.read_bytes()[: real.stat().st_size // 2])),
        ("adapter truncated in the header", hist("trunc-header.gguf", real.read_bytes()[:300])),
        ("adapter empty file", hist("empty.gguf", b"")),
        ("adapter not GGUF", hist("text.gguf", b"hello, not a gguf file\n" * 10)),
        ("adapter missing", d / "missing.gguf"),
    ]
    out += [(name, ["chat", "--adapter", p, "--max-tokens", "4"], "hello\n") for name, p in adapters]
    return out


def _truncated_base(d: Path) -> Path:
    from p2p_edge.paths import default_base_model

    src = default_base_model()
    p = d / "base-truncated.gguf"
    with open(src, "rb") as f, open(p, "wb") as g:
        g.write(f.read(src.stat().st_size // 2))
    return p


def bad_inputs(tmp: Path, env: dict, hyp: Path, base_spec, log) -> list[dict]:
    previous = tmp / "previous"
    rows = []
    for name, args, stdin in bad_input_cases(tmp, hyp, base_spec):
        as_root = name.startswith("unreadable") and os.geteuid() == 0  # root reads it: it would overwrite
        if args[0] == "personalize":
            args = [*args, "--threads", "1", "--out", tmp / "root-out" if as_root else previous]
        before = snapshot(previous)
        r = run_cli(args, env, stdin=stdin, timeout=300)
        n_lines = len([x for x in r["stderr"].splitlines() if x.strip()])
        row = {"case": name, "command": args[0], "rc": r["rc"], "saw": one_line(r["stderr"], tmp) or "(nothing)",
               "stderr_lines": n_lines, "traceback": "Traceback" in r["stderr"],
               "previous_output_intact": None if as_root else snapshot(previous) == before}
        if as_root:
            row["note"] = ("NOT EXERCISED: this ran as root, and root can read a mode-0000 file, so personalize "
                           "succeeded; the one-line `permission denied (cannot read the file)` error is tested with a "
                           "simulated PermissionError in tests/test_history.py")
        log(f"  {name}: rc {r['rc']}: {row['saw'][:110]}")
        rows.append(row)
    return rows


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
    from p2p_edge.adapter import validate_adapter

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
    from p2p_edge.adapter import read_adapter

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


# --------------------------------------------------------------------------------------------------- (d) soak


def soak(n_users: int, n_swaps: int, *, workdir: Path, hypernet: Path | None = None, llm=None, threads: int = 1,
         revisit_every: int = 10, sample_every: int = 100, log=lambda s: None) -> dict:
    """Personalize `n_users` synthetic users with one Client (models loaded once), then `n_swaps` adapter swaps
    (load_adapter -> use -> last_logits -> free) in the same llama.cpp model. Every `revisit_every`-th swap brings
    back an earlier user and compares its logits with those recorded at its first load; every user's logits must
    differ from the base model's and from the previous user's. RSS is sampled every `sample_every` users/swaps."""
    from p2p_edge.personalize import Client

    t0 = time.perf_counter()
    rss = {"before_models": rss_mib()}
    client = Client(hypernet_path=hypernet, llm=llm, threads=threads)
    llm = client.llm
    rss["start"] = rss_mib()
    samples, errors = [("start", rss["start"])], []
    adapters = []
    t = time.perf_counter()
    for i in range(n_users):
        try:
            hist = write_history(workdir / f"u{i}.jsonl", 8, seed=i)
            names = sorted(TOPICS)
            res = client.personalize(hist, workdir / f"u{i}", summary=f"Writes mostly about {names[i % 8]} and "
                                     f"{names[(i * 3 + 1) % 8]}.")
            adapters.append(res.adapter)
        except Exception as e:  # counted, not fatal: the soak reports how many
            errors.append(f"personalize user {i}: {type(e).__name__}: {e}")
        if (i + 1) % sample_every == 0:
            samples.append((f"user {i + 1}", rss_mib()))
            log(f"  personalized {i + 1} users, RSS {samples[-1][1]:.0f} MiB, errors {len(errors)}")
    personalize_s = time.perf_counter() - t
    rss["after_personalize"] = rss_mib()

    tokens = llm.llm.tokenize(b"My review:", add_bos=True)
    llm.use(None)
    base = llm.last_logits(tokens)
    idx = np.random.default_rng(0).choice(base.size, 2048, replace=False)
    refs: dict[int, np.ndarray] = {}
    order: list[int] = []
    rng = random.Random(0)
    nxt, revisits, max_revisit_diff, mismatches, same_as_base = 0, 0, 0.0, 0, 0
    t = time.perf_counter()
    for j in range(n_swaps):
        if not adapters:
            break
        revisit = refs and (j + 1) % revisit_every == 0
        u = rng.choice(order) if revisit else nxt % len(adapters)
        if not revisit:
            nxt += 1
        try:
            ad = llm.load_adapter(adapters[u])
            try:
                llm.use(ad)
                logits = llm.last_logits(tokens)
            finally:
                llm.free(ad)
        except Exception as e:
            errors.append(f"swap {j} (user {u}): {type(e).__name__}: {e}")
            continue
        digest = logits[idx]
        if u in refs:
            revisits += revisit
            diff = float(np.abs(digest - refs[u]).max())
            max_revisit_diff = max(max_revisit_diff, diff)
            mismatches += diff > 1e-4
        else:
            refs[u] = digest
            order.append(u)
            same_as_base += float(np.abs(logits - base).max()) < 1e-3
        if (j + 1) % sample_every == 0:
            samples.append((f"swap {j + 1}", rss_mib()))
            log(f"  {j + 1} swaps, RSS {samples[-1][1]:.0f} MiB, errors {len(errors)}, mismatches {mismatches}")
    swaps_s = time.perf_counter() - t
    llm.use(None)
    rss["end"] = rss_mib()
    samples.append(("end", rss["end"]))

    firsts = [refs[u] for u in order]
    user_diffs = [float(np.abs(a - b).max()) for a, b in zip(firsts, firsts[1:])]
    warm = samples[1][1] if len(samples) > 2 else rss["start"]
    return {
        "users": n_users, "personalized": len(adapters), "swaps": n_swaps, "revisits_checked": revisits,
        "errors": len(errors), "error_examples": errors[:5],
        "logits_mismatches_on_revisit": mismatches, "max_abs_logit_diff_on_revisit": max_revisit_diff,
        "users_with_logits_equal_to_base": same_as_base,
        "consecutive_users_with_identical_logits": sum(d <= 1e-6 for d in user_diffs),
        "min_max_abs_logit_diff_between_users": min(user_diffs) if user_diffs else None,
        "distinct_user_logits": len({r.tobytes() for r in firsts}), "users_swapped_in": len(order),
        "rss_mib": {k: round(v, 1) for k, v in rss.items()}, "rss_peak_mib": round(peak_rss_mib(), 1),
        "rss_growth_mib": round(rss["end"] - rss["start"], 1), "rss_growth_after_warmup_mib": round(rss["end"] - warm, 1),
        "rss_samples": [(k, round(v, 1)) for k, v in samples],
        "personalize_ms_per_user": round(personalize_s * 1e3 / max(1, n_users), 1),
        "ms_per_swap": round(swaps_s * 1e3 / max(1, n_swaps), 1), "wall_s": round(time.perf_counter() - t0, 1),
        "hypernet": client.hypernet.card.id,
        "adapters_still_loaded": len(llm._loaded), "adapter_active_at_end": llm.active is not None,
    }


# ------------------------------------------------------------------------------------------------- reporting


def _md_table(headers: list[str], rows: list[list]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in esc])


def write_report(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robustness.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    s = res["soak"]
    lines = [
        "# Robustness", "",
        f"`python -m bench.robustness` on {m['cpu']} ({m['cores']} cores, another job running), "
        f"{m['date']}; every CLI run is a real `python -m p2p_edge.cli` process with `--threads 1`. "
        "Peak RSS of a child is its own `ru_maxrss` (wait4).", "",
        "## 1. Big histories through `p2p-edge personalize --no-summary`", "",
        "The history is streamed: memory holds the most recent 256 items (the retrieval window) plus one line; "
        "item, label and rating counts cover the whole file. So RSS does not grow with the file; time does "
        "(validation and hashing of every line).", "",
        _md_table(["items", "file MiB", "exit", "wall s", "read (validate) ms", "peak RSS MiB", "items counted",
                   "items kept"],
                  [[f"{r['items']:,}", r["file_mib"], r["rc"], r["wall_s"], r.get("read_ms", "-"), r["peak_rss_mib"],
                    f"{r.get('n_items', 0):,}", r.get("n_used", "-")] for r in res["big"]]), "",
        "## 2. Bad input through the real CLI", "",
        "`personalize` cases run with `--out` pointing at a dir holding an earlier adapter and profile; "
        "`chat` cases get `hello` on stdin. *Intact*: that earlier output is byte-identical afterwards.", "",
        _md_table(["bad input", "command", "exit", "what the user saw (last stderr line)", "stderr lines", "traceback",
                   "intact"],
                  [[r["case"], r["command"], r["rc"], f"`{r['saw']}`" + (f" — {r['note']}" if r.get("note") else ""),
                    r["stderr_lines"], "yes" if r["traceback"] else "no",
                    {True: "yes", False: "NO", None: "n/a"}[r["previous_output_intact"]]]
                   for r in res["bad_input"]]), "",
        "## 3. Faults", "",
        "Each run starts from a copy of a dir with a previous complete adapter (*previous*) and would write a "
        "different one (*new*, byte-identical to a reference run). *Temp files*: hidden `.adapter.gguf.*.tmp` "
        "left by a killed write; the next run into that dir deletes them. A signal that arrives after the outputs are "
        "written (while the interpreter exits) leaves the new adapter, with exit 0 or -2 (SIGINT at exit). Whatever the timing, no row may show "
        "a CORRUPT or MISSING adapter.", "",
        _md_table(["fault injected", "exit", "adapter.gguf afterwards", "profile.json parses", "temp files left",
                   "next run"],
                  [[r["fault"], r["rc"], r["adapter"], "yes" if r.get("profile_json_parses", True) else "NO",
                    r["temp_files_left"], r.get("next_run", "-")] for r in res["faults"]]), "",
        "## 4. Soak: one process, many users, one llama.cpp model", "",
        f"{s['users']:,} synthetic users (8 items each, a given one-line summary) personalized by one `Client` "
        f"(hypernet `{s['hypernet']}`, models loaded once), then {s['swaps']:,} adapter swaps "
        "(`load_adapter` → `use` → `last_logits` → `free`) in the same model; every 10th swap brings back an earlier "
        "user and compares 2,048 fixed logits (prompt `My review:`) with those recorded at that user's first load. "
        "*Min diff between users*: the smallest max-abs difference of those logits between consecutive users. "
        "RSS is this process's; *peak* is its high-water mark. A swap = validate + load the adapter, activate it, "
        "evaluate 4 tokens, free it (one thread: before `--threads` also bounded llama.cpp's prompt evaluation, it "
        "used both cores, and next to another busy process a swap took 0.2-3 s instead of ~25 ms).", "",
        _md_table(["users", "swaps", "users swapped in", "revisits checked", "errors", "logits mismatches on revisit",
                   "max abs diff on revisit", "users equal to base", "identical consecutive users",
                   "min diff between users"],
                  [[f"{s['users']:,}", f"{s['swaps']:,}", f"{s['users_swapped_in']:,}", s["revisits_checked"], s["errors"],
                    s["logits_mismatches_on_revisit"], f"{s['max_abs_logit_diff_on_revisit']:.2g}",
                    s["users_with_logits_equal_to_base"], s["consecutive_users_with_identical_logits"],
                    f"{s['min_max_abs_logit_diff_between_users']:.3g}"]]), "",
        _md_table(["RSS start MiB", "after personalize", "end", "peak (VmHWM)", "growth start→end",
                   "growth after the first sample", "ms / user", "ms / swap", "wall s"],
                  [[s["rss_mib"]["start"], s["rss_mib"]["after_personalize"], s["rss_mib"]["end"], s["rss_peak_mib"],
                    s["rss_growth_mib"], s["rss_growth_after_warmup_mib"], s["personalize_ms_per_user"],
                    s["ms_per_swap"], s["wall_s"]]]), "",
        "RSS samples (MiB): " + ", ".join(f"{k} {v}" for k, v in s["rss_samples"]), "",
    ]
    (out_dir / "robustness.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000, help="largest history (items)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--swaps", type=int, default=None, help="default: users + users/9 (each user once, plus a "
                    "revisit every 10th swap)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.quick:
        a.items, a.users = 20_000, 30
    swaps = a.swaps or a.users + a.users // 9

    from p2p_edge.hypernet import DEFAULT_HYPERNET
    from p2p_edge.paths import encoder_dir

    encoder = encoder_dir()
    if not (encoder / "encoder.json").is_file():
        sys.exit(f"error: encoder not found at {encoder}: run `make demo` first (or set P2P_EDGE_ENCODER)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    import platform

    from bench.client_latency import cpu_model

    res = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "date": time.strftime("%Y-%m-%d"), "euid": os.geteuid()}}
    with tempfile.TemporaryDirectory(prefix="p2p-robustness-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["P2P_EDGE_HOME"] = str(tmp / "home")  # caches of this process (soak) and of the children
        os.environ["P2P_EDGE_ENCODER"] = str(encoder)
        env = cli_env(tmp / "home", encoder)
        from p2p_edge.base import read_base_spec
        from p2p_edge.paths import cache_dir, default_base_model

        base_spec = read_base_spec(default_base_model(), cache_dir() / "sha256.json")
        hyp = DEFAULT_HYPERNET
        log("(a) big histories")
        res["big"] = big_history(tmp, env, sorted({1000, min(100_000, a.items), a.items}), log)
        log("(b) bad input")
        prev = tmp / "previous"
        r = run_cli(["personalize", ROOT / "examples" / "history.jsonl", "--summary", "x y", "--threads", "1",
                     "--out", prev], env)
        assert r["rc"] == 0, r["stderr"]
        res["bad_input"] = bad_inputs(tmp, env, hyp, base_spec, log)
        log("(c) faults")
        res["faults"] = faults(tmp, env, hyp, base_spec, log)
        log(f"(d) soak: {a.users} users, {swaps} swaps")
        work = tmp / "soak"
        work.mkdir()
        res["soak"] = soak(a.users, swaps, workdir=work, threads=1, sample_every=max(1, a.users // 10), log=log)
        log(json.dumps({k: v for k, v in res["soak"].items() if k != "rss_samples"}))
        for p in (tmp / "bad").glob("unreadable*"):
            os.chmod(p, 0o600)
    write_report(res, a.out)
    log(f"wrote {a.out / 'robustness.md'} and robustness.json")


if __name__ == "__main__":
    main()
