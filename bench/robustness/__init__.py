"""Robustness on this machine, through the real `p2p-edge` CLI and the library:

    nice -n 10 python -m bench.robustness [--items 1000000] [--users 1000] [--swaps 1100] [--quick]

(a) a 1,000,000-item synthetic history through `p2p-edge personalize --no-summary` (wall time, peak RSS of the
    child; 1,000 and 100,000 items beside it), (b) every bad input through the real CLI (exit code, what the user
    saw, whether the previous output survived), (c) faults: runs killed (SIGKILL / SIGINT) at points, concurrent runs,
    (d) a soak: N synthetic users personalized in one process and their adapters swapped in and out of one llama.cpp
    model, with RSS samples and logits checks, (e) bad HTTP requests to the real `p2p-edge serve`. Writes bench/results/robustness.md and .json. Synthetic data lives in a
    temp dir and is deleted afterwards; nothing here touches the real data dir.
"""

from bench.robustness.faults import run_and_kill
from bench.robustness.soak import soak

__all__ = ["run_and_kill", "soak"]
