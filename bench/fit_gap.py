"""Is the user-specific part of an adapter learned but not carried to new users, or not learned at all?

For one writing task, the loss per token (nats) of each user's reserved texts under no adapter, the user's own
adapter and another user's (the next user of the same part, a fixed derangement), for TRAINING users (the texts the
hypernet trained on) beside held-out users (unseen texts), in torch with the training code's scoring (the training
config's max_len and max_target_tokens). Own minus other on training users and not on held-out users: the hypernet
tells its training users apart and does not carry that to new ones (fit, not transfer). Own minus base much lower on
training users than on held-out ones: the shared part has fit the training texts themselves.

    python -m bench.fit_gap --config configs/train_chat_kl.toml --task blog_post --users 50 \\
        --hypernet chat_v2=p2p_edge/assets/hypernet.onnx --hypernet probe=runs/PROBE/last.pt --out bench/results/fit_gap
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from bench.output import ci_cell, named_paths, paired_ci, run_and_write
from p2p_edge.errors import InputError


def load_generator(spec: str):
    """NAME=PATH (an exported hypernet .onnx with its card, or a p2p training checkpoint .pt) -> (name, path, module)."""
    from p2p_edge.train.checkpoint import checkpoint_from_onnx, hypernet_from, read_checkpoint

    name, sep, path = spec.partition("=")
    if not sep or not name or not Path(path).is_file() or Path(path).suffix not in (".onnx", ".pt"):
        raise InputError(spec, "expected NAME=PATH to an exported hypernet .onnx or a training checkpoint .pt",
                         field="hypernet")
    ck = checkpoint_from_onnx(Path(path)) if path.endswith(".onnx") else read_checkpoint(Path(path), method="p2p")
    return name, path, hypernet_from(ck)


def generator_inputs(config: Path, gens: list, inputs) -> dict:
    """{name: the (users, dim) torch rows each generator of load_generator's (name, path, module) reads} from the
    config's profile_inputs: a hypernet without a lexical input reads the profile embedding alone."""
    import torch

    out = {}
    for name, _, gen in gens:
        if gen.cfg.emb_dim > inputs.shape[1] or (gen.cfg.lexical_dim and gen.cfg.emb_dim != inputs.shape[1]):
            raise InputError(config, f"hypernet {name} reads {gen.cfg.emb_dim}-d profiles (lexical part "
                             f"{gen.cfg.lexical_dim}); this config makes {inputs.shape[1]}-d ones", field="profiles")
        out[name] = torch.from_numpy(inputs[:, : gen.cfg.emb_dim])
    return out


def pick(users: list[str], n: int, seed: int = 0) -> list[str]:
    users = list(users)
    random.Random(seed).shuffle(users)
    return sorted(users[:n] if n else users)


def run(args, log) -> dict:
    import torch

    from p2p_edge.encoder import Encoder
    from p2p_edge.train.config import load_config
    from p2p_edge.train.dataset import load_corpus, profile_inputs
    from p2p_edge.train.lm import Row, collate, encode_example, load_base, target_losses
    from p2p_edge.train.losses import token_losses
    from p2p_edge.train.model import LoraInjector

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.task not in cfg.tasks:
        raise InputError(args.config, f"task {args.task!r} is not one of the config's tasks {cfg.tasks}", field="tasks")
    gens = [load_generator(s) for s in args.hypernet]
    corpus = load_corpus(cfg, Encoder(threads=args.threads), max_users=cfg.profiles.max_users)
    model, tok, _ = load_base(cfg)
    index, emb = corpus.index(), generator_inputs(args.config, gens, profile_inputs(cfg, corpus, tok, model)[0])
    g0 = gens[0][2].cfg
    injector = LoraInjector(model, g0.modules, g0.alpha, g0.rank)

    def per_user(losses, valid) -> float:   # token mean per text, then the mean over the user's texts
        return float(((losses * valid).sum(1) / valid.sum(1).clamp(min=1)).mean())

    out = {"config": str(args.config), "task": args.task, "hypernets": {n: p for n, p, _ in gens}, "parts": {}}
    for part in ("train", "val"):
        users = [u for u in corpus.part(cfg.split, part)
                 if "@" not in u and any(e.task == args.task for e in corpus.examples[u])]
        users = pick(users, args.users)
        if len(users) < 2:
            raise InputError(args.config, f"fewer than 2 {part} users have {args.task} texts", field="tasks")
        other = {u: users[(i + 1) % len(users)] for i, u in enumerate(users)}
        base, own, oth = [], {n: [] for n, _, _ in gens}, {n: [] for n, _, _ in gens}
        for u in users:
            rows = [Row(*encode_example(tok, e.prompt, e.target, cfg.train.max_len, cfg.train.max_target_tokens),
                        index[u]) for e in corpus.examples[u] if e.task == args.task]
            ids, mask, labels, who = collate(rows, tok.pad_token_id)
            with torch.no_grad():
                with injector.use(None):
                    base.append(per_user(*target_losses(model, ids, mask, labels)))
                for name, _, gen in gens:
                    own[name].append(per_user(*token_losses(model, injector, gen, emb[name][who], ids, mask, labels)))
                    e_other = emb[name][torch.full_like(who, index[other[u]])]
                    oth[name].append(per_user(*token_losses(model, injector, gen, e_other, ids, mask, labels)))
        res = {"n_users": len(users), "base": round(float(np.mean(base)), 4), "hypernets": {}}
        for name in own:
            d = np.asarray(own[name]) - np.asarray(oth[name])
            res["hypernets"][name] = {"own": round(float(np.mean(own[name])), 4),
                                      "own_minus_base": paired_ci(own[name], base),
                                      "own_minus_other": paired_ci(own[name], oth[name]),
                                      "own_beats_other_share": round(float((d < 0).mean()), 3)}
        out["parts"][part] = res
        log(f"{part}: {res}")
    return out


def render(r: dict, cmd: str) -> str:
    lines = [f"<!-- generated by: {cmd} -->", f"# Fit or transfer: `{r['task']}` on training users and held-out users",
             "", f"Config `{r['config']}`. Hypernets: " + named_paths(r["hypernets"])
             + ". Loss per token (nats) of each user's reserved texts, users weigh equally, paired 95% bootstrap CIs "
             "over users. *train*: the training users and the very texts the hypernet trained on; *val*: validation "
             "users' unseen texts. *other*: the next user of the same part's profile.", "",
             "| part | users | hypernet | base | own | own - base | own - other | users whose own beats other |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for part, res in r["parts"].items():
        for name, h in res["hypernets"].items():
            lines.append(f"| {part} | {res['n_users']} | {name} | {res['base']:.3f} | {h['own']:.3f} | "
                         f"{ci_cell(h['own_minus_base'])} | {ci_cell(h['own_minus_other'])} | "
                         f"{h['own_beats_other_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fit_gap", description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="training config: tasks, users, splits, profiles")
    ap.add_argument("--hypernet", action="append", required=True, metavar="NAME=PATH",
                    help="an exported hypernet .onnx (card beside it) or a training checkpoint .pt; repeat to compare")
    ap.add_argument("--task", default="blog_post")
    ap.add_argument("--users", type=int, default=50, help="users per part (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return run_and_write("bench.fit_gap", run, render, ap.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
