"""End-to-end training of the P2P hypernet (or of the MT-LoRA control) with the frozen base LLM's SFT loss.

Runs on CPU, one GPU, or several GPUs through accelerate (`accelerate launch -m p2p_edge.train.loop CONFIG`):
accelerate handles device placement, DDP and mixed precision; this file holds only the P2P logic.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from p2p_edge.errors import InputError, P2PError, TrainingDiverged
from p2p_edge.fileio import atomic_path, atomic_write_text, ensure_private_dir
from p2p_edge.train.checkpoint import read_checkpoint
from p2p_edge.train.config import Config
from p2p_edge.train.lm import Row, collate, encode_example, load_base, module_shapes
from p2p_edge.train.losses import negative_pool, sft_loss
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, LoraInjector, SharedLora


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


# -------------------------------------------------------------------------------------------------- train
def autocast_precision(requested: str, *, cuda: bool | None = None, cpu_bf16: bool | None = None) -> str:
    """What autocast can run natively: fp16 only on a GPU; bf16 on a GPU or on a CPU with bf16 instructions
    (AVX512-BF16 / AMX). Elsewhere torch runs bf16 matrix products in a reference loop: on a 2-core AMD EPYC
    without AVX-512 the chat recipe's first step had not finished after 6 minutes (~18 s per step in float32)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda or requested == "no":
        return requested
    cpu_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported() if cpu_bf16 is None else cpu_bf16
    return "bf16" if requested == "bf16" and cpu_bf16 else "no"


