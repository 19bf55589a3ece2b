"""Train the tiny two-user hypernet of test_train for a few steps; run alone or under torchrun / accelerate launch.

    python tests/ddp_worker.py OUT_DIR PER_PROCESS_BATCH [STEPS]

test_train.test_ddp_two_processes_match_one_process compares a 2-process DDP run with one process on the same
global batches: the weights must agree, which only holds if the ranks draw one global batch, split it, and
average their gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # test_train's helpers
sys.path.insert(0, str(Path(__file__).parent.parent))

import numpy as np  # noqa: E402

from test_train import tiny_cfg, tiny_llama, tiny_tokenizer, two_user_rows  # noqa: E402

from p2p_edge.train.loop import train


def main(out: str, batch: int, steps: int = 6) -> None:
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)  # every row has the same length, so the mean of half-batch means is the batch mean
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    cfg = tiny_cfg(Path(out), steps=steps, batch_size=batch, eval_every=steps, save_every=steps, warmup=2)
    train(cfg, model, tok, rows, rows[:2], emb, out_dir=Path(out), meta={}, progress=False, log=lambda *_: None)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
