"""Build the personal token prior's population table and choose its beta, on TRAINING users only.

The population: the pooled token counts (llama.cpp's tokenizer of the base GGUF) of the profile items of every
training user of the config's datasets. beta: the grid value with the lowest mean loss per token of training users'
own texts of the writing tasks (each task's users weigh equally within it, the tasks equally), under each user's own
adapter from the hypernet plus their own prior; mu is fixed (the lexical probe's). Validation and test users are
never read here. Rule: bench/results/reading_rules/decision_rule_token_prior.txt.

    python -m bench.token_prior --config configs/train_chat_kl.toml --hypernet p2p_edge/assets/hypernet.onnx \\
        --population p2p_edge/assets/token_population.npz --out bench/results/token_prior_beta
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from bench.chat import writing_tasks
from bench.output import run_and_write
from p2p_edge.errors import InputError

GRID = (0.1, 0.2, 0.3, 0.5, 0.75)


def training_users(corpus, split: str) -> list[str]:
    """The config's training users, without the augmentation copies (uid@k: the same person's earlier cuts)."""
    return sorted(u for u in corpus.part(split, "train") if "@" not in u)


def population_counts(corpus, users: list[str], tokenize, vocab: int) -> np.ndarray:
    from p2p_edge.lexical import token_counts

    return np.sum([token_counts(corpus.profiles[u]["items"], tokenize, vocab) for u in users], axis=0)


def run(args, log) -> dict:
    import torch

    from bench.chat import load_hypernets, lora_tensors, rows_nll_biased
    from p2p_edge.encoder import Encoder
    from p2p_edge.lexical import token_counts
    from p2p_edge.runtime import vocab_tokenizer
    from p2p_edge.token_prior import Population
    from p2p_edge.train.config import load_config
    from p2p_edge.train.dataset import load_corpus
    from p2p_edge.train.lm import encode_example, load_base
    from p2p_edge.train.model import LoraInjector

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    (name, (hpath, hyper)), = load_hypernets([f"h={args.hypernet}"], cfg, args.threads).items()
    corpus = load_corpus(cfg, Encoder(threads=args.threads), max_users=cfg.profiles.max_users)
    model, tok, base_meta = load_base(cfg)
    tokenize, vocab = vocab_tokenizer(Path(cfg.resolve(cfg.base.path)) if cfg.base.path else None)
    train = training_users(corpus, cfg.split)
    pooled = population_counts(corpus, train, tokenize, vocab)
    log(f"population: {len(train)} training users, {int(pooled.sum())} tokens, {int((pooled > 0).sum())} distinct")
    pop = Population.from_counts(pooled, beta=1.0, mu=args.mu)
    unit = {}   # user -> the bias at beta = 1
    tasks = args.writing_tasks or writing_tasks(corpus)
    if not tasks:
        raise InputError(args.config, "the config has no writing task (a generation task whose target is `text`)",
                         field="tasks")
    index, emb = corpus.index(), corpus.emb["full"]
    injector = LoraInjector(model, hyper.card.modules, hyper.card.alpha, hyper.card.rank)
    losses: dict[str, dict[str, dict[str, float]]] = {}   # task -> user -> {"none" | beta: loss}
    for task in tasks:
        users = [u for u in train if any(e.task == task for e in corpus.examples[u])]
        users = sorted(users, key=lambda u: hashlib.sha1(u.encode()).hexdigest())[: args.per_task]
        for u in users:
            if u not in unit:
                unit[u] = pop.bias_values(token_counts(corpus.profiles[u]["items"], tokenize, vocab))
            rows = [encode_example(tok, e.prompt, e.target, 10**6, args.target_tokens)
                    for e in corpus.examples[u] if e.task == task]
            biases = {"none": None, **{str(b): b * unit[u] for b in GRID}}
            per = rows_nll_biased(model, injector, lora_tensors(hyper.generate(emb[index[u]])), rows,
                                  tok.pad_token_id, biases)
            losses.setdefault(task, {})[u] = {k: float(np.mean(v)) for k, v in per.items()}
        log(f"{task}: {len(users)} training users scored")
    injector.remove()
    mean = {k: float(np.mean([np.mean([v[k] for v in losses[t].values()]) for t in tasks]))
            for k in ["none", *map(str, GRID)]}
    beta = min(GRID, key=lambda b: mean[str(b)])
    per_task = {t: {k: round(float(np.mean([v[k] for v in losses[t].values()])), 4) for k in mean} | {
        "n_users": len(losses[t])} for t in tasks}
    chosen = Population.from_counts(pooled, beta=beta, mu=args.mu, meta={
        "id": args.population_id, "default_on": args.default_on, "limits": args.limits,
        "base_name": base_meta.get("name", ""), "base_sha256": base_meta.get("sha256", ""),
        "config": str(args.config), "n_users": len(train), "n_tokens": int(pooled.sum()),
        "beta_chosen_on": f"training users' own texts of {', '.join(tasks)} under {hyper.card.id}'s adapters",
        "rule": "bench/results/reading_rules/decision_rule_token_prior.txt"})
    if args.population:
        chosen.save(args.population)
    return {"config": str(args.config), "hypernet": str(hpath), "hypernet_id": hyper.card.id, "mu": args.mu,
            "grid": list(GRID), "beta": beta, "population": str(args.population or ""),
            "n_population_users": len(train), "n_population_tokens": int(pooled.sum()),
            "mean_loss": {k: round(v, 4) for k, v in mean.items()}, "per_task": per_task}


def render(r: dict, cmd: str) -> str:
    keys = ["none", *map(str, r["grid"])]
    lines = [f"<!-- generated by: {cmd} -->", "# The personal token prior: population table and beta (training users)",
             "", f"Population: the profile items' tokens of {r['n_population_users']} training users of "
             f"`{r['config']}` ({r['n_population_tokens']:,} tokens). Loss per token (nats) of training users' own "
             f"texts under their own `{r['hypernet_id']}` adapter plus their own prior at each beta (mu = "
             f"{r['mu']:g}); *none*: the adapter alone. Chosen: the lowest mean, **beta = {r['beta']:g}**. "
             "Rule: `bench/results/reading_rules/decision_rule_token_prior.txt`.", "",
             "| task | users | " + " | ".join(f"beta {k}" if k != "none" else "none" for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for t, row in r["per_task"].items():
        lines.append(f"| {t} | {row['n_users']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    lines.append("| **mean of tasks** | | " + " | ".join(f"{r['mean_loss'][k]:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.token_prior", description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="training config: tasks, users, splits, profiles")
    ap.add_argument("--hypernet", required=True, help="an exported hypernet .onnx (card beside it)")
    ap.add_argument("--writing-tasks", nargs="+", help="default: the config's long-form writing tasks")
    ap.add_argument("--per-task", type=int, default=60, help="training users scored per writing task")
    ap.add_argument("--target-tokens", type=int, default=128, help="tokens of each text that are scored")
    ap.add_argument("--mu", type=float, default=2000.0, help="smoothing of a user's counts toward the population's")
    ap.add_argument("--population", type=Path, help="write the population table (with the chosen beta) here")
    ap.add_argument("--population-id", default="p2p-smollm2-135m-token-population-1")
    ap.add_argument("--default-on", action="store_true",
                    help="the written table turns the prior on in chat and serve by default (only after its reading "
                         "on test users met the rule: bench/results/reading_rules/decision_rule_token_prior.txt)")
    ap.add_argument("--limits", default="", help="what the prior does not do, in words (shown by p2p-edge info)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return run_and_write("bench.token_prior", run, render, ap.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
