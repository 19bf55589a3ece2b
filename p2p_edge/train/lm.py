"""The frozen base LM side of training: load it, tokenize (prompt, target) pairs with its chat template, batch
them, and score targets per example (no hypernet here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from p2p_edge.train.config import Config

IGNORE = -100


# ---------------------------------------------------------------------------------------------- base model
def load_base(cfg: Config, dtype=torch.float32):
    """(model, tokenizer, base_meta). Default: the bundled SmolLM2 GGUF, dequantized by transformers,
    so training sees the weights llama.cpp runs. Any HF llama/qwen2 directory works too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..base import base_spec
    from ..paths import DEFAULT_BASE_ID, default_base_model

    path = Path(cfg.resolve(cfg.base.path)) if cfg.base.path else default_base_model()
    if path.is_file() and path.suffix == ".gguf":
        kw = dict(gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kw)
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        spec = base_spec(path)
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


def target_losses(model, ids, mask, labels):
    """(per-token SFT loss (n, T-1), target mask) of an HF causal LM (llama/qwen2: .model + .lm_head). The LM head
    runs on the target positions only: a ~100-token prompt has a handful of target tokens, and projecting every
    position onto the vocabulary was a third of a training step on CPU."""
    logits, tgt, valid = target_logits(model, ids, mask, labels)
    tok = torch.zeros(valid.shape, dtype=logits.dtype, device=logits.device)
    tok[valid] = nn.functional.cross_entropy(logits, tgt[valid], reduction="none")
    return tok, valid


def target_logits(model, ids, mask, labels):
    """(logits of the target positions (targets, vocab), next-token labels (n, T-1), target mask (n, T-1))."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    tgt = labels[:, 1:]
    valid = tgt != IGNORE
    return model.lm_head(hidden[:, :-1][valid]).float(), tgt, valid
