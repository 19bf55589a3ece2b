"""Does a personal adapter keep the model a good assistant, and does it carry the user's voice?

Two readings per hypernet (each an exported ONNX + card, e.g. the shipped one and a candidate), on HELD-OUT users
(test users of both splits of the training config; no hypernet saw them):

1. Assistant preservation, through the product path (llama.cpp + GGUF adapters): greedy replies (the chat's system
   prompt, 96 tokens) to open prompts that no training run reads (configs/prompts/open_eval.txt), with no adapter and
   with several held-out users' adapters and the null profile's. Mean reply length adapter / base, the share of
   replies under 5 words, and the base model's own greedy replies' loss per token under the adapter minus under the
   base model (torch, the same LoRA weights).
2. Personal writing (torch, no decoding): each held-out user's loss per token on their own unseen long texts (the
   writing tasks' reserved queries) with no adapter, their own adapter, the null profile's adapter (a fixed neutral
   profile: "no history") and another held-out user's adapter (same dataset; answer.derangement, seed 1). Users
   weigh equally; paired 95% bootstrap CIs over users.

    python -m bench.chat --config configs/train_chat.toml --hypernet v1=p2p_edge/assets/hypernet.onnx \
        --hypernet chat=runs/chat/hypernet.onnx --out bench/results/chat
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.output import ci_cell, named_paths, paired_ci, run_and_write
from p2p_edge.errors import InputError

REPLY_TOKENS = 96
PRIOR_SUFFIX = "+prior"           # a hypernet's adapters plus each user's token prior
PRIOR_ALONE = "prior alone"       # the base model plus each user's token prior: the non-LLM user prior
SHORT_WORDS = 5
WRITING_VARIANTS = ("base", "own", "null", "other")


# ------------------------------------------------------------------------------------------------ users
def pick_users(uids: list[str], n: int) -> list[str]:
    """n users spread over datasets (round robin, each dataset's users in sha1 order): deterministic, and no
    dataset's users crowd out the others."""
    by_ds: dict[str, list[str]] = {}
    for u in sorted(uids, key=lambda u: hashlib.sha1(u.encode()).hexdigest()):
        by_ds.setdefault(u.split("/", 1)[0], []).append(u)
    out, lists = [], [by_ds[k] for k in sorted(by_ds)]
    while len(out) < n and any(lists):
        for lst in lists:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def load_hypernets(specs: list[str], cfg, threads: int) -> dict:
    """--hypernet NAME=PATH options -> {name: (path, Hypernet)}, each card checked against the config's profiles."""
    from p2p_edge.hypernet import Hypernet
    from p2p_edge.train.config import check_card_profile

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise InputError(spec, "expected NAME=PATH to an exported hypernet .onnx", field="hypernet")
        out[name] = (path, Hypernet(Path(path), threads=threads))
        check_card_profile(out[name][1].card, cfg, path)
    return out


def writing_tasks(corpus) -> list[str]:
    """The tasks whose target is the user's own text (the `text` field): the long-form writing tasks."""
    return [n for n, t in corpus.tasks.items() if t.kind == "generation" and t.target_field == "text"]


# ------------------------------------------------------------------------------------------------ replies
def words(text: str) -> int:
    return len(text.split())


def reply_stats(replies: list[str]) -> dict:
    n = np.array([words(r) for r in replies], float)
    return {"mean_words": round(float(n.mean()), 2), "short_share": round(float((n < SHORT_WORDS).mean()), 4)}


def generate_replies(llm, adapter_path: Path | None, prompts: list[str], system: str,
                     scale: float = 1.0, prior=None) -> list[str]:
    """Greedy replies with an adapter (None = none) and a token prior (None = none) in use."""
    from p2p_edge.train.preserve import base_reply

    ad = llm.load_adapter(adapter_path) if adapter_path is not None else None
    llm.use(ad, scale)
    llm.set_prior(prior)
    try:
        return [base_reply(llm, p, system, REPLY_TOKENS)[0] for p in prompts]
    finally:
        llm.set_prior(None)
        if ad is not None:
            llm.free(ad)


# ------------------------------------------------------------------------------------------------ torch NLL
def lora_tensors(lora) -> dict:
    """LoraWeights (numpy, from the ONNX hypernet) -> the injector's {"m.lora_a": (1, L, r, in), ...}."""
    import torch

    out = {}
    for m in lora.a:
        out[f"{m}.lora_a"] = torch.from_numpy(lora.a[m])[None]
        out[f"{m}.lora_b"] = torch.from_numpy(lora.b[m])[None]
    return out


def rows_nll(model, injector, lora: dict | None, rows: list, pad_id: int) -> list[float]:
    """Loss per target token of each row (a list of (ids, labels)), with `lora` in use (None = the base model)."""
    return rows_nll_biased(model, injector, lora, rows, pad_id, {"": None})[""]


def rows_nll_biased(model, injector, lora: dict | None, rows: list, pad_id: int, biases: dict) -> dict[str, list[float]]:
    """rows_nll under each of several logit biases ({name: (vocab,) array or None}), from one forward pass."""
    import torch

    from p2p_edge.train.lm import Row, collate, target_logits

    out: dict[str, list[float]] = {k: [] for k in biases}
    dense = {k: None if b is None else torch.as_tensor(np.asarray(b, np.float32)) for k, b in biases.items()}
    with torch.no_grad(), injector.use(lora):
        for i in range(0, len(rows), 4):
            ids, mask, labels, _ = collate([Row(a, b, 0) for a, b in rows[i:i + 4]], pad_id)
            logits, tgt, valid = target_logits(model, ids, mask, labels)
            row_of = torch.arange(len(ids))[:, None].expand_as(tgt)[valid]
            n_tok = torch.bincount(row_of, minlength=len(ids)).clamp(min=1)
            for k, b in dense.items():
                tok = torch.nn.functional.cross_entropy(logits if b is None else logits + b, tgt[valid],
                                                        reduction="none")
                out[k] += (torch.zeros(len(ids)).index_add_(0, row_of, tok) / n_tok).tolist()
    return out


# ------------------------------------------------------------------------------------------------ run
def run(args, log) -> dict:
    import torch

    from p2p_edge.gguf import write_adapter
    from p2p_edge.encoder import Encoder
    from p2p_edge.eval.answer import derangement, null_profile_embedding
    from p2p_edge.runtime import LocalLLM
    from p2p_edge.train.config import load_config
    from p2p_edge.train.dataset import load_corpus
    from p2p_edge.train.lm import encode_example, load_base
    from p2p_edge.train.model import LoraInjector
    from p2p_edge.train.preserve import read_prompts, system_prompt
    from p2p_edge.eval.suite import held_out_users, union

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    prompts = read_prompts(args.prompts)[: args.max_prompts or None]
    system = system_prompt()
    hypernets = {name: h for name, (_, h) in load_hypernets(args.hypernet, cfg, args.threads).items()}
    encoder = Encoder(threads=args.threads)
    corpus = load_corpus(cfg, encoder, max_users=cfg.profiles.max_users)
    index, emb = corpus.index(), corpus.emb["full"]
    test = union(held_out_users(corpus, args.part))   # val: choose between candidates, no test user seen
    if args.max_users:   # a smoke run: a few held-out users, spread over datasets
        test = sorted(pick_users(test, args.max_users))
    null = null_profile_embedding(encoder)
    llm = LocalLLM(n_threads=args.threads)
    for h in hypernets.values():
        h.card.check_base(llm.spec)
    priors = {}   # user -> TokenPrior from the profile items (what the client counts: the history, never the queries)
    if args.token_prior:
        from p2p_edge.token_prior import Population

        pop = Population.load(args.token_prior)
        pop.check_base(llm.spec.sha256, llm.llm.n_vocab(), args.token_prior)
        priors = {u: pop.prior(corpus.profiles[u]["items"], llm.tokenize) for u in test}
    # replies at the strength chat uses (the card's chat_scale unless --scale); likelihoods at the trained strength
    scales = {k: (args.scale if args.scale is not None else h.card.chat_scale) for k, h in hypernets.items()}
    result = {"config": str(args.config), "part": args.part, "reply_scales": scales, "hypernets": {k: str(v.path) for k, v in hypernets.items()},
              "prompts": str(args.prompts), "n_prompts": len(prompts), "reply_tokens": REPLY_TOKENS,
              "token_prior": str(args.token_prior or "")}
    if priors:
        result["token_prior_beta"] = pop.beta

    # 1. replies through llama.cpp
    chat_users = pick_users(test, args.chat_users)
    result["chat_users"] = chat_users
    replies: dict[str, dict[str, list[str]]] = {"base": {"-": generate_replies(llm, None, prompts, system)}}
    log(f"base replies: {reply_stats(replies['base']['-'])}")
    # each chat adapter's LoRA, made once: written for llama.cpp here, scored by torch below
    weights = {name: {who: h.generate(vec) for who, vec in [(u, emb[index[u]]) for u in chat_users] + [("null", null)]}
               for name, h in hypernets.items()}
    with tempfile.TemporaryDirectory(prefix="p2p-bench-chat-") as tmp:
        for name in hypernets:
            # with a token prior: each user's adapter plus their prior too ("NAME+prior"); the null profile has no
            # history, hence no prior
            for key, with_prior in ((name, False), (f"{name}{PRIOR_SUFFIX}", True))[: 2 if priors else 1]:
                replies[key] = {}
                for who, lora in weights[name].items():
                    path = write_adapter(Path(tmp) / "a.gguf", lora, llm.spec, dtype="f16")
                    replies[key][who] = generate_replies(llm, path, prompts, system, scales[name],
                                                         priors.get(who) if with_prior else None)
                log(f"{key} replies: " + ", ".join(f"{w.split('/')[-1][:10]} {reply_stats(r)['mean_words']}"
                                                  for w, r in replies[key].items()))
    if priors:   # the non-LLM control: the base model with the user's prior and no adapter
        replies[PRIOR_ALONE] = {u: generate_replies(llm, None, prompts, system, 1.0, priors[u]) for u in chat_users}
        replies[PRIOR_ALONE]["null"] = replies["base"]["-"]
        log(f"{PRIOR_ALONE} replies: " + ", ".join(f"{w.split('/')[-1][:10]} {reply_stats(r)['mean_words']}"
                                                   for w, r in replies[PRIOR_ALONE].items()))
    del llm

    # 2. losses through torch (the same LoRA weights, dequantized base)
    model, tok, _ = load_base(cfg)
    base_rows = [encode_example(tok, p, r, 10**6, 10**6, system=system, finished=False)
                 for p, r in zip(prompts, replies["base"]["-"])]
    card = next(iter(hypernets.values())).card   # every hypernet here fits the same base (check_base above)
    injector = LoraInjector(model, card.modules, card.alpha, card.rank)
    base_nll = rows_nll(model, injector, None, base_rows, tok.pad_token_id)
    base_stats = reply_stats(replies["base"]["-"])
    result["base"] = {**base_stats, "base_reply_nll": round(float(np.mean(base_nll)), 4),
                      "replies": replies["base"]["-"][: args.keep_replies]}
    result["preservation"] = {}
    dense = {u: p.dense() for u, p in priors.items()}
    for name in [k for k in replies if k != "base"]:
        hname, with_prior = (name[: -len(PRIOR_SUFFIX)], True) if name.endswith(PRIOR_SUFFIX) else (name, False)
        per_who = {}
        for who, reps in replies[name].items():
            lora = None if name == PRIOR_ALONE else lora_tensors(weights[hname][who])
            bias = dense.get(who) if (with_prior or name == PRIOR_ALONE) else None
            nll = rows_nll_biased(model, injector, lora, base_rows, tok.pad_token_id, {"": bias})[""]
            per_who[who] = {**reply_stats(reps), "base_reply_nll_delta": round(float(np.mean(nll) - np.mean(base_nll)), 4),
                            "replies": reps[: args.keep_replies]}
        users = [w for w in per_who if w != "null"]
        all_reps = [r for w in users for r in replies[name][w]]
        st = reply_stats(all_reps)
        result["preservation"][name] = {
            "length_ratio": round(st["mean_words"] / max(base_stats["mean_words"], 1e-9), 3),
            "short_share": st["short_share"],
            "base_reply_nll_delta": round(float(np.mean([per_who[w]["base_reply_nll_delta"] for w in users])), 4),
            "null_length_ratio": round(per_who["null"]["mean_words"] / max(base_stats["mean_words"], 1e-9), 3),
            "per_adapter": per_who,
        }
    log("preservation scored")

    # 3. personal writing: own / null / another held-out user's adapter on the user's unseen texts
    # default: the tasks whose target is the user's own text (the `text` field), i.e. the long-form writing tasks
    writing = args.writing_tasks or writing_tasks(corpus)
    donor = derangement(test, seed=1)
    result["writing"] = {}
    for name, h in hypernets.items():
        null_lora = lora_tensors(h.generate(null))
        # variant -> (adapter, whose prior): base/own/null/other as without a prior; with one also the adapters
        # plus the user's (own) or the donor's (other) prior, and the prior alone on the base model
        variants = {"base": ("base", None), "own": ("own", None), "null": ("null", None), "other": ("other", None)}
        if priors:
            variants |= {"own+prior": ("own", "own"), "other+prior": ("other", "other"),
                         "prior/own": ("base", "own"), "prior/other": ("base", "other")}
        per_task: dict[str, dict[str, dict[str, float]]] = {}
        for u in test:
            by_task: dict[str, list] = {}
            for ex in corpus.examples[u]:
                if ex.task in writing:
                    by_task.setdefault(ex.task, []).append(
                        encode_example(tok, ex.prompt, ex.target, 10**6, args.target_tokens))
            if not by_task:
                continue
            loras = {"base": None, "own": lora_tensors(h.generate(emb[index[u]])), "null": null_lora,
                     "other": lora_tensors(h.generate(emb[index[donor[u]]]))}
            bias_of = {"own": dense.get(u), "other": dense.get(donor[u])}
            for task, rows in by_task.items():
                got = per_task.setdefault(task, {}).setdefault(u, {})
                for adapter, lo in loras.items():
                    wanted = {v: (bias_of[src] if src else None) for v, (a, src) in variants.items() if a == adapter}
                    for v, nll in rows_nll_biased(model, injector, lo, rows, tok.pad_token_id, wanted).items():
                        got[v] = float(np.mean(nll))
        rows_of = {name: {k: k for k in WRITING_VARIANTS}}
        if priors:
            rows_of[f"{name}{PRIOR_SUFFIX}"] = {"base": "base", "own": "own+prior", "null": "null",
                                                "other": "other+prior"}
            # the prior alone (no adapter); its null is the base model: an empty history has no prior
            rows_of.setdefault(PRIOR_ALONE, {"base": "base", "own": "prior/own", "null": "base",
                                             "other": "prior/other"})
        for key, pick in rows_of.items():
            if key in result["writing"]:
                continue   # the prior alone is the same for every hypernet
            result["writing"][key] = {}
            for task, users in sorted(per_task.items()):
                v = {k: np.array([users[u][pick[k]] for u in sorted(users)]) for k in WRITING_VARIANTS}
                row = {"n_users": len(users), **{k: round(float(v[k].mean()), 4) for k in WRITING_VARIANTS}}
                for a, b in (("own", "base"), ("own", "other"), ("own", "null"), ("null", "base")):
                    row[f"{a}_minus_{b}"] = paired_ci(v[a], v[b])
                result["writing"][key][task] = row
        log(f"{name}: writing scored")
    injector.remove()
    return result


def render(r: dict, cmd: str) -> str:
    b = r["base"]
    lines = [f"<!-- generated by: {cmd} -->", "# Chat and personal writing: what an adapter does outside the tasks", "",
             f"Held-out users only ({r['part']} users of both splits of `{r['config']}`). Hypernets: "
             + named_paths(r["hypernets"]) + ".", "",
             "## Assistant preservation", "",
             f"Greedy replies ({r['reply_tokens']} tokens, the chat's system prompt, repeat penalty 1.1) to "
             f"{r['n_prompts']} open prompts no training run reads (`{r['prompts']}`; LoRA scale of the replies: "
             + ", ".join(f"{k} {v:g}" for k, v in r.get("reply_scales", {}).items())
             + "; likelihoods at scale 1), through llama.cpp with GGUF "
             f"adapters of {len(r['chat_users'])} held-out users ({', '.join(u.split('/')[0] for u in r['chat_users'])}). "
             f"Base model: {b['mean_words']:.1f} words per reply, {100 * b['short_share']:.1f}% under "
             f"{SHORT_WORDS} words, loss of its own replies {b['base_reply_nll']:.3f} nats/token.", "",
             "| hypernet | length ratio (adapter / base) | replies under 5 words | base-reply loss, adapter minus base "
             "(nats/token) | null profile's length ratio |", "|---|---:|---:|---:|---:|"]
    for name, p in r["preservation"].items():
        lines.append(f"| {name} | {p['length_ratio']:.2f} | {100 * p['short_share']:.1f}% "
                     f"| {p['base_reply_nll_delta']:+.3f} | {p['null_length_ratio']:.2f} |")
    lines += ["", "Bar (issue): length ratio >= 0.8, short replies at most the base model's share + 3 points, "
              "base-reply loss within +0.10 nats/token.", "", "## Personal writing", "",
              "Loss per token (nats, lower = likelier) of each held-out user's own unseen texts (the writing tasks' "
              "reserved queries, first tokens as scored), users weigh equally; paired 95% bootstrap CIs over users. "
              "*null*: the hypernet fed a neutral profile (no history); *other*: another held-out user's profile "
              "(same dataset).", ""]
    if r.get("token_prior"):
        lines += [f"*{PRIOR_SUFFIX}* rows: the same adapters plus each user's personal token prior (`p2p_edge.token_prior`, "
                  f"population `{r['token_prior']}`, beta {r['token_prior_beta']:g}; *other*: the donor's adapter plus "
                  f"the donor's prior; *null*: no history, so no prior). *{PRIOR_ALONE}*: the base model plus the user's "
                  "prior, no adapter (a non-LLM user prior). In the preservation table the same rows' replies and "
                  "base-reply loss are under the user's prior.", ""]
    lines += ["| hypernet | task | users | base | own | null | other | own - base | own - other | own - null |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, tasks in r["writing"].items():
        for task, row in tasks.items():
            lines.append(f"| {name} | {task} | {row['n_users']} | {row['base']:.3f} | {row['own']:.3f} "
                         f"| {row['null']:.3f} | {row['other']:.3f} | {ci_cell(row['own_minus_base'])} "
                         f"| {ci_cell(row['own_minus_other'])} | {ci_cell(row['own_minus_null'])} |")
    lines += ["", "## Sample replies (first prompts)", ""]
    names = list(r["preservation"])
    for i, prompt_reply in enumerate(b["replies"][:3]):
        lines.append(f"**Prompt {i + 1}.** base: {' '.join(prompt_reply.split()[:40])}…")
        for name in names:
            first_user = next(w for w in r["preservation"][name]["per_adapter"] if w != "null")
            rep = r["preservation"][name]["per_adapter"][first_user]["replies"]
            if i < len(rep):
                lines.append(f"- {name} ({first_user.split('/')[0]} user): {' '.join(rep[i].split()[:40])}…")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="training config: tasks, users, splits, profiles")
    ap.add_argument("--hypernet", action="append", required=True, metavar="NAME=ONNX",
                    help="an exported hypernet (its .json card beside it); repeat to compare")
    ap.add_argument("--prompts", type=Path, default=Path("configs/prompts/open_eval.txt"))
    ap.add_argument("--chat-users", type=int, default=4, help="held-out users whose adapters reply to the prompts")
    ap.add_argument("--writing-tasks", nargs="+", help="default: the config's long-form writing tasks")
    ap.add_argument("--target-tokens", type=int, default=128, help="tokens of each unseen text that are scored")
    ap.add_argument("--max-prompts", type=int, default=0, help="only the first N prompts (0 = all; smoke runs)")
    ap.add_argument("--max-users", type=int, default=0, help="only N held-out users for the writing part (0 = all)")
    ap.add_argument("--keep-replies", type=int, default=8, help="replies kept per adapter in the JSON")
    ap.add_argument("--scale", type=float, help="LoRA scale of the replies [default: each card's chat_scale]")
    ap.add_argument("--token-prior", type=Path, metavar="POPULATION",
                    help="a token population table (bench.token_prior): also read each hypernet with every user's "
                         "token prior, and the prior alone")
    ap.add_argument("--part", choices=("test", "val"), default="test",
                    help="val: validation users, to choose between candidates without test users")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return run_and_write("bench.chat", run, render, ap.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
