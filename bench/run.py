"""`python -m bench`: latency vs OPPU and quality vs baselines, side by side in one run.

    python -m bench                 # the full run (committed results; ~50 min on 2 idle CPU cores)
    python -m bench --quick         # a smoke run, ~5 min: few users, few steps (written to runs/bench-quick)

Writes latency.json, quality.json, REPORT.md and PNG plots to --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

from p2p_edge.fileio import atomic_write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # OPPU loads the bundled GGUF through transformers: never reach a hub

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_CONFIG = ROOT / "configs" / "train_default.toml"
DEFAULT_MT_LORA = ROOT / "bench" / "assets" / "mt_lora.gguf"
CHAT_CONFIG = ROOT / "configs" / "train_chat_kl.toml"   # the shipped hypernet's recipe: its writing tasks and users


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few users and steps: a smoke run in minutes")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="the hypernet's training config (tasks, profile protocol, splits file)")
    ap.add_argument("--hypernet", type=Path, default=None, help="ONNX hypernet (default: the shipped one)")
    ap.add_argument("--mt-lora", type=Path, default=DEFAULT_MT_LORA, help="the MT-LoRA control adapter (GGUF)")
    ap.add_argument("--out", type=Path, default=None, help="results dir (default bench/results; quick: runs/bench-quick)")
    ap.add_argument("--latency-users", default=None, help="comma-separated user counts (default 10,50,100; quick 10)")
    ap.add_argument("--oppu-timed-users", type=int, default=None, help="users OPPU is timed on (default 5; quick 2)")
    ap.add_argument("--oppu-steps", type=int, default=None, help="OPPU AdamW steps per user (default 20; quick 5)")
    ap.add_argument("--test-users", type=int, default=None,
                    help="test users per split and dataset for quality (default all; quick 3)")
    ap.add_argument("--oppu-test-users", type=int, default=None,
                    help="OPPU quality on this many test users per split and dataset (default 8; 0 = all)")
    ap.add_argument("--queries-per-user-task", type=int, default=None,
                    help="most recent queries per user of each generation task (default 4; quick 1); "
                         "rating and classification tasks keep all reserved queries")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-oppu", action="store_true",
                    help="quality without OPPU (no per-user fine-tunes: a re-run of the other methods' tables)")
    ap.add_argument("--skip-chat", action="store_true",
                    help="skip bench.chat (assistant preservation and personal writing of the hypernet)")
    ap.add_argument("--chat-config", type=Path, default=CHAT_CONFIG,
                    help="bench.chat's config: users, splits and the writing tasks (default configs/train_chat.toml)")
    ap.add_argument("--decode-pairs", type=int, default=15, help="interleaved base/adapter decode-speed measurements")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    q = a.quick
    a.out = a.out or (ROOT / "runs" / "bench-quick" if q else RESULTS)
    a.latency_users = tuple(int(x) for x in (a.latency_users or ("10" if q else "10,50,100")).split(","))
    a.oppu_timed_users = a.oppu_timed_users if a.oppu_timed_users is not None else (2 if q else 5)
    a.oppu_steps = a.oppu_steps if a.oppu_steps is not None else (5 if q else 20)
    a.test_users = a.test_users if a.test_users is not None else (3 if q else 0)
    a.oppu_test_users = a.oppu_test_users if a.oppu_test_users is not None else 8
    a.queries_per_user_task = a.queries_per_user_task if a.queries_per_user_task is not None else (1 if q else 4)
    return a


def git_commit() -> str:
    """HEAD's short hash, with " + uncommitted changes" when tracked files differ from it (e.g. a new asset)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD") or "unknown"
        return head + (" + uncommitted changes" if head != "unknown" and git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def findings(q: dict) -> list[str]:
    """The issue's quality targets, checked on every task's primary metric (paired CI over users)."""
    from p2p_edge.eval.stats import VERDICT_WORDS, verdict

    out = []
    targets = [("base", "beats the base model"), ("rag", "beats RAG"), ("mt_lora", "beats MT-LoRA"),
               ("p2p_shuffled", "beats its shuffled-profile control"), ("oppu", "matches or beats OPPU"),
               ("prior", "beats the non-LLM user prior (stretch)")]
    for split, by_task in q["paired"].items():
        for other, goal in targets:
            met, not_met = [], []
            for task, comps in by_task.items():
                d = comps.get(f"p2p-{other}")
                if d is None:
                    continue
                v = verdict(d, q["meta"]["primary_metric"][task])
                ok = v == "better" or (other == "oppu" and v == "tie")
                (met if ok else not_met).append(f"{task} ({VERDICT_WORDS[v].strip('*')})")
            if met or not_met:
                out.append(f"{split}: P2P {goal}: " + ("**met** on " + ", ".join(met) if met else "met on no task")
                           + ("; not on " + ", ".join(not_met) if not_met else ""))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0, commit = time.time(), git_commit()  # the code that ran, not what HEAD is when the run ends
    log = lambda m: print(f"[{time.time() - t0:7.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cmd = ("python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    from p2p_edge.eval.answer import limit_queries
    from p2p_edge.paths import encoder_dir
    from p2p_edge.train.config import check_card_profile
    from p2p_edge.train.profiles import subsample_users

    from .client_latency import cpu_model, tokens_per_second
    from .corpus import load_eval_corpus
    from .latency import client_only_rss, oppu_latency, p2p_latency, scaling

    cfg, corpus, tests = load_eval_corpus(args.config, per_split_dataset=args.test_users, threads=args.threads, log=log)
    log(f"corpus: {len(corpus.uids)} users; test users random {len(tests['random'])}, ood {len(tests['ood'])}")

    # The client on a fresh data/cache dir: the first personalize of each user is really cold.
    tmp = Path(tempfile.mkdtemp(prefix="p2p-bench-"))
    os.environ["P2P_EDGE_ENCODER"] = str(encoder_dir())
    os.environ["P2P_EDGE_HOME"] = str(tmp / "home")
    from p2p_edge.personalize import Client

    t = time.perf_counter()
    client = Client(hypernet_path=args.hypernet, threads=args.threads)
    check_card_profile(client.hypernet.card, cfg, str(client.hypernet.path))  # the corpus's vectors fit it
    models_load_ms = (time.perf_counter() - t) * 1e3
    # the card's id names the trained model; the sha names the exact file (fp16 and fp32 exports share an id)
    hypernet_sha = client.hypernet.card.onnx_sha256 or None

    def provenance(since: float) -> dict:
        return {"command": cmd, "commit": commit, "date": date.today().isoformat(), "wall_s": round(time.time() - since, 1),
                "hypernet_sha256": hypernet_sha}
    # once per process, not per user: the first llama.cpp generation pays for paging the model in
    t = time.perf_counter()
    client.llm.complete([{"role": "user", "content": "Hello"}], max_tokens=8)
    warmup_ms = (time.perf_counter() - t) * 1e3
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads}
    lat = None
    lat_users = subsample_users(corpus.uids, max(args.latency_users), seed=2)
    if not args.skip_latency:
        p2p = p2p_latency(client, corpus, lat_users, tmp, log=log)
        prompt = "<|im_start|>user\nWrite a short review of a guitar strap.<|im_end|>\n<|im_start|>assistant\n"
        ad = client.llm.load_adapter(tmp / "out" / "0" / "adapter.gguf")
        # interleaved base/adapter pairs, medians: the machine's drift hits both arms alike
        pairs = [(tokens_per_second(client.llm, None, prompt, repeats=1), tokens_per_second(client.llm, ad, prompt, repeats=1))
                 for _ in range(args.decode_pairs)]
        tps = {"base": statistics.median(b for b, _ in pairs), "adapter": statistics.median(a for _, a in pairs)}
        client.llm.free(ad)
        rss = client_only_rss()
    trainer = None
    if not args.skip_latency or not args.skip_quality:
        from .oppu import OppuCfg, OppuTrainer, user_examples

        t = time.perf_counter()
        trainer = OppuTrainer.load(OppuCfg(steps=args.oppu_steps), train_config=cfg)
        oppu_load_s = time.perf_counter() - t
        import torch

        torch.set_num_threads(args.threads)
    if not args.skip_latency:
        oppu = oppu_latency(trainer, client.llm, corpus, lat_users[: args.oppu_timed_users], tmp, log=log)
        oppu.update(cfg=asdict(trainer.cfg), model_load_s=round(oppu_load_s, 2))
        warm, cold = p2p["warm_stage_mean_ms"]["total"], p2p["cold_stage_mean_ms"]["total"]
        lat = {
            "machine": machine, "n_users": p2p["n_users"], "user_counts": list(args.latency_users),
            "p2p_warm_ms_per_user": warm, "p2p_cold_ms_per_user": cold, "oppu_ms_per_user": oppu["mean_ms"],
            "speedup_warm": round(oppu["mean_ms"] / warm, 1), "speedup_cold": round(oppu["mean_ms"] / cold, 2),
            "oppu_n_users_timed": oppu["n_users"],
            "p2p_stages_ms": {"cold": p2p["cold_stage_mean_ms"], "warm": p2p["warm_stage_mean_ms"]},
            "scaling": scaling(p2p, oppu, args.latency_users),
            "tokens_per_s": {k: round(v, 1) for k, v in tps.items()}, "decode_pairs": args.decode_pairs,
            "decode_overhead_per_pair_pct": [round(100 * (1 - a / b), 1) for b, a in pairs],
            "adapter_overhead_pct": round(100 * (1 - tps["adapter"] / tps["base"]), 1),
            "client_peak_rss_mb": rss, "adapter_bytes": p2p["adapter_bytes"],
            "once_per_process_ms": {"models_load": round(models_load_ms, 1), "llm_first_generation": round(warmup_ms, 1)},
            "hypernet": client.hypernet.card.id, "oppu": oppu, "p2p": p2p,
        }
        lat["run"] = provenance(t0)
        atomic_write_text(out / "latency.json", json.dumps(lat, indent=1) + "\n")
        log(f"latency: P2P warm {warm:.0f} ms, cold {cold:.0f} ms, OPPU {oppu['mean_ms'] / 1e3:.1f} s per user")

    q = None
    if not args.skip_quality:
        from .quality import run_quality

        t_quality = time.time()

        union = sorted(set(tests["random"]) | set(tests["ood"]))
        limit_queries(corpus, union, args.queries_per_user_task)
        mt = args.mt_lora if args.mt_lora and args.mt_lora.is_file() else None
        if mt is None:
            log(f"no MT-LoRA adapter at {args.mt_lora}: the mt_lora method is left out")

        def oppu_for(uid, tmpdir):
            exs = user_examples(corpus, uid, max_items=trainer.cfg.max_items)
            return trainer.adapter(exs, tmpdir / "oppu.gguf", client.llm.spec)[0] if exs else None

        from .corpus import held_out_users

        oppu_tests = held_out_users(cfg, args.oppu_test_users)
        oppu_uids = sorted(u for s in oppu_tests for u in oppu_tests[s] if u in set(tests[s]))
        quality, paired, timings, changes = run_quality(corpus, tests, llm=client.llm, hypernet=client.hypernet,
                                               encoder=client.encoder, mt_lora=mt,
                                               oppu_adapter_for=None if args.skip_oppu else oppu_for,
                                               top_k=int(cfg.profiles.top_k), oppu_uids=oppu_uids, log=log)
        q = {"meta": {"hypernet": client.hypernet.card.id, "config": str(args.config.resolve().relative_to(ROOT))
                      if args.config.resolve().is_relative_to(ROOT) else str(args.config),
                      "queries_per_user_task": args.queries_per_user_task, "query_limit_kinds": ["generation"],
                      "shuffle": "same_dataset", "top_k": int(cfg.profiles.top_k),
                      "n_test_users": {s: len(u) for s, u in tests.items()},
                      "primary_metric": {t: corpus.tasks[t].primary_metric for t in corpus.tasks},
                      "oppu": None if args.skip_oppu else asdict(trainer.cfg), "oppu_test_users_per_split_dataset": args.oppu_test_users,
                      "method_seconds": timings},
             "quality": quality, "paired": paired, "answer_changes": changes}
        q["run"] = provenance(t_quality)
        atomic_write_text(out / "quality.json", json.dumps(q, indent=1) + "\n")

    if not args.skip_chat:   # what the adapter does outside the tasks: open chat, the user's own long texts
        from .chat import main as chat_main

        hyp = args.hypernet or client.hypernet.path
        del client, trainer   # bench.chat loads its own llama.cpp model and torch base
        chat_args = ["--config", str(args.chat_config), "--hypernet", f"shipped={hyp}", "--threads", str(args.threads),
                     "--out", str(out / "chat")]
        if args.quick:
            chat_args += ["--max-prompts", "6", "--chat-users", "2", "--max-users", "6"]
        from p2p_edge.token_prior import DEFAULT_POPULATION

        if DEFAULT_POPULATION.is_file():   # the personal model is the adapter plus the user's token prior
            chat_args += ["--token-prior", str(DEFAULT_POPULATION)]
        if chat_main(chat_args) != 0:
            raise SystemExit("bench.chat failed")

    from . import plots
    from .report import render

    # a partial run (--skip-latency / --skip-quality) reports the other half from the results already in --out
    if lat is None and (out / "latency.json").is_file():
        lat = json.loads((out / "latency.json").read_text())
    if q is None and (out / "quality.json").is_file():
        q = json.loads((out / "quality.json").read_text())

    if lat:
        plots.latency_plots(lat, out)
    if q:
        plots.quality_plots(q["quality"], corpus.tasks, out)
    run = {"quick": args.quick, "findings": findings(q) if q else []}
    atomic_write_text(out / "REPORT.md", render(lat, q, run))
    log(f"wrote {out / 'REPORT.md'} in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