def train(cfg: Config, model, tok, rows: list[Row], val_rows: list[Row], emb: np.ndarray, *,
          out_dir: Path, meta: dict, progress: bool = True, log=print,
          negatives: dict[int, list[int]] | None = None, keep_rows: list[Row] | None = None,
          lexical_dim: int = 0) -> nn.Module:
    """Train the generator (hypernet or shared LoRA); checkpoints every save_every steps; resumes from last.pt.
    A blow-up rewinds to good.pt (the last state that passed validation) at half the lr, train.rewinds times at most.
    `negatives` (user row -> other users' rows, see negative_pool) is needed when train.contrastive > 0.
    `keep_rows` (assistant preservation, see TrainCfg.preserve_fraction): each batch replaces that share of its rows
    by these, each paired with a random training user's profile, so every user's adapter keeps the base model's
    replies to open prompts."""
    from accelerate import Accelerator

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)
    mp = autocast_precision(t.mixed_precision)
    if mp != t.mixed_precision:
        log(f"train.mixed_precision {t.mixed_precision} is not native here: training in float32")
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    hcfg = HypernetModuleConfig(emb_dim=emb.shape[1], n_layers=len(model.model.layers), module_shapes=module_shapes(model),
                                lexical_dim=lexical_dim, **asdict(cfg.hypernet))
    gen = HypernetModule(hcfg) if t.method == "p2p" else SharedLora(hcfg)
    contrast = t.contrastive > 0 and t.method == "p2p"   # a shared LoRA gives every profile the same loss
    if contrast and not negatives:
        raise ValueError("train.contrastive > 0 needs negatives (other train users' rows)")
    if t.train_only:   # the rest keeps its initial (init_from) weights
        for name, p in gen.named_parameters():
            p.requires_grad_(name.startswith(tuple(t.train_only)))
        if not any(p.requires_grad for p in gen.parameters()):
            raise InputError(cfg.source, f"no generator parameter starts with {t.train_only}", field="train.train_only")
    trainable = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    out_dir = ensure_private_dir(out_dir)
    start, last, resumed_val_start = 0, out_dir / "last.pt", None
    branch_new = t.method == "p2p" and hcfg.profile_branch   # its standardisation is set below unless loaded
    good_file, good, lr_scale, rewinds_used = out_dir / "good.pt", None, 1.0, 0
    if not last.is_file() and t.init_from:  # warm start: weights only
        src = cfg.resolve(t.init_from)
        ck = read_checkpoint(src)
        misfit = None
        if ck.get("method") != t.method:
            misfit = f"it was trained with method {ck.get('method')!r}, this config is {t.method!r}"
        else:
            try:   # strict: names and shapes must match, except a profile branch the source was trained without
                missing, unexpected = gen.load_state_dict(ck["state_dict"], strict=False)
                foreign = [k for k in missing if not (branch_new and k.startswith(HypernetModule.BRANCH_KEYS))]
                if foreign or unexpected:
                    misfit = f"missing keys {foreign[:3]}, unexpected keys {unexpected[:3]}"
                branch_new = branch_new and bool(missing)
            except RuntimeError as e:
                misfit = str(e).splitlines()[0]
        if misfit:
            raise InputError(cfg.source or src, f"checkpoint {src} does not fit this config: {misfit}",
                             field="train.init_from")
        log(f"initialised from {src} (step {ck['step']})")
    if branch_new and not last.is_file():   # the training users' profiles: the rows the task examples come from
        train_users = sorted({r.user for r in rows})
        gen.set_profile_stats(torch.from_numpy(np.asarray(emb[train_users], np.float32)))
        log(f"profile branch standardised over {len(train_users)} training users' profiles")
    if last.is_file():  # resume
        ck = read_checkpoint(last)
        gen.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start = ck["step"]
        rng.setstate(ck["rng"])
        resumed_val_start = ck.get("val_loss_start")   # None for checkpoints older than the guard: no check
        lr_scale, rewinds_used = ck.get("lr_scale", 1.0), ck.get("rewinds_used", 0)
        if good_file.is_file():   # last.pt may be past a blow-up the next validation has yet to see
            good = read_checkpoint(good_file)
            good = good if good["step"] <= start else None
        log(f"resumed from {last} at step {start}" + (f" (lr x{lr_scale:g} after {rewinds_used} rewinds)"
                                                      if rewinds_used else ""))
    model = model.to(acc.device)
    gen, opt = acc.prepare(gen, opt)
    injector = LoraInjector(model, hcfg.modules, hcfg.alpha, hcfg.rank)
    emb_t = torch.from_numpy(emb).to(acc.device)
    pad = tok.pad_token_id
    world, rank = acc.num_processes, acc.process_index
    logf = open(out_dir / "train_log.jsonl", "a")

    def val_loss() -> float:
        gen.eval()
        losses = []
        with torch.no_grad(), acc.autocast():
            for i in range(0, len(val_rows), t.batch_size):
                b = [x.to(acc.device) for x in collate(val_rows[i : i + t.batch_size], pad)]
                losses.append(float(sft_loss(model, injector, gen, emb_t, b)))
        gen.train()
        v = float(np.mean(losses)) if losses else float("nan")
        return float(acc.reduce(torch.tensor(v, device=acc.device), "mean"))   # ranks must agree on a rewind

    def state(step: int) -> dict:
        return {"config": hcfg.to_dict(), "state_dict": acc.unwrap_model(gen).state_dict(), "optimizer": opt.state_dict(),
                "step": step, "rng": rng.getstate(), "method": t.method, "meta": meta, "val_loss_start": val_start,
                "lr_scale": lr_scale, "rewinds_used": rewinds_used}

    def save(step: int, name: str = "last.pt", st: dict | None = None):
        if not acc.is_main_process:
            return
        with atomic_path(out_dir / name) as tmp:
            torch.save(st or state(step), tmp)

    def keep_good(step: int, write: bool = True) -> dict:
        """A copy (in host memory) of the state now, which passed validation: where a later blow-up rewinds to."""
        from accelerate.utils import send_to_device

        st = copy.deepcopy(send_to_device(state(step), "cpu"))
        if write:
            save(step, good_file.name, st)
        return st

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   disable=not (progress and acc.is_main_process))
    # the divergence guard's reference: the validation loss before any step (kept in checkpoints for resuming)
    val_start = resumed_val_start
    if start == 0 and t.diverge_ratio and val_rows:
        val_start = val_loss()
        log(f"step 0: val loss {val_start:.4f} ({'the initial weights' if t.init_from else 'no adapter yet'})")
        if acc.is_main_process:
            logf.write(json.dumps({"step": 0, "val_loss": val_start}) + "\n")

    def diverged(step: int, what: str, value: float, limit: float = math.inf) -> int | None:
        """None when fine; else the step to go on from after rewinding to `good` at half the lr; raises when
        no rewind is left."""
        nonlocal lr_scale, rewinds_used, ema
        if math.isfinite(value) and value <= limit:
            return None
        why = (f"{what} is {value}" if not math.isfinite(value)
               else f"{what} {value:.4g} > {t.diverge_ratio:g} x {val_start:.4g} (its value before training)")
        if rewinds_used >= t.rewinds:
            logf.close()
            save(good["step"], st=good)   # last.pt may hold a state saved after the blow-up, before it was seen
            raise TrainingDiverged(
                f"training diverged at step {step}: {why}" + (f" ({rewinds_used} rewinds at half the lr each did "
                f"not help)" if rewinds_used else "") + f"; {last} is back at step {good['step']}, the last state "
                f"that passed validation. Lower train.lr (now {t.lr:g}) or raise train.warmup (now {t.warmup}), "
                f"delete last.pt and good.pt there and rerun")
        rewinds_used, lr_scale, ema = rewinds_used + 1, lr_scale * 0.5, None
        acc.unwrap_model(gen).load_state_dict(good["state_dict"])
        opt.load_state_dict(copy.deepcopy(good["optimizer"]))   # the snapshot must survive for a next rewind
        rng.setstate(good["rng"])
        save(good["step"])   # a resume goes on from here, at the lowered lr
        log(f"step {step}: {why}; rewinding to step {good['step']} at lr x{lr_scale:g} "
            f"(rewind {rewinds_used} of {t.rewinds})")
        if acc.is_main_process:
            logf.write(json.dumps({"step": step, "rewind_to": good["step"], "lr_scale": lr_scale, "why": why}) + "\n")
            logf.flush()
        bar.update(task, completed=good["step"])
        return good["step"]

    n_keep = round(t.batch_size * t.preserve_fraction) if keep_rows else 0
    if t.preserve_fraction > 0 and not keep_rows:
        raise ValueError("train.preserve_fraction > 0 needs keep_rows (the base model's replies to open prompts)")
    train_users = sorted({r.user for r in rows})
    good = good or keep_good(start, write=start == 0)   # step 0, or the resume point when there is no good.pt
    gen.train()
    t0, ema, step = time.time(), None, start
    with bar:
        task = bar.add_task(t.method, total=t.steps, completed=start, loss=float("nan"))
        while step < t.steps:
            # each process draws its own slice of one global batch of examples from many users
            global_rows = [rows[rng.randrange(len(rows))] for _ in range(t.batch_size * world)]
            keep = None
            if n_keep:
                for i in range(0, len(global_rows), t.batch_size):   # the same share in each process's slice
                    for j in range(i, i + n_keep):
                        r = keep_rows[rng.randrange(len(keep_rows))]
                        global_rows[j] = Row(r.ids, r.labels, train_users[rng.randrange(len(train_users))])
                flags = [j % t.batch_size < n_keep for j in range(len(global_rows))]
                keep = torch.tensor(flags[rank::world], device=acc.device)
            batch_rows = global_rows[rank::world]
            batch = [x.to(acc.device) for x in collate(batch_rows, pad)]
            negs = None
            if contrast:
                pools = [negatives[r.user] for r in global_rows]
                negs = torch.tensor([p[rng.randrange(len(p))] for p in pools][rank::world], device=acc.device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, t) * lr_scale
            with acc.autocast():
                loss = sft_loss(model, injector, gen, emb_t, batch, t.profile_noise, t.profile_dropout,
                                negs, t.contrastive, t.contrastive_margin, keep, t.preserve_weight,
                                t.preserve_loss == "kl")
            acc.backward(loss)
            acc.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = float(acc.reduce(loss.detach(), "mean"))   # every rank sees the same value, so all rewind together
            if (back := diverged(step + 1, "train loss", lv)) is not None:   # nan/inf: no later step can recover
                step = back
                continue
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            bar.update(task, advance=1, loss=ema)
            rec = {"step": step + 1, "loss": lv, "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 2)}
            if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
                rec["val_loss"] = val_loss()
                log(f"step {step + 1}: train loss (ema) {ema:.4f}, val loss {rec['val_loss']:.4f}")
            if acc.is_main_process:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            # before saving, so a diverged state never overwrites last.pt
            if "val_loss" in rec and t.diverge_ratio and val_start is not None:
                if (back := diverged(step + 1, "val loss", rec["val_loss"], t.diverge_ratio * val_start)) is not None:
                    step = back
                    continue
            if "val_loss" in rec:   # passed the guard (or there is none: then no nan loss up to here)
                good = keep_good(step + 1)
            if (step + 1) % t.save_every == 0 or step + 1 == t.steps:
                save(step + 1)
            step += 1
    logf.close()
    injector.remove()
    return acc.unwrap_model(gen)


def held_out_items(corpus, train_uids: list[str]) -> set[tuple[str, str]]:
    """(task, item id) of every query of a non-train user, for tasks whose item ids are global (a co-authored
    article is in several authors' histories: it must not be a training target when it is a held-out query)."""
    train = set(train_uids)
    return {(ex.task, str(ex.item.get("id"))) for u in corpus.uids if u not in train
            for ex in corpus.examples[u] if corpus.tasks[ex.task].global_item_ids}


def build_rows(corpus, uids: list[str], tok, max_len: int, index: dict[str, int], per_user: int = 0,
               exclude: set[tuple[str, str]] = frozenset(), max_target_tokens: int = 0) -> list[Row]:
    rows = []
    for u in uids:
        exs = [ex for ex in corpus.examples[u] if (ex.task, str(ex.item.get("id"))) not in exclude]
        if per_user:
            exs = exs[-per_user:]
        for ex in exs:
            ids, labels = encode_example(tok, ex.prompt, ex.target, max_len, max_target_tokens)
            rows.append(Row(ids, labels, index[u]))
    return rows


def preserve_rows(cfg: Config, tok) -> list[Row]:
    """Assistant-preservation rows from train.preserve_replies (python -m p2p_edge.train.preserve): the base model's
    own replies to open prompts, as chat turns under the same system prompt the chat uses. user = -1 (drawn per batch)."""
    from .preserve import load_replies

    if not cfg.train.preserve_replies:
        return []
    out = []
    for r in load_replies(cfg.resolve(cfg.train.preserve_replies)):
        ids, labels = encode_example(tok, r["prompt"], r["reply"], cfg.train.max_len, cfg.train.max_target_tokens,
                                     system=r["system"], finished=r["finished"])
        out.append(Row(ids, labels, -1))
    return out


def run(config_path: Path, *, log=print) -> Path:
    """`p2p-edge train --config CONFIG`: data -> profiles -> train -> checkpoint (+ splits, config copy)."""
    from ..encoder import Encoder
    from .config import load_config
    from p2p_edge.eval.splits import save_splits
    from .dataset import load_corpus, profile_inputs

    cfg = load_config(config_path)
    out_dir = ensure_private_dir(cfg.resolve(cfg.out_dir))
    atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    encoder = Encoder()
    log("building per-user profiles and examples…")
    corpus = load_corpus(cfg, encoder, max_users=cfg.profiles.max_users)
    save_splits(out_dir / "splits.json", corpus.splits)
    index = corpus.index()
    model, tok, base_meta = load_base(cfg)
    train_uids, val_uids = corpus.part(cfg.split, "train"), corpus.part(cfg.split, "val")
    rows = build_rows(corpus, train_uids, tok, cfg.train.max_len, index, cfg.train.max_examples_per_user,
                      exclude=held_out_items(corpus, train_uids), max_target_tokens=cfg.train.max_target_tokens)
    val_rows = build_rows(corpus, val_uids, tok, cfg.train.max_len, index,
                          max_target_tokens=cfg.train.max_target_tokens)
    keep_rows = preserve_rows(cfg, tok)
    random.Random(0).shuffle(val_rows)
    val_rows = val_rows[: cfg.train.val_examples]
    log(f"{len(train_uids)} train users, {len(rows)} examples; {len(val_uids)} val users ({len(val_rows)} val examples)"
        + (f"; {len(keep_rows)} preservation replies" if keep_rows else ""))
    meta = {
        "base_model": base_meta,
        "encoder": {"name": encoder.name, "dim": encoder.dim},
        "profile": {"top_k": cfg.profiles.top_k, "variant": cfg.profiles.variant,
                    "habits_weight": cfg.profiles.habits_weight, "lexical": cfg.profiles.lexical},
        "training": {"config": cfg.to_dict(), "split": cfg.split, "n_train_users": len(train_uids),
                     "n_train_examples": len(rows), "tasks": list(corpus.tasks)},
    }
    emb, lexical_dim = profile_inputs(cfg, corpus, tok, model)
    train(cfg, model, tok, rows, val_rows, emb, out_dir=out_dir, meta=meta, log=log,
          negatives=negative_pool(train_uids, index), keep_rows=keep_rows, lexical_dim=lexical_dim)
    return out_dir / "last.pt"


if __name__ == "__main__":   # `accelerate launch -m p2p_edge.train.loop CONFIG` / torchrun: the CLI's one-line errors
    try:
        run(Path(sys.argv[1]))
    except P2PError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
