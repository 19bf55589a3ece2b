"""Would an int8 sentence encoder change what the client does? Against the float32 export, on held-out users.

    python -m p2p_edge.export.encoder --int8 --out DIR        # needs the export extra
    python -m bench.encoder_int8 --int8 DIR [--config configs/train_default.toml] [--part test]
                                 [--answer-users 40] [--out bench/results/encoder_int8]

(`--int8` pointed at a second float32 export is the control: it measures whether answering is deterministic.)

1. Profile vectors: every held-out user's profile vector (test users of both splits, the shipped hypernet's
   profile settings) from each encoder; cosine int8 vs float32 (min, 1st percentile, mean).
2. Adapters: the shipped hypernet's LoRA from each vector; the relative size of the difference of the LoRA deltas.
3. Answers: `--answer-users` of those users (spread over datasets) answer every reserved query of the config's tasks
   through llama.cpp with each adapter (greedy); how many answers change, and the per-task metric on both.
4. Speed: one profile text encoded, median of 30 (ms), each encoder at the client's thread count.
The rule written before the numbers (issue #21): switch the client to the int8 encoder only if every held-out
profile vector stays within cosine 0.99 of the float32 one and the answers do not change.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.output import run_and_write

ROOT = Path(__file__).resolve().parents[1]


def run(args, log) -> dict:
    from bench.chat import pick_users
    from p2p_edge.encoder import Encoder
    from p2p_edge.eval.answer import hypernet_adapters, limit_queries, run_adapter_method
    from p2p_edge.eval.stats import to_json, user_metric_table
    from p2p_edge.hypernet import Hypernet
    from p2p_edge.eval.suite import held_out_users, union
    from p2p_edge.profile import item_habits, profile_text
    from p2p_edge.runtime import LocalLLM
    from p2p_edge.train.config import check_card_profile, load_config
    from p2p_edge.train.dataset import load_corpus

    cfg = load_config(args.config)
    encoders = {"float32": Encoder(args.fp32, threads=args.threads), "int8": Encoder(args.int8, threads=args.threads)}
    hyper = Hypernet(args.hypernet)
    check_card_profile(hyper.card, cfg, str(args.hypernet))
    corpora = {k: load_corpus(cfg, e, max_users=cfg.profiles.max_users, require_summaries=False)
               for k, e in encoders.items()}
    c32, c8 = corpora["float32"], corpora["int8"]
    users = [u for u in union(held_out_users(c32, args.part)) if c32.profiles[u]["summary"] is not None]
    idx32, idx8 = c32.index(), c8.index()
    v32 = np.stack([c32.emb["full"][idx32[u]] for u in users])
    v8 = np.stack([c8.emb["full"][idx8[u]] for u in users])
    cos = (v32 * v8).sum(1) / np.linalg.norm(v32, axis=1) / np.linalg.norm(v8, axis=1)
    worst = users[int(cos.argmin())]
    log(f"{len(users)} held-out users: cosine min {cos.min():.4f}, mean {cos.mean():.4f}")
    rel = []
    for u, a, b in zip(users, v32, v8):
        la, lb = hyper.generate(a), hyper.generate(b)
        num = sum(np.linalg.norm(la.delta(m, i) - lb.delta(m, i)) ** 2 for m in la.a for i in range(la.a[m].shape[0]))
        den = sum(np.linalg.norm(la.delta(m, i)) ** 2 for m in la.a for i in range(la.a[m].shape[0]))
        rel.append(float(np.sqrt(num / den)))
    res = {"config": str(args.config), "part": args.part, "hypernet": hyper.card.id, "n_users": len(users),
           "cosine": {"min": round(float(cos.min()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
                      "mean": round(float(cos.mean()), 5), "worst_dataset": worst.split("/", 1)[0]},
           "lora_delta_relative_diff": {"mean": round(float(np.mean(rel)), 5), "max": round(float(np.max(rel)), 5)}}
    # speed: one real profile text through each encoder
    p = c32.profiles[users[0]]
    text = profile_text(p["summary"], p["items"][-hyper.card.top_k:], item_habits(p["items"]))
    res["encode_ms"] = {}
    for k, e in encoders.items():
        e.encode([text])
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            e.encode([text])
            ts.append((time.perf_counter() - t) * 1e3)
        res["encode_ms"][k] = round(float(np.median(ts)), 2)
    if args.answer_users:
        chosen = pick_users(users, args.answer_users)
        for c in (c32, c8):
            limit_queries(c, chosen, args.queries_per_user_task)
        llm = LocalLLM(n_threads=args.threads)
        answers = {}
        for k, c in corpora.items():
            log(f"answering with the {k} encoder's adapters ({len(chosen)} users)")
            answers[k] = run_adapter_method(llm, c, chosen, hypernet_adapters(hyper, llm.spec, c.emb["full"], c.index()))
        changed, total = {}, {}
        for u in chosen:
            for (task, p32, _), (_, p8, _) in zip(answers["float32"][u], answers["int8"][u]):
                total[task] = total.get(task, 0) + 1
                changed[task] = changed.get(task, 0) + (p32 != p8)
        table = to_json(user_metric_table(answers, c32.tasks))
        res["answers"] = {"n_users": len(chosen), "changed": changed, "total": total, "metrics": table}
    res["rule_met"] = bool(cos.min() >= 0.99 and (not args.answer_users or sum(res["answers"]["changed"].values()) == 0))
    return res


def render(r: dict, cmd: str) -> str:
    c, d = r["cosine"], r["lora_delta_relative_diff"]
    lines = [f"<!-- generated by: {cmd} -->", "# The int8 sentence encoder against the float32 export", "",
             f"`{cmd}`", "",
             f"{r['n_users']} held-out users ({r['part']} users of both splits of `{r['config']}`), hypernet "
             f"`{r['hypernet']}`.", "",
             "| reading | value |", "|---|---|",
             f"| profile vector cosine, int8 vs float32: min / 1st pct / mean | {c['min']:.4f} / {c['p1']:.4f} / "
             f"{c['mean']:.4f} (lowest in {c['worst_dataset']}) |",
             f"| LoRA delta, relative difference: mean / max | {d['mean']:.4f} / {d['max']:.4f} |",
             f"| one profile encoded (ms, median of 30): float32 / int8 | {r['encode_ms']['float32']} / "
             f"{r['encode_ms']['int8']} |"]
    if "answers" in r:
        a = r["answers"]
        for task in sorted(a["total"]):
            m32 = a["metrics"].get("float32", {}).get(task, {})
            m8 = a["metrics"].get("int8", {}).get(task, {})
            prim = next((k for k in m32 if not k.endswith("_ci") and k != "n_users"), None)
            metric = f"; {prim} {m32.get(prim, float('nan')):.4f} vs {m8.get(prim, float('nan')):.4f}" if prim else ""
            lines.append(f"| answers changed, {task} ({a['n_users']} users) | {a['changed'].get(task, 0)} of "
                         f"{a['total'][task]}{metric} |")
    lines += ["", f"Rule (written before the numbers): switch the client to int8 only if every held-out profile vector "
              f"stays within cosine 0.99 and no answer changes. **{'Met' if r['rule_met'] else 'Not met'}.**", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from p2p_edge.paths import ASSETS_DIR, encoder_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train_default.toml")
    ap.add_argument("--fp32", type=Path, default=encoder_dir())
    ap.add_argument("--int8", type=Path, required=True, help="an int8 export (python -m p2p_edge.export.encoder --int8)")
    ap.add_argument("--hypernet", type=Path, default=ASSETS_DIR / "hypernet.onnx")
    ap.add_argument("--part", choices=("test", "val"), default="test")
    ap.add_argument("--answer-users", type=int, default=40, help="0: vectors and adapters only")
    ap.add_argument("--queries-per-user-task", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoder_int8")
    return run_and_write("bench.encoder_int8", run, render, ap.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
