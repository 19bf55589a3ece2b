"""Evaluate a trained hypernet against its controls on held-out users of both splits, and export it.

    python -m p2p_edge.lab.report --config configs/train_default.toml \
        --p2p runs/p2p/last.pt --mt-lora runs/mt_lora/last.pt --out runs/report

Methods (all answered by llama.cpp on the same queries with the same greedy decoding):
base (no adapter), prior (best non-LLM user rule, picked on validation users), mt_lora (one shared LoRA,
same data and steps), p2p (the user's own profile), p2p_shuffled (another held-out user's profile from the
same dataset), and with --ablations p2p_summary_only / p2p_retrieval_only (profile variants fed to the same hypernet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from p2p_edge.gguf import LoraWeights, validate_adapter, write_adapter
from p2p_edge.errors import InputError
from p2p_edge.eval.stats import VERDICT_WORDS, answer_changes, answer_changes_cells, checks, to_json
from p2p_edge.eval.answer import hypernet_adapters, limit_queries, null_profile_embedding
from p2p_edge.eval.suite import Method, evaluate
from p2p_edge.eval.results_io import answers_path, read_answers, write_answers
from p2p_edge.fileio import atomic_write_text, ensure_private_dir

COMPARE = ("mt_lora", "p2p_shuffled", "p2p_null", "base", "prior")


def shared_lora_weights(ckpt_path: Path) -> LoraWeights:
    from p2p_edge.train.checkpoint import read_checkpoint, shared_lora_from

    return shared_lora_from(read_checkpoint(ckpt_path, method="mt_lora"))


# LLM answers that depend only on the hypernet checkpoint, the config, the users (in order: the shuffled control's
# donors follow it) and their queries: an earlier report of the same checkpoint holds them (--reuse). The prior
# (no LLM, seconds) is recomputed; the MT-LoRA control is always scored from its own --mt-lora checkpoint.
REUSABLE = ("base", "p2p", "p2p_shuffled", "p2p_summary_only", "p2p_retrieval_only")


def reused_answers(prev: Path, *, config: Path, p2p: Path, part: str, queries_per_user_task: int,
                   queries: dict[str, list[tuple[str, str]]], users_of: dict[str, list[str]]) -> dict[str, dict]:
    """split -> method -> uid -> rows from an earlier report in `prev` that scored the same hypernet checkpoint on
    the same users and queries, so a control added later rescores nothing else. Any mismatch is an InputError
    naming the file. `queries`: uid -> [(task, target)] of this run; `users_of`: split -> this run's users."""
    path = prev / "metrics.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key, was, now in (("config", meta["config"], config), ("checkpoints.p2p", meta["checkpoints"]["p2p"], p2p)):
            if Path(was).resolve() != now.resolve():
                raise InputError(path, f"was scored with {was}, this run {now}", field=key)
        for key, want in (("part", part), ("queries_per_user_task", queries_per_user_task)):
            if meta.get(key, "test" if key == "part" else None) != want:
                raise InputError(path, f"is {meta.get(key)!r}, this run {want!r}", field=key)
        out: dict[str, dict] = {}
        for split, uids in users_of.items():
            path = answers_path(prev, split)
            answers = read_answers(prev, split)
            # metrics.json is rewritten by --rerender; the answers only by scoring
            if p2p.stat().st_mtime > path.stat().st_mtime:
                raise InputError(path, f"{p2p} was rewritten after these answers were scored", field="checkpoints.p2p")
            out[split] = {}
            for m in (m for m in REUSABLE if m in answers):
                if list(answers[m]) != list(uids):
                    raise InputError(path, f"answered other users (or in another order) than this run's {len(uids)} "
                                     f"{split} users", field=m)
                for u in uids:
                    if [(r[0], r[2]) for r in answers[m][u]] != queries[u]:
                        raise InputError(path, f"user {u}'s queries differ from this run's", field=m)
                out[split][m] = {u: answers[m][u] for u in uids}
    except OSError as e:
        raise InputError(path, e.strerror or str(e)) from None
    except ValueError as e:  # InputError is not a ValueError: it passes through
        raise InputError(path, f"invalid JSON: {e}") from None
    except (KeyError, TypeError, IndexError) as e:
        raise InputError(path, f"not a report's output: {e!r}") from None
    return out


