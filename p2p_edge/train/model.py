"""The P2P hypernetwork (torch) and the functional LoRA injection into a frozen HF causal LM.

HypernetModule: [profile embedding e ; module-type emb(m) ; layer-depth emb(l)] -> MLP trunk -> per-module heads
-> flattened (A, B) for every (module, layer), all pairs in one batched forward pass.
B's head is zero-initialised so the generated delta W = alpha/r * B A is exactly 0 at step 0
(as in Text-to-LoRA / P2P), and training starts from the base model's behaviour.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .config import HypernetSettings


@dataclass(kw_only=True)
class HypernetModuleConfig(HypernetSettings):
    """The [hypernet] knobs of a training config plus the shapes they are applied to."""

    emb_dim: int
    n_layers: int
    module_shapes: dict[str, tuple[int, int]]  # module -> (in_features, out_features)
    modules: list[str] = field(default_factory=list)
    # the last lexical_dim dims of the profile vector are a lexical input (p2p_edge/lexical.py) that only the
    # profile branch reads: the trunk keeps its shapes, so a hypernet trained without one still loads
    lexical_dim: int = 0

    def __post_init__(self):
        if self.lexical_dim and not self.profile_branch:
            raise ValueError("a lexical input (lexical_dim > 0) is read by the profile branch: set profile_branch")
        self.module_shapes = {m: tuple(s) for m, s in self.module_shapes.items()}
        if not self.modules:
            self.modules = list(self.module_shapes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["module_shapes"] = {m: list(s) for m, s in self.module_shapes.items()}
        return d


class HypernetModule(nn.Module):
    def __init__(self, cfg: HypernetModuleConfig):
        super().__init__()
        self.cfg = cfg
        n_mod, L = len(cfg.modules), cfg.n_layers
        self.type_emb = nn.Embedding(n_mod, cfg.type_emb_dim)
        self.depth_emb = nn.Embedding(L, cfg.depth_emb_dim)
        d_in = cfg.emb_dim - cfg.lexical_dim + cfg.type_emb_dim + cfg.depth_emb_dim
        self.trunk = nn.Sequential(
            nn.LayerNorm(d_in),
            nn.Linear(d_in, cfg.hidden),
            nn.SiLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.SiLU(),
            nn.LayerNorm(cfg.hidden),
        )
        r = cfg.rank
        self.head_a = nn.ModuleDict({m: nn.Linear(cfg.hidden, r * cfg.module_shapes[m][0]) for m in cfg.modules})
        self.head_b = nn.ModuleDict({m: nn.Linear(cfg.hidden, cfg.module_shapes[m][1] * r) for m in cfg.modules})
        for m in cfg.modules:
            self.head_a[m].weight.data.mul_(cfg.a_init_scale)
            nn.init.zeros_(self.head_b[m].weight)
            nn.init.zeros_(self.head_b[m].bias)
        if cfg.shared_lora:  # zero B keeps delta W = 0 at step 0; A as in MT-LoRA (SharedLora)
            self.shared_a = nn.ParameterDict(
                {m: nn.Parameter(torch.randn(L, r, cfg.module_shapes[m][0]) / cfg.module_shapes[m][0] ** 0.5)
                 for m in cfg.modules})
            self.shared_b = nn.ParameterDict(
                {m: nn.Parameter(torch.zeros(L, cfg.module_shapes[m][1], r)) for m in cfg.modules})
        if cfg.profile_branch:
            self.register_buffer("profile_mean", torch.zeros(cfg.emb_dim))
            self.register_buffer("profile_std", torch.ones(cfg.emb_dim))
            self.profile_in = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
            nn.init.zeros_(self.profile_in[2].weight)
            nn.init.zeros_(self.profile_in[2].bias)
        # Fixed index grids so one forward covers every (module, layer) pair.
        self.register_buffer("layer_idx", torch.arange(L), persistent=False)

    BRANCH_KEYS = ("profile_mean", "profile_std", "profile_in.")

    def set_profile_stats(self, profiles: torch.Tensor) -> None:
        """The profile branch's standardisation from the training users' profile vectors (n_users, emb_dim)."""
        self.profile_mean.copy_(profiles.mean(0))
        self.profile_std.copy_(profiles.std(0).clamp(min=1e-6))

    def forward(self, e: torch.Tensor) -> dict[str, torch.Tensor]:
        """e: (batch, emb_dim) -> {"{m}.lora_a": (batch, L, r, in), "{m}.lora_b": (batch, L, out, r)}."""
        cfg, r = self.cfg, self.cfg.rank
        bsz, L = e.shape[0], cfg.n_layers
        depth = self.depth_emb(self.layer_idx)  # (L, d)
        user = self.profile_in((e - self.profile_mean) / self.profile_std)[:, None, :] if cfg.profile_branch else None
        e = e[:, : cfg.emb_dim - cfg.lexical_dim]   # the trunk's part: the sentence embedding
        out = {}
        for mi, m in enumerate(cfg.modules):
            t = self.type_emb.weight[mi].expand(L, -1)
            cond = torch.cat([t, depth], dim=-1)  # (L, dt+dd)
            x = torch.cat([e[:, None, :].expand(bsz, L, -1), cond[None].expand(bsz, L, -1)], dim=-1)
            h = self.trunk(x)  # (batch, L, hidden)
            if user is not None:
                h = h + user
            n_in, n_out = cfg.module_shapes[m]
            a = self.head_a[m](h).view(bsz, L, r, n_in)
            b = self.head_b[m](h).view(bsz, L, n_out, r)
            if cfg.shared_lora:
                a, b = a + self.shared_a[m], b + self.shared_b[m]
            out[f"{m}.lora_a"], out[f"{m}.lora_b"] = a, b
        return out


class LoraInjector:
    """Adds a per-sample LoRA delta to target Linear layers of a frozen HF model via forward hooks.

    Gradients flow into whatever produced the A/B tensors (the hypernet); the base weights stay frozen.
    Works for any HF llama/qwen2-style model whose layers live at model.model.layers[i].self_attn.{q,v}_proj.
    """

    def __init__(self, model: nn.Module, modules: list[str], alpha: float, rank: int):
        self.scale = alpha / rank
        self.modules = modules
        self.layers = find_decoder_layers(model)
        self._current: dict[str, torch.Tensor] | None = None
        self._handles = []
        for li, layer in enumerate(self.layers):
            for m in modules:
                lin = getattr(layer.self_attn, m)
                self._handles.append(lin.register_forward_hook(self._make_hook(m, li)))

    def _make_hook(self, m: str, li: int):
        def hook(mod, inputs, output):
            if self._current is None:
                return output
            x = inputs[0]  # (batch, T, in)
            a = self._current[f"{m}.lora_a"][:, li]  # (batch, r, in)
            b = self._current[f"{m}.lora_b"][:, li]  # (batch, out, r)
            if a.shape[0] == 1 and x.shape[0] > 1:  # one adapter for the whole batch
                a, b = a.expand(x.shape[0], -1, -1), b.expand(x.shape[0], -1, -1)
            z = torch.einsum("bti,bri->btr", x, a.to(x.dtype))
            return output + self.scale * torch.einsum("btr,bor->bto", z, b.to(x.dtype))

        return hook

    @contextmanager
    def use(self, lora: dict[str, torch.Tensor] | None):
        prev, self._current = self._current, lora
        try:
            yield
        finally:
            self._current = prev

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def find_decoder_layers(model: nn.Module):
    for path in ("model.layers", "model.model.layers", "base_model.model.model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise ValueError(f"cannot find decoder layers in {type(model).__name__}")


# ------------------------------------------------------------------------------------------------ MT-LoRA
class SharedLora(nn.Module):
    """The MT-LoRA control: ONE LoRA for every user (same shapes, init and injection as the hypernet's)."""

    def __init__(self, cfg: HypernetModuleConfig):
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
