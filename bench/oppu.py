"""OPPU baseline (One PEFT Per User, Tan et al. 2024): a LoRA fine-tuned with peft on each user's own history.

For the benchmark of issue #5. Every user gets the same recipe as the hypernet's adapters (rank 8, alpha 16,
q_proj/v_proj of every layer), trained with the same SFT loss (prompt tokens masked, `encode_example`) on the
user's PROFILE items rendered as task examples (never the held-out queries), then exported with the client's
own `write_adapter`, so OPPU's adapter runs in llama.cpp exactly like a P2P adapter. What OPPU costs per user is
the time from the history examples to a usable adapter file (`OppuTrainer.adapter` times each stage).

One `OppuTrainer` holds ONE frozen base wrapped ONCE with peft; `fit` re-initialises the LoRA for every user
(peft's default init, seeded), so training many users neither re-wraps the model nor leaks state between users.

    from bench.oppu import OppuCfg, OppuTrainer, user_examples
    trainer = OppuTrainer.load(OppuCfg())                  # the bundled SmolLM2 base (or OppuTrainer(model, tok))
    path, ms = trainer.adapter(user_examples(corpus, uid), out / "oppu.gguf", base_spec)
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from p2p_edge.gguf import LoraWeights, write_adapter
from p2p_edge.train.config import dataset_name
from p2p_edge.train.lm import Row, collate, encode_example, target_losses
from p2p_edge.train.model import find_decoder_layers

ADAPTER_NAME = "default"


@dataclass
class OppuCfg:
    rank: int = 8                  # same rank / alpha / modules as the hypernet's adapters
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 20                # fixed number of AdamW steps per user
    batch_size: int = 4
    # lr: B starts at zero and a user gets only `steps` updates (Adam moves each weight by about lr per step), so
    # the rate must be high for LoRA-SFT standards, yet a typical user has few examples (Amazon: median 4 profile
    # items = 8 examples, so 20 steps of 4 are 10 epochs). Checked on SmolLM2 with the user's held-out query loss
    # (train users, not test users): on the two largest histories (46/64 examples) it falls from 3e-4 to 3e-3
    # and rises again at 1e-2 (3e-3 beats 1e-3 by 0.25 / 0.01 nats), but on three typical users (8/8/14
    # examples) 3e-3 overfits badly (query loss 7.50/6.61/4.04 vs base 4.86/5.56/3.92) while 1e-3 gives
    # 5.30/4.63/3.20. So 1e-3, constant, no warm-up (the zero B already makes the first steps gentle).
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0     # as in the hypernet's training loop
    max_len: int = 128
    max_items: int = 32            # the user's most recent profile items used as training data
    seed: int = 0


# ------------------------------------------------------------------------------------------------------ data
def user_examples(corpus, uid: str, tasks: Iterable | None = None, *, max_items: int = OppuCfg.max_items
                  ) -> list[tuple[str, str]]:
    """OPPU's per-user SFT data: the user's PROFILE items (never a held-out query) as (prompt, target) pairs.

    `tasks`: task names (looked up in `corpus.tasks`, whose classification labels are resolved) or Task objects;
    None = the corpus tasks of the user's dataset. Every item gives one pair per task it qualifies for; the
    `max_items` most recent items that give at least one pair are used (0 = all), oldest first.
    An item that is also one of the user's queries (same dict, or same `id`) is never used.
    """
    task_list = _user_tasks(corpus, uid, tasks)
    queries = [ex.item for ex in corpus.examples.get(uid, [])]
    query_ids = {str(it["id"]) for it in queries if it.get("id") is not None}
    per_item = []
    for item in corpus.profiles[uid]["items"]:
        if item in queries or (item.get("id") is not None and str(item["id"]) in query_ids):
            continue
        pairs = [(t.render(item), t.target(item)) for t in task_list if t.qualifies(item)]
        if pairs:
            per_item.append(pairs)
    if max_items > 0:
        per_item = per_item[-max_items:]
    return [p for pairs in per_item for p in pairs]


def _user_tasks(corpus, uid: str, tasks: Iterable | None) -> list:
    if tasks is None:
        ds = uid.split("/", 1)[0]
        return [t for t in corpus.tasks.values() if dataset_name(Path(t.dataset)) == ds]
    return [corpus.tasks[t] if isinstance(t, str) else t for t in tasks]


def _batches(n: int, batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """`steps` batches of min(batch_size, n) distinct example indices, from consecutive shuffled passes."""
    k, order, out = min(batch_size, n), [], []
    for _ in range(steps):
        if len(order) < k:  # the rest of this pass first, then a new pass with those few moved to its end
            fresh, rest = rng.sample(range(n), n), set(order)
            order = order + [i for i in fresh if i not in rest] + [i for i in fresh if i in rest]
        out.append(order[:k])
        order = order[k:]
    return out


# --------------------------------------------------------------------------------------------------- trainer
class OppuTrainer:
    """One frozen HF causal LM wrapped once with peft; `fit` trains a fresh LoRA per user.

    The model is wrapped IN PLACE (peft replaces its q/v Linear layers); `unload()` gives the plain model back.
    """

    def __init__(self, model: nn.Module, tok, cfg: OppuCfg | None = None):
        from peft import LoraConfig, get_peft_model

        self.cfg = cfg or OppuCfg()
        self.tok = tok
        model.requires_grad_(False).eval()
        lcfg = LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, target_modules=list(self.cfg.target_modules),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", init_lora_weights=True)
        self.model = get_peft_model(model, lcfg, adapter_name=ADAPTER_NAME)
        self.model.eval()  # no dropout anywhere; gradients still flow to the LoRA weights
        self.layers = find_decoder_layers(self.model)
        # (module, layer) -> peft lora.Linear, in a fixed order (init draws from one generator in this order)
        self.lora_layers = {(m, i): getattr(layer.self_attn, m) for i, layer in enumerate(self.layers)
                            for m in self.cfg.target_modules}
        for (m, i), lin in self.lora_layers.items():
            if ADAPTER_NAME not in getattr(lin, "lora_A", {}):
                raise ValueError(f"peft did not wrap layer {i} {m}")
        self.params = [p for lin in self.lora_layers.values()
                       for p in (lin.lora_A[ADAPTER_NAME].weight, lin.lora_B[ADAPTER_NAME].weight)]
        self.last_losses: list[float] = []
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(cls, cfg: OppuCfg | None = None, train_config=None) -> "OppuTrainer":
        """A trainer on `load_base(train_config)`: by default the bundled SmolLM2 GGUF, dequantized (what
        llama.cpp runs). The base model's meta (id, sha256, ...) is in `.meta`."""
        from p2p_edge.train.config import Config
        from p2p_edge.train.lm import load_base

        model, tok, meta = load_base(train_config or Config())
        trainer = cls(model, tok, cfg)
        trainer.meta = meta
        return trainer

    # -- per user -------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """peft's default LoRA init (A: kaiming-uniform(a=sqrt 5), B: 0), from a generator seeded with `seed`."""
        g = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        with torch.no_grad():
            for lin in self.lora_layers.values():
                nn.init.kaiming_uniform_(lin.lora_A[ADAPTER_NAME].weight, a=math.sqrt(5), generator=g)
                nn.init.zeros_(lin.lora_B[ADAPTER_NAME].weight)
        for p in self.params:
            p.requires_grad_(True)
            p.grad = None

    def encode(self, examples: Sequence[tuple[str, str]]) -> list[Row]:
        return [Row(*encode_example(self.tok, p, t, self.cfg.max_len), user=0) for p, t in examples]

    def _loss(self, rows: list[Row]) -> torch.Tensor:
        """Mean target-token loss, computed as the hypernet's training computes it (LM head on targets only)."""
        ids, mask, labels, _ = collate(rows, self.tok.pad_token_id)
        tok, valid = target_losses(self.model.get_base_model(), ids, mask, labels)   # peft wraps q/v in place
        return tok.sum() / valid.sum().clamp(min=1)

    def fit(self, examples: Sequence[tuple[str, str]], seed: int | None = None) -> LoraWeights:
        """Train a fresh LoRA on one user's (prompt, target) examples; return it (float32, PEFT orientation,
        HF row order). The trained adapter also stays active in `self.model` until the next fit/reset."""
        if not examples:
            raise ValueError("OPPU needs at least one (prompt, target) example for the user")
        cfg = self.cfg
        seed = cfg.seed if seed is None else seed
        t0 = time.perf_counter()
        rows = self.encode(examples)
        self.reset(seed)
        opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fresh state per user
        losses = []
        for batch in _batches(len(rows), cfg.batch_size, cfg.steps, random.Random(seed)):
            loss = self._loss([rows[i] for i in batch])
            loss.backward()
            if cfg.max_grad_norm:
                nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        t1 = time.perf_counter()
        lora = self.extract()
        t2 = time.perf_counter()
        self.last_losses = losses
        self.last_timings = {"train_ms": (t1 - t0) * 1e3, "extract_ms": (t2 - t1) * 1e3}
        return lora

    def extract(self) -> LoraWeights:
        """The current adapter as LoraWeights: a[m] (n_layers, r, in), b[m] (n_layers, out, r), float32."""
        n = len(self.layers)
        a, b = {}, {}
        for m in self.cfg.target_modules:
            a[m] = np.stack([self.lora_layers[m, i].lora_A[ADAPTER_NAME].weight.detach().float().numpy()
                             for i in range(n)]).astype(np.float32, copy=True)
            b[m] = np.stack([self.lora_layers[m, i].lora_B[ADAPTER_NAME].weight.detach().float().numpy()
                             for i in range(n)]).astype(np.float32, copy=True)
        scaling = self.lora_layers[self.cfg.target_modules[0], 0].scaling[ADAPTER_NAME]
        if not math.isclose(scaling, self.cfg.alpha / self.cfg.rank):  # e.g. rslora: LoraWeights could not say it
            raise ValueError(f"peft scales the LoRA by {scaling}, not alpha/r = {self.cfg.alpha / self.cfg.rank}")
        return LoraWeights(rank=self.cfg.rank, alpha=float(self.cfg.alpha), a=a, b=b)

    def adapter(self, examples: Sequence[tuple[str, str]], out_path, base_spec, dtype: str = "f16",
                seed: int | None = None) -> tuple[Path, dict[str, float]]:
        """Fit one user and write the llama.cpp GGUF adapter (write_adapter permutes q's rows itself).

        Returns the path and timings in ms: train_ms (tokenizing, init and the AdamW steps), extract_ms,
        write_ms, and total_ms = from the history examples to a usable adapter file, writing included."""
        t0 = time.perf_counter()
        lora = self.fit(examples, seed)
        t1 = time.perf_counter()
        meta = {"method": "oppu", "steps": str(self.cfg.steps), "lr": str(self.cfg.lr),
                "n_examples": str(len(examples))}
        path = write_adapter(out_path, lora, base_spec, dtype=dtype, metadata=meta)
        t2 = time.perf_counter()
        timings = {**self.last_timings, "write_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
        self.last_timings = timings
        return path, timings

    def unload(self) -> nn.Module:
        """The plain base model without the LoRA layers (the trainer is unusable afterwards)."""
        return self.model.unload()
