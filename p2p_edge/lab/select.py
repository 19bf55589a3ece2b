"""Choose among candidate hypernet checkpoints on VALIDATION users only (test users are never scored here).

    python -m p2p_edge.lab.select --config configs/train_default.toml \
        runs/p2p/last.pt runs/p2p_reg/last.pt --by news_category --out runs/select.json

Each checkpoint is exported to ONNX and answers every validation user's reserved queries through llama.cpp,
the product path. Validation users are each split's val users minus every test user of either split (a random-split
val user can be an OOD test user). Prints, per candidate, each task's primary metric per split with the users'
bootstrap CI and the last logged val loss; the chosen one has the best `--by` task's primary metric, averaged over
the two splits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from p2p_edge.eval.answer import hypernet_adapters, limit_queries
from p2p_edge.eval.metrics import LOWER_IS_BETTER

from p2p_edge.eval.stats import to_json
from p2p_edge.eval.suite import Method, evaluate, union, validation_users
from p2p_edge.fileio import atomic_write_text


def last_val_loss(ckpt: Path) -> float | None:
    log = ckpt.parent / "train_log.jsonl"
    if not log.is_file():
        return None
    vals = [json.loads(line).get("val_loss") for line in log.read_text().splitlines() if line.strip()]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None


def score(table: dict, tasks: dict, by: str, split_users: dict) -> float:
    """Mean over splits of the `by` task's primary metric, signed so that higher is better."""
    metric = tasks[by].primary_metric
    vals = [table[s][by][metric] for s in split_users if by in table[s]]
    v = float(np.mean(vals)) if vals else float("nan")
    return -v if metric in LOWER_IS_BETTER else v


def main(argv=None) -> int:
    from p2p_edge.export.hypernet import export as export_hypernet

    from p2p_edge.encoder import Encoder
    from p2p_edge.hypernet import Hypernet
    from p2p_edge.runtime import LocalLLM
    from p2p_edge.train.config import check_card_profile, load_config
    from p2p_edge.train.dataset import load_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="training config (data, tasks, profiles, splits)")
    ap.add_argument("checkpoints", type=Path, nargs="+", help="candidate hypernet checkpoints (last.pt)")
    ap.add_argument("--tasks", nargs="*", default=None, help="tasks to score (default: the config's)")
    ap.add_argument("--by", required=True, help="the task whose primary metric picks the winner")
    ap.add_argument("--queries-per-user-task", type=int, default=4,
                    help="most recent queries per user of each generation task (ratings/classes: all reserved)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the scores as JSON here")
    args = ap.parse_args(argv)

    t0 = time.time()
    cfg = load_config(args.config)
    if args.tasks:
        cfg.tasks = args.tasks
    if args.by not in (cfg.tasks or [args.by]):
        ap.error(f"--by {args.by} is not one of the scored tasks {cfg.tasks}")
    encoder = Encoder(threads=args.threads)
    corpus = load_corpus(cfg, encoder, max_users=cfg.profiles.max_users, require_summaries=False)
    split_users = validation_users(corpus)
    every = union(split_users)
    missing = [u for u in every if corpus.profiles[u]["summary"] is None]
    if missing:
        print(f"error: {len(missing)} validation users have no cached summary (first: {missing[0]})", file=sys.stderr)
        return 2
    limit_queries(corpus, every, args.queries_per_user_task)
    llm = LocalLLM(n_threads=args.threads)
    index = corpus.index()
    results = {"config": str(args.config), "by": args.by, "n_val_users": {s: len(u) for s, u in split_users.items()},
               "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="p2p-select-") as tmp:
        for i, ckpt in enumerate(args.checkpoints):
            onnx = Path(tmp) / f"h{i}.onnx"
            export_hypernet(ckpt, onnx)
            hyper = Hypernet(onnx)
            hyper.card.check_base(llm.spec)
            check_card_profile(hyper.card, cfg, str(ckpt))
            scores, _ = evaluate(llm, corpus, split_users,
                                 [Method("p2p", hypernet_adapters(hyper, llm.spec, corpus.emb["full"], index))],
                                 hypernet=hyper, emb=corpus.emb["full"], compare=(), controls=False)
            table = {s: to_json(sc.table)["p2p"] for s, sc in scores.items()}
            results["candidates"][str(ckpt)] = {"val_loss": last_val_loss(ckpt), "splits": table,
                                                "score": score(table, corpus.tasks, args.by, split_users)}
            print(f"[{time.time() - t0:6.0f}s] {ckpt}: {args.by} score {results['candidates'][str(ckpt)]['score']:.4f}",
                  file=sys.stderr, flush=True)
    best = max(results["candidates"], key=lambda k: results["candidates"][k]["score"])
    results["chosen"] = best
    for k, c in results["candidates"].items():
        cells = [f"{s} {t} {c['splits'][s][t][corpus.tasks[t].primary_metric]:.3f}" for s in c["splits"] for t in c["splits"][s]]
        print(("* " if k == best else "  ") + f"{k}  val_loss {c['val_loss']}  " + "; ".join(cells))
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
