"""What a LoRA adapter is here, and how its names and q rows map onto llama.cpp's GGUF layout.

The file layout is the one llama.cpp's adapter loader expects (verified on SmolLM2): `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha` (float32), and per layer `blk.{i}.attn_q.weight.lora_a` (r, in) /
`.lora_b` (out, r), the same for `attn_v`, in f16 or f32. llama.cpp applies `scale * alpha / r * B @ A`. For
llama-arch bases the converter stored q's rows in llama.cpp's rope layout, so q's B must be stored with the same
row permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


TARGET_MODULES = ("q_proj", "v_proj")  # HF names
GGUF_NAMES = {"q_proj": "attn_q", "v_proj": "attn_v"}

# Architectures whose q (and k) rows llama.cpp's convert_hf_to_gguf reorders into its rope layout
# (LlamaModel.permute, `undo_permute = True`), so a LoRA B for q must get the same row permutation.
# llama is verified on SmolLM2 (tests/test_lora_parity.py); granite/granitemoe inherit LlamaModel's permutation.
# (Caveat: a llama GGUF converted from Mistral's own consolidated format is not permuted; we cannot tell
# from the file.)
ROPE_PERMUTED_ARCHS = frozenset({"llama", "granite", "granitemoe"})
# Architectures whose converter stores q rows unchanged (Qwen2Model.modify_tensors only renames).
ROPE_UNPERMUTED_ARCHS = frozenset({"qwen2", "qwen3"})

KEY_ALPHA = "adapter.lora.alpha"
KEY_ADAPTER_TYPE = "adapter.type"
KEY_GENERAL_TYPE = "general.type"
KEY_ARCH = "general.architecture"
KEY_BASE_SHA = "p2p.base.sha256"
KEY_BASE_NAME = "p2p.base.name"
KEY_BASE_LAYERS = "p2p.base.n_layers"
KEY_BASE_HEADS = "p2p.base.n_head"
KEY_RANK = "p2p.lora.rank"
META_PREFIX = "p2p.meta."
# aLoRA changes when llama.cpp applies the adapter; LoraWeights cannot represent that.


@dataclass
class LoraWeights:
    """A LoRA on TARGET_MODULES of every layer, in PEFT orientation and HF row order (q not rope-permuted)."""

    rank: int
    alpha: float
    a: dict[str, np.ndarray]  # module -> float32 (n_layers, r, in_features)    (PEFT lora_A)
    b: dict[str, np.ndarray]  # module -> float32 (n_layers, out_features, r)   (PEFT lora_B)

    def delta(self, module: str, layer: int) -> np.ndarray:
        """The weight update (out, in) that this LoRA adds to `module` of `layer`: alpha/r * B @ A."""
        return (self.alpha / self.rank) * (self.b[module][layer] @ self.a[module][layer])


# ---------------------------------------------------------------------------------------------- permutation

def permute_q_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of q's LoRA B (out, r) into llama.cpp's rope layout.

    Same as convert_hf_to_gguf's LlamaModel.permute: within each head, HF's split halves
    [x0..x(d/2-1) | y0..y(d/2-1)] become interleaved pairs [x0 y0 x1 y1 ...].
    """
    out = b.shape[0]
    _check_head_split(out, n_head)
    return b.reshape(n_head, 2, out // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def unpermute_q_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """Exact inverse of permute_q_rows (what transformers' GGUF loader does to attn_q)."""
    out = b.shape[0]
    _check_head_split(out, n_head)
    return b.reshape(n_head, out // n_head // 2, 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _check_head_split(out: int, n_head: int) -> None:
    if n_head < 1 or out % (2 * n_head):
        raise ValueError(f"{out} rows cannot be split into {n_head} heads of even size")


def q_is_permuted(arch: str) -> bool:
    """Whether llama.cpp stores q rows of `arch` in its rope layout; refuse to guess for unknown archs,
    because a wrong guess gives an adapter that loads and silently does the wrong thing."""
    if arch in ROPE_PERMUTED_ARCHS:
        return True
    if arch in ROPE_UNPERMUTED_ARCHS:
        return False
    raise ValueError(
        f"unknown whether llama.cpp permutes q rows for architecture '{arch}'; add it to "
        "ROPE_PERMUTED_ARCHS or ROPE_UNPERMUTED_ARCHS after a parity test"
    )