def check_not_trained_on(ckpt: Path, scored: list[str]) -> None:
    """A checkpoint whose run trained on any scored user (e.g. another fold's control) cannot be scored on them.
    Reads the run's own record (splits.json and config.json beside the checkpoint); a run without one is trusted."""
    from p2p_edge.eval.splits import load_splits
    from p2p_edge.train.dataset import split_part

    run = ckpt.parent
    splits_path = run / "splits.json"
    if not (splits_path.is_file() and (run / "config.json").is_file()):
        return
    try:
        split = json.loads((run / "config.json").read_text(encoding="utf-8"))["split"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(run / "config.json", f"not a training run's config: {e!r}", field="split") from None
    try:
        trained = set(split_part(load_splits(splits_path), split, "train"))
    except KeyError:
        raise InputError(run / "config.json", f"unknown split {split!r}", field="split") from None
    leaked = sorted(trained & set(scored))
    if leaked:
        raise InputError(splits_path, f"{ckpt} was trained on {len(leaked)} of the users scored here, e.g. "
                         f"{leaked[0]} (another fold's run?)", field="train")


METHOD_ORDER = ("base", "prior", "mt_lora", "p2p", "p2p_shuffled", "p2p_null", "p2p_summary_only", "p2p_retrieval_only")


def _fmt(d: dict, m: str) -> str:
    if m not in d:
        return "–"
    lo, hi = d[f"{m}_ci"]
    return f"{d[m]:.3f} [{lo:.3f}, {hi:.3f}]"


def checks_markdown(results: dict) -> list[str]:
    """One table of what the card claims: P2P against each control, per split and task, on the primary metric."""
    rows = []
    for split, r in results["splits"].items():
        for comp, by_task in r.get("checks", {}).items():
            for task, c in by_task.items():
                word = VERDICT_WORDS[c["verdict"]]
                rows.append(f"| {split} | {task} | {comp} ({c['metric']}) | "
                            f"{c['diff']:+.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {word} | "
                            f"{c['detectable']:.3f} |")
    if not rows:
        return []
    return (["P2P minus each control on each task's primary metric (paired 95% CI over users). *Detectable*: the "
             "smallest true difference these users would show clear of 0 in 80% of reruns (from the CI's width); "
             "a tie far below it is a question these users cannot answer, not evidence of no difference.", "",
             "| split | task | comparison | difference [95% CI] | verdict | detectable |",
             "|---|---|---|---:|---|---:|"] + rows + [""])


def changes_markdown(results: dict) -> list[str]:
    """How much the profile itself moves the answers: P2P with the user's own vs another user's profile."""
    rows = []
    for split, r in results["splits"].items():
        rows += [f"| {split} | {task} | " + " | ".join(answer_changes_cells(d)) + " |"
                 for task, d in r.get("answer_changes", {}).items()]
    if not rows:
        return []
    return (["Profile influence: queries whose answer changes when P2P gets another held-out user's profile instead "
             "of the user's own (rating / classification: how many of those changed answers each got right).", "",
             "| split | task | answers changed | right: own / shuffled profile |", "|---|---|---:|---:|"] + rows + [""])


def render_markdown(results: dict) -> str:
    """Tables per split: every method on every task's metrics, then paired P2P differences."""
    # a fold's or a candidate's report is not the shipped hypernet's: the heading names what was scored
    ckpt = results.get("checkpoints", {}).get("p2p")
    lines = [f"# Hypernet `{ckpt}` on held-out users" if ckpt else "# Hypernet on held-out users", "",
             f"Queries: each {results.get('part', 'test')} user's {results['queries_per_user_task']} most recent "
             "reserved items per generation task and every reserved item of the other tasks; "
             "values are pooled within users; [95% CI] resamples users (1000 bootstrap draws).", ""]
    if results.get("reused"):
        lines += [f"Answers of the base model and of P2P (own and shuffled profiles) are those of `{results['reused']}` "
                  "(same checkpoint, config, users and queries); this run scored the MT-LoRA control and the prior.", ""]
    lines += checks_markdown(results)
    lines += changes_markdown(results)
    for split, r in results["splits"].items():
        lines += [f"## {split} split ({r['n_test_users']} {results.get('part', 'test')} users)", ""]
        methods = [m for m in METHOD_ORDER if m in r["methods"]]
        tasks = sorted({t for m in methods for t in r["methods"][m]})
        for task in tasks:
            mets = [k for k in r["methods"]["p2p"].get(task, {}) if not k.endswith("_ci") and k not in ("n_users", "n_examples")]
            n = r["methods"]["p2p"][task]
            lines += [f"**{task}** ({n['n_users']} users, {n['n_examples']} queries)", "",
                      "| method | " + " | ".join(mets) + " |", "|---|" + "---:|" * len(mets)]
            for m in methods:
                d = r["methods"][m].get(task, {})
                lines.append(f"| {m} | " + " | ".join(_fmt(d, k) for k in mets) + " |")
            lines.append("")
        lines += ["Paired differences, P2P minus each method (positive = P2P higher; for mae/rmse lower is better):", "",
                  "| comparison | task | metric | difference [95% CI] |", "|---|---|---|---:|"]
        for comp, by_task in r["paired_diffs"].items():
            for task, d in by_task.items():
                for k in d:
                    if not k.endswith("_ci") and k != "parse_rate":
                        lines.append(f"| {comp} | {task} | {k} | {_fmt(d, k)} |")
        lines.append("")
    return "\n".join(lines)


def add_checks(results: dict, tasks: dict) -> None:
    """Each split's checks (what the card states) from its paired differences, on each task's primary metric."""
    primary = {name: t.primary_metric for name, t in tasks.items()}
    for r in results["splits"].values():
        r["checks"] = checks(r["paired_diffs"], primary)


def add_answer_changes(split_result: dict, answers: dict, tasks: dict) -> None:
    """How many of the split's answers the profile changes (answers: method -> user -> rows, as answers_SPLIT.json)."""
    if "p2p" in answers and "p2p_shuffled" in answers:
        split_result["answer_changes"] = answer_changes(answers, "p2p", "p2p_shuffled", tasks)


def rerender(out: Path, cfg) -> int:
    """Checks and markdown for a metrics.json written before checks existed (the answers are not rescored)."""
    from p2p_edge.eval.task_config import load_config as load_tasks

    path = out / "metrics.json"  # the file being read: named in any error
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        tasks = load_tasks(cfg.resolve(cfg.tasks_config)).tasks
        add_checks(results, tasks)
        for split, r in results["splits"].items():
            path = answers_path(out, split)  # written by the scoring run; absent beside a copied metrics.json
            if path.is_file():
                add_answer_changes(r, read_answers(out, split), tasks)
    except InputError as e:   # an answers file that does not read (it names itself)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError) as e:  # valid JSON, but not a report's metrics.json
        print(f"error: {path}: not a report's output (metrics.json: splits -> SPLIT -> paired_diffs; answers_SPLIT.json: "
              f"method -> user -> [task, answer, target] rows): {e!r}", file=sys.stderr)
        return 2
    atomic_write_text(out / "metrics.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(results))
    return 0


def main(argv=None) -> int:
    from p2p_edge.export.hypernet import export as export_hypernet

    from p2p_edge.encoder import Encoder
    from p2p_edge.hypernet import Hypernet
    from p2p_edge.runtime import LocalLLM
    from p2p_edge.train.config import check_card_profile, load_config
    from p2p_edge.train.dataset import load_corpus
    from p2p_edge.eval.suite import held_out_users, union

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--p2p", type=Path, help="hypernet checkpoint (last.pt)")
    ap.add_argument("--mt-lora", type=Path, help="MT-LoRA checkpoint (last.pt), or its GGUF adapter (e.g. "
                    "bench/assets/mt_lora.gguf: no run record beside it, so the leak check trusts it); without it no "
                    "MT-LoRA rows")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rerender", action="store_true",
                    help="no scoring: recompute the checks of OUT/metrics.json (tasks from --config) and rewrite "
                         "OUT/metrics.json and OUT/report.md")
    ap.add_argument("--queries-per-user-task", type=int, default=4,
                    help="most recent queries per user of each generation task (ratings/classes: all reserved)")
    ap.add_argument("--part", choices=("test", "val"), default="test",
                    help="val: score validation users instead, to choose between candidate runs without test users")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--null-profile", action="store_true",
                    help="also score the null-profile control (the hypernet fed a neutral no-history profile)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", type=Path, metavar="DIR",
                    help="an earlier report of the same --p2p checkpoint: take its answers (base, p2p, shuffled, "
                         "prior, ablations) instead of rescoring them, e.g. to add the MT-LoRA control later")
    args = ap.parse_args(argv)

    t0 = time.time()
    cfg = load_config(args.config)
    if args.rerender:
        return rerender(args.out, cfg)
    if not args.p2p:
        ap.error("--p2p is required (unless --rerender)")
    encoder = Encoder(threads=args.threads)
    corpus = load_corpus(cfg, encoder, max_users=cfg.profiles.max_users)
    index = corpus.index()

    users_of = held_out_users(corpus, args.part)
    test_uids = union(users_of)
    limit_queries(corpus, test_uids, args.queries_per_user_task)
    reused: dict[str, dict] = {}
    try:
        for ckpt in (args.p2p, args.mt_lora):
            if ckpt:
                check_not_trained_on(ckpt, test_uids)
        if args.reuse:
            reused = reused_answers(
                args.reuse, config=args.config, p2p=args.p2p, part=args.part,
                queries_per_user_task=args.queries_per_user_task, users_of=users_of,
                queries={u: [(ex.task, ex.target) for ex in corpus.examples[u]] for u in test_uids})
    except InputError as e:   # before anything is written to --out
        print(f"error: {e}", file=sys.stderr)
        return 2

    out = ensure_private_dir(args.out)
    export_hypernet(args.p2p, out / "hypernet.onnx")
    hyper = Hypernet(out / "hypernet.onnx")
    check_card_profile(hyper.card, cfg, str(args.p2p))
    llm = LocalLLM(n_threads=args.threads)
    hyper.card.check_base(llm.spec)
    if args.mt_lora and args.mt_lora.suffix == ".gguf":   # a control already written as an adapter
        validate_adapter(args.mt_lora, llm.spec)             # (e.g. bench/assets/mt_lora.gguf)
        mt_path = args.mt_lora
    else:
        mt_path = (write_adapter(out / "mt_lora.gguf", shared_lora_weights(args.mt_lora), llm.spec, dtype="f16")
                   if args.mt_lora else None)

    log = lambda m: print(f"[{time.time() - t0:7.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731

    log(f"{len(test_uids)} {args.part} users (both splits), {sum(len(corpus.examples[u]) for u in test_uids)} queries each method")
    methods = [Method("base", lambda u, t: None)]
    if mt_path:  # without a control trained on the same users (e.g. a k-fold run) its rows are left out
        methods.append(Method("mt_lora", lambda u, t: mt_path))
    methods.append(Method("p2p", hypernet_adapters(hyper, llm.spec, corpus.emb["full"], index)))
    if args.null_profile:   # one adapter for everyone: the hypernet's LoRA for the neutral no-history profile
        null_path = write_adapter(out / "p2p_null.gguf", hyper.generate(null_profile_embedding(encoder)), llm.spec,
                                  dtype="f16")
        methods.append(Method("p2p_null", lambda u, t: null_path))
    if args.ablations:
        methods += [Method(f"p2p_{v}", hypernet_adapters(hyper, llm.spec, corpus.emb[v], index))
                    for v in ("summary_only", "retrieval_only")]
    # split-independent answers of an earlier report (--reuse), merged over both splits' users; the MT-LoRA control
    # is always scored from its own --mt-lora
    known = {m: {u: rows for r in reused.values() for u, rows in r[m].items()}
             for m in REUSABLE if m != "p2p_shuffled" and reused and all(m in r for r in reused.values())}

    results = {"config": str(args.config),
               "checkpoints": {"p2p": str(args.p2p), "mt_lora": str(args.mt_lora) if args.mt_lora else None},
               "reused": str(args.reuse) if args.reuse else None,
               "queries_per_user_task": args.queries_per_user_task, "part": args.part, "splits": {}}
    # with --part val the prior's rule is picked on the users it is scored on
    scores, _ = evaluate(llm, corpus, users_of, methods, hypernet=hyper,
                         emb=corpus.emb["full"], compare=COMPARE, known=known, known_by_split=reused, log=log)
    for split, s in scores.items():
        results["splits"][split] = {
            "n_test_users": len(users_of[split]),
            "methods": to_json(s.table),
            "paired_diffs": to_json(s.diffs),
        }
        write_answers(out, split, s.answers)
        add_answer_changes(results["splits"][split], s.answers, corpus.tasks)
    add_checks(results, corpus.tasks)
    results["wall_s"] = round(time.time() - t0, 1)
    atomic_write_text(out / "metrics.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(results))
    log(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
