"""Shared helpers of the robustness bench: synthetic histories, the real CLI in a child process, RSS."""


from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path



ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
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
