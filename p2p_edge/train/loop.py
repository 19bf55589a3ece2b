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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, P2PError, TrainingDiverged
from ..fileio import atomic_path, atomic_write_text, ensure_private_dir
from .config import Config
from .model import HyperNet, HyperNetConfig, LoraInjector

IGNORE = -100


# ---------------------------------------------------------------------------------------------- base model
def load_base(cfg: Config, dtype=torch.float32):
    """(model, tokenizer, base_meta). Default: the bundled SmolLM2 GGUF, dequantized by transformers,
    so training sees the weights llama.cpp runs. Any HF llama/qwen2 directory works too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..base import read_base_spec
    from ..paths import DEFAULT_BASE_ID, cache_dir, default_base_model

    path = Path(cfg.resolve(cfg.base.path)) if cfg.base.path else default_base_model()
    if path.is_file() and path.suffix == ".gguf":
        kw = dict(gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kw)
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        spec = read_base_spec(path, cache_dir() / "sha256.json")
        meta = {"id": DEFAULT_BASE_ID if not cfg.base.path else path.name, **spec.to_dict()}
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
        meta = {"id": str(path), "name": path.name, "arch": model.config.model_type,
                "n_layers": model.config.num_hidden_layers, "sha256": ""}
    model.requires_grad_(False).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok, meta


def module_shapes(model) -> dict[str, tuple[int, int]]:
    attn = model.model.layers[0].self_attn
    return {m: (getattr(attn, m).in_features, getattr(attn, m).out_features) for m in ("q_proj", "v_proj")}


# --------------------------------------------------------------------------------------------- tokenizing
def encode_example(tok, prompt: str, target: str, max_len: int, max_target_tokens: int = 0,
                   system: str | None = None, finished: bool = True) -> tuple[list[int], list[int]]:
    """Chat-formatted prompt + target + end-of-turn; loss only on the target tokens.
    Over-long prompts are cut in the middle of the user text so the instruction at the end survives.
    max_target_tokens = 0: the target is cut at max_len // 3 tokens and always ends the turn (the short-answer
    recipes). > 0: cut there, and the end-of-turn token is trained only when the whole target fit (and `finished`):
    a long text cut for CPU must not teach the model to stop mid-text."""
    system_turn = [{"role": "system", "content": system}] if system else []

    def ids_for(p):
        return tok.apply_chat_template(system_turn + [{"role": "user", "content": p}], add_generation_prompt=True,
                                       tokenize=True)

    full = tok(target, add_special_tokens=False)["input_ids"]
    tgt = full[: max_target_tokens or max_len // 3]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    if not max_target_tokens or (len(tgt) == len(full) and finished):
        tgt = tgt + ([end] if isinstance(end, int) and end >= 0 else [tok.eos_token_id])
    p_ids = ids_for(prompt)
    budget = max_len - len(tgt)
    while len(p_ids) > budget and len(prompt) > 40:
        cut = max(1, int(len(prompt) * (1 - budget / len(p_ids))) + 8)
        head = prompt[: len(prompt) // 2 - cut // 2]
        tail = prompt[len(prompt) // 2 + (cut - cut // 2):]
        prompt = head + "…" + tail
        p_ids = ids_for(prompt)
    ids = (p_ids + tgt)[:max_len]
    labels = ([IGNORE] * len(p_ids) + tgt)[:max_len]
    return ids, labels


@dataclass
class Row:
    ids: list[int]
    labels: list[int]
    user: int   # row index into the profile-embedding matrix (preservation rows: drawn per batch)


def collate(rows: list[Row], pad_id: int):
    n = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.ids)] = 1
    return ids, mask, labels, torch.tensor([r.user for r in rows])


# ------------------------------------------------------------------------------------------------ MT-LoRA
class SharedLora(nn.Module):
    """The MT-LoRA control: ONE LoRA for every user (same shapes, init and injection as the hypernet's)."""

    def __init__(self, cfg: HyperNetConfig):
        super().__init__()
        self.cfg = cfg
        L, r = cfg.n_layers, cfg.rank
        self.a = nn.ParameterDict({m: nn.Parameter(torch.randn(L, r, s[0]) / math.sqrt(s[0])) for m, s in cfg.module_shapes.items()})
        self.b = nn.ParameterDict({m: nn.Parameter(torch.zeros(L, s[1], r)) for m, s in cfg.module_shapes.items()})

    def forward(self, e: torch.Tensor) -> dict[str, torch.Tensor]:
        n = e.shape[0]
        out = {}
        for m in self.cfg.modules:
            out[f"{m}.lora_a"] = self.a[m][None].expand(n, -1, -1, -1)
            out[f"{m}.lora_b"] = self.b[m][None].expand(n, -1, -1, -1)
        return out


def perturb_profiles(e: torch.Tensor, noise: float, dropout: float) -> torch.Tensor:
    """Training-time profile regularisers: Gaussian noise, and whole-profile dropout to the zero vector."""
    if noise > 0:
        e = e + noise * torch.randn_like(e)
    if dropout > 0:
        keep = (torch.rand(e.shape[0], 1, device=e.device) >= dropout).to(e.dtype)
        e = e * keep
    return e


def target_losses(model, ids, mask, labels):
    """(per-token SFT loss (n, T-1), target mask) of an HF causal LM (llama/qwen2: .model + .lm_head). The LM head
    runs on the target positions only: a ~100-token prompt has a handful of target tokens, and projecting every
    position onto the vocabulary was a third of a training step on CPU."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    tgt = labels[:, 1:]
    valid = tgt != IGNORE
    logits = model.lm_head(hidden[:, :-1][valid]).float()   # (targets, vocab)
    tok = torch.zeros(valid.shape, dtype=logits.dtype, device=logits.device)
    tok[valid] = nn.functional.cross_entropy(logits, tgt[valid], reduction="none")
    return tok, valid


def token_losses(model, injector: LoraInjector, gen: nn.Module, e: torch.Tensor, ids, mask, labels):
    """target_losses with the LoRAs the generator makes from profile vectors e."""
    with injector.use(gen(e)):
        return target_losses(model, ids, mask, labels)


def sft_loss(model, injector: LoraInjector, gen: nn.Module, emb: torch.Tensor, batch,
             noise: float = 0.0, dropout: float = 0.0, negatives: torch.Tensor | None = None,
             contrastive: float = 0.0, margin: float = 0.0, keep: torch.Tensor | None = None,
             keep_weight: float = 0.0, keep_kl: bool = False) -> torch.Tensor:
    """Mean target-token loss of the batch; with `negatives` (one other user per row) and contrastive > 0, plus
    the profile-contrast hinge (see TrainCfg.contrastive). `keep` (bool per row) marks assistant-preservation rows
    (the base model's own replies to open prompts): their token mean is a separate term, times keep_weight, so a
    batch's long replies do not drown its short task answers (see TrainCfg.preserve_weight). keep_kl: that term is
    the KL from the base model's next-token distribution to the adapted one on those rows (keep_kl_term) instead of
    the loss of the reply's tokens."""
    ids, mask, labels, users = batch
    e = perturb_profiles(emb[users], noise, dropout)
    has_keep = keep is not None and bool(keep.any())
    if has_keep and keep_kl:   # the preservation rows leave the batch: the KL term below reads them on their own
        kept = (e[keep], ids[keep], mask[keep], labels[keep])
        t = ~keep
        e, ids, mask, labels = e[t], ids[t], mask[t], labels[t]
        negatives = negatives[t] if negatives is not None else None
    tok, valid = token_losses(model, injector, gen, e, ids, mask, labels)
    keep_term = None
    if has_keep and keep_kl:
        keep_term = keep_kl_term(model, injector, gen, *kept)
    elif has_keep:
        keep_v = valid & keep[:, None]
        keep_term = (tok * keep_v).sum() / keep_v.sum().clamp(min=1)
        valid = valid & ~keep[:, None]   # the task mean and the contrast below are about the user's own task rows
    loss = (tok * valid).sum() / valid.sum().clamp(min=1)
    if keep_term is not None:
        loss = loss + keep_weight * keep_term
    if negatives is None or contrastive <= 0:
        return loss
    neg, _ = token_losses(model, injector, gen, emb[negatives], ids, mask, labels)
    n = valid.sum(1).clamp(min=1)
    gap = (neg * valid).sum(1) / n - (tok * valid).sum(1) / n   # > 0: own profile fits better
    return loss + contrastive * torch.relu(margin - gap).mean()


def keep_kl_term(model, injector: LoraInjector, gen: nn.Module, e: torch.Tensor, ids, mask, labels) -> torch.Tensor:
    """Mean over the target positions of KL(base || adapted) between next-token distributions. Fitting the base
    model's sampled reply token by token rewards making those exact tokens likelier than the base model itself does,
    and a hypernet can memorise a small prompt set that way (it did: bench/results/chat_candidate1_preserve_fit.md);
    the KL is 0 exactly at the base model's behaviour, so it has nothing to memorise beyond it."""
    valid = labels[:, 1:] != IGNORE
    if not bool(valid.any()):
        return torch.zeros((), device=ids.device)
    with torch.no_grad(), injector.use(None):
        hb = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp_base = torch.log_softmax(model.lm_head(hb[:, :-1][valid]).float(), -1)
    with injector.use(gen(e)):
        ha = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp = torch.log_softmax(model.lm_head(ha[:, :-1][valid]).float(), -1)
    return (logp_base.exp() * (logp_base - logp)).sum(-1).mean()


def negative_pool(train_uids: list[str], index: dict[str, int]) -> dict[int, list[int]]:
    """Row index of each train user -> row indices of the OTHER train users of its dataset (contrast negatives;
    an earlier cut "<dataset>/<user>@<n>" of the same user is not another user)."""
    def person(u):
        return u.split("@", 1)[0]

    by_ds: dict[str, list[str]] = {}
    for u in train_uids:
        by_ds.setdefault(u.split("/", 1)[0], []).append(u)
    return {index[u]: [index[v] for v in by_ds[u.split("/", 1)[0]] if person(v) != person(u)] for u in train_uids}


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


# -------------------------------------------------------------------------------------------------- train
def train(cfg: Config, model, tok, rows: list[Row], val_rows: list[Row], emb: np.ndarray, *,
          out_dir: Path, meta: dict, progress: bool = True, log=print,
          negatives: dict[int, list[int]] | None = None, keep_rows: list[Row] | None = None) -> nn.Module:
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
    mp = t.mixed_precision if t.mixed_precision != "fp16" or torch.cuda.is_available() else "no"
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    hcfg = HyperNetConfig(emb_dim=emb.shape[1], n_layers=len(model.model.layers), module_shapes=module_shapes(model),
                          **asdict(cfg.hypernet))
    gen = HyperNet(hcfg) if t.method == "p2p" else SharedLora(hcfg)
    contrast = t.contrastive > 0 and t.method == "p2p"   # a shared LoRA gives every profile the same loss
    if contrast and not negatives:
        raise ValueError("train.contrastive > 0 needs negatives (other train users' rows)")
    opt = torch.optim.AdamW(gen.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    out_dir = ensure_private_dir(out_dir)
    start, last, resumed_val_start = 0, out_dir / "last.pt", None
    good_file, good, lr_scale, rewinds_used = out_dir / "good.pt", None, 1.0, 0
    if not last.is_file() and t.init_from:  # warm start: weights only
        src = cfg.resolve(t.init_from)
        ck = torch.load(src, map_location="cpu", weights_only=False)
        misfit = None
        if ck.get("method") != t.method:
            misfit = f"it was trained with method {ck.get('method')!r}, this config is {t.method!r}"
        else:
            try:
                gen.load_state_dict(ck["state_dict"])   # strict: names and shapes must match
            except RuntimeError as e:
                misfit = str(e).splitlines()[0]
        if misfit:
            raise InputError(cfg.source or src, f"checkpoint {src} does not fit this config: {misfit}",
                             field="train.init_from")
        log(f"initialised from {src} (step {ck['step']})")
    if last.is_file():  # resume
        ck = torch.load(last, map_location="cpu", weights_only=False)
        gen.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start = ck["step"]
        rng.setstate(ck["rng"])
        resumed_val_start = ck.get("val_loss_start")   # None for checkpoints older than the guard: no check
        lr_scale, rewinds_used = ck.get("lr_scale", 1.0), ck.get("rewinds_used", 0)
        if good_file.is_file():   # last.pt may be past a blow-up the next validation has yet to see
            good = torch.load(good_file, map_location="cpu", weights_only=False)
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
        log(f"step 0: val loss {val_start:.4f} (no adapter yet)")
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
            acc.clip_grad_norm_(gen.parameters(), 1.0)
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
    from .data import save_splits
    from .dataset import load_corpus

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
                    "habits_weight": cfg.profiles.habits_weight},
        "training": {"config": cfg.to_dict(), "split": cfg.split, "n_train_users": len(train_uids),
                     "n_train_examples": len(rows), "tasks": list(corpus.tasks)},
    }
    emb = corpus.emb[cfg.profiles.variant]
    train(cfg, model, tok, rows, val_rows, emb, out_dir=out_dir, meta=meta, log=log,
          negatives=negative_pool(train_uids, index), keep_rows=keep_rows)
    return out_dir / "last.pt"


if __name__ == "__main__":   # `accelerate launch -m p2p_edge.train.loop CONFIG` / torchrun: the CLI's one-line errors
    try:
        run(Path(sys.argv[1]))
    except P2PError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
