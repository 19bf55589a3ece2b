"""Do the history's own token statistics say anything about a user's UNSEEN texts that one shared rule could use?

No training. For each user, from the profile items' texts only (never the reserved ones):
- centroid: the mean of the base model's input-embedding rows over the history's tokens minus the training users'
  mean of that. The LM head is tied to those embeddings (SmolLM2), so adding beta * unit(centroid) to the last
  hidden state raises the logits of tokens like the user's: a low-rank residual shift, the kind of thing a LoRA
  on the value path can write, made by ONE rule for every user;
- unigram (an upper bound for token statistics, not something a LoRA can write): logits + beta * log(p_user /
  p_pop), p_user the history's token counts smoothed toward the training users' pooled counts (Dirichlet, --mu).
Each user's reserved texts of one task are scored (the training config's prompts, max_len, target cap) with the
user's own statistic, the next user's of the same part (a fixed derangement) and none, on the base model and on a
hypernet's own-profile adapter. beta is chosen per statistic and model on TRAINING users (lowest mean own loss over
the grid), then read on held-out users. Reading rule: bench/results/reading_rules/decision_rule_lexical_probe.txt.

    python -m bench.lexical_probe --config configs/train_chat_kl.toml --task blog_post \\
        --hypernet chat_v2=p2p_edge/assets/hypernet.onnx --out bench/results/lexical_probe_val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.fit_gap import generator_inputs, load_generator
from bench.output import ci_cell, paired_ci, run_and_write
from p2p_edge.errors import InputError
from p2p_edge.lexical import centroid, token_counts

GRIDS = {"centroid": (0.5, 1, 2, 4, 8, 16, 32), "unigram": (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)}


def user_statistics(counts: dict[str, np.ndarray], train_users: list[str], emb: np.ndarray, head: np.ndarray,
                    mu: float):
    """{user: (the logit shift (vocab,) of a unit hidden-state shift along the user's centroid of input embeddings
    `emb`, through the LM head `head`; the unigram log-ratio (vocab,))}."""
    cent = {u: centroid(c, emb) for u, c in counts.items()}
    cbar = np.mean([cent[u] for u in train_users], axis=0)
    pooled = np.sum([counts[u] for u in train_users], axis=0) + 0.5   # every token possible
    p_pop = pooled / pooled.sum()
    out = {}
    for u, c in counts.items():
        d = cent[u] - cbar
        d = d / max(np.linalg.norm(d), 1e-9)
        p_u = (c + mu * p_pop) / (c.sum() + mu)
        out[u] = ((head @ d).astype(np.float32), np.log(p_u / p_pop).astype(np.float32))
    return out


def run(args, log) -> dict:
    import torch

    from p2p_edge.encoder import Encoder
    from p2p_edge.train.config import load_config
    from p2p_edge.train.dataset import load_corpus, profile_inputs
    from p2p_edge.train.lm import IGNORE, Row, collate, encode_example, load_base
    from p2p_edge.train.model import LoraInjector

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.task not in cfg.tasks:
        raise InputError(args.config, f"task {args.task!r} is not one of the config's tasks {cfg.tasks}", field="tasks")
    cfg.tasks = [args.task]   # only this task's dataset is read; its splits are computed as in training
    name, path, gen = load_generator(args.hypernet)
    corpus = load_corpus(cfg, Encoder(threads=args.threads), max_users=cfg.profiles.max_users)
    model, tok, _ = load_base(cfg)
    index = corpus.index()
    pemb = generator_inputs(args.config, [(name, path, gen)], profile_inputs(cfg, corpus, tok, model)[0])[name]
    injector = LoraInjector(model, gen.cfg.modules, gen.cfg.alpha, gen.cfg.rank)
    table = model.get_input_embeddings().weight.detach().double().numpy()
    head = model.lm_head.weight.detach().double().numpy()
    parts = {p: sorted(u for u in corpus.part(cfg.split, p)
                       if "@" not in u and any(e.task == args.task for e in corpus.examples[u]))
             for p in ("train", args.part)}
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    counts = {u: token_counts(corpus.profiles[u]["items"], tokenize, table.shape[0]).astype(np.float64)
              for us in parts.values() for u in us}
    stats = user_statistics(counts, parts["train"], table, head, args.mu)
    log(f"users: {({p: len(u) for p, u in parts.items()})}")

    def texts_loss(logits, tgt, n_text, text_of, bias=None) -> float:   # token mean per text, then over texts
        lg = logits if bias is None else logits + bias
        tok_loss = torch.nn.functional.cross_entropy(lg, tgt, reduction="none")
        per_text = torch.zeros(n_text).index_add_(0, text_of, tok_loss) / torch.bincount(text_of, minlength=n_text)
        return float(per_text.mean())

    models = {"base": None, name: gen}
    result = {"config": str(args.config), "task": args.task, "hypernet": {name: path}, "mu": args.mu,
              "grids": GRIDS, "parts": {}}
    losses = {}   # part -> model -> condition -> [per user]
    for part, users in parts.items():
        losses[part] = {m: {} for m in models}
        for i, u in enumerate(users):
            other = users[(i + 1) % len(users)]
            rows = [Row(*encode_example(tok, e.prompt, e.target, cfg.train.max_len, cfg.train.max_target_tokens),
                        index[u]) for e in corpus.examples[u] if e.task == args.task]
            ids, mask, labels, who = collate(rows, tok.pad_token_id)
            tgt = labels[:, 1:]
            valid = tgt != IGNORE
            text_of = torch.arange(len(rows))[:, None].expand_as(tgt)[valid]
            for m, g in models.items():
                with torch.no_grad(), injector.use(g(pemb[who]) if g is not None else None):
                    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                    logits = model.lm_head(hidden[:, :-1][valid]).float()
                store = losses[part][m]
                store.setdefault("none", []).append(texts_loss(logits, tgt[valid], len(rows), text_of))
                for si, stat in enumerate(GRIDS):
                    for beta in GRIDS[stat]:
                        for who_, src in (("own", u), ("other", other)):
                            bias = beta * torch.from_numpy(stats[src][si])
                            store.setdefault(f"{stat}/{beta}/{who_}", []).append(
                                texts_loss(logits, tgt[valid], len(rows), text_of, bias))
            if (i + 1) % 25 == 0:
                log(f"{part}: {i + 1}/{len(users)} users")
    for m in models:
        res = {}
        for stat, grid in GRIDS.items():
            train_own = {b: np.mean(losses["train"][m][f"{stat}/{b}/own"]) for b in grid}
            beta = min(grid, key=lambda b: train_own[b])
            read = losses[args.part][m]
            res[stat] = {"beta": beta, "train_own_minus_none": round(float(train_own[beta]
                                                                          - np.mean(losses["train"][m]["none"])), 4),
                         "own_minus_none": paired_ci(read[f"{stat}/{beta}/own"], read["none"]),
                         "own_minus_other": paired_ci(read[f"{stat}/{beta}/own"], read[f"{stat}/{beta}/other"]),
                         "own_beats_other_share": round(float(np.mean(np.asarray(read[f"{stat}/{beta}/own"])
                                                                      < np.asarray(read[f"{stat}/{beta}/other"]))), 3)}
        result["parts"][m] = {"none": round(float(np.mean(losses[args.part][m]["none"])), 4), **res}
    result["n_users"] = {p: len(u) for p, u in parts.items()}
    result["read_part"] = args.part
    return result


def render(r: dict, cmd: str) -> str:
    lines = [f"<!-- generated by: {cmd} -->",
             f"# Lexical signal: `{r['task']}`, token statistics of the history vs the user's unseen texts", "",
             f"Config `{r['config']}`; {r['n_users']['train']} training users choose beta, "
             f"{r['n_users'][r['read_part']]} {r['read_part']} users read. Loss per token (nats), paired 95% bootstrap "
             "CIs over users; *other*: the next held-out user's statistic. *centroid*: the last hidden state shifted "
             "by beta times the unit centroid of the history's token embeddings (minus the training users' mean); "
             f"*unigram*: logits + beta log(p_user / p_pop) (Dirichlet mu = {r['mu']}), an upper bound a LoRA cannot "
             "write. Rule: `bench/results/reading_rules/decision_rule_lexical_probe.txt`.", "",
             "| model | statistic | beta (train) | no statistic | own - none | own - other | users whose own beats other |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for m, res in r["parts"].items():
        for stat in r["grids"]:
            s = res[stat]
            lines.append(f"| {m} | {stat} | {s['beta']} | {res['none']:.3f} | {ci_cell(s['own_minus_none'])} | "
                         f"{ci_cell(s['own_minus_other'])} | {s['own_beats_other_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lexical_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="training config: tasks, users, splits, profiles")
    ap.add_argument("--hypernet", required=True, metavar="NAME=PATH", help="an exported .onnx (card beside it) or .pt")
    ap.add_argument("--task", default="blog_post")
    ap.add_argument("--part", default="val", choices=("val", "test"), help="the held-out users read")
    ap.add_argument("--mu", type=float, default=2000.0, help="unigram smoothing toward the training users' counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return run_and_write("bench.lexical_probe", run, render, ap.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
