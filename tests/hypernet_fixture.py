"""A randomly initialised hypernet of the real shape, exported to ONNX: a TEST FIXTURE, not a product model.

B's head is given small random weights (the real init is zero) so the generated LoRA is non-trivial.
"""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_edge.export.hypernet import export_onnx, write_card
from p2p_edge.base import BaseSpec
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig


def random_hypernet(base: BaseSpec, *, emb_dim: int = 384, hidden: int = 32, seed: int = 0,
                    b_scale: float = 0.02, shared_lora: bool = False) -> HypernetModule:
    torch.manual_seed(seed)
    cfg = HypernetModuleConfig(emb_dim=emb_dim, n_layers=base.n_layers,
                         module_shapes={m: s for m, s in base.module_shapes().items()}, hidden=hidden,
                         shared_lora=shared_lora)
    model = HypernetModule(cfg)
    for m in cfg.modules:
        torch.nn.init.normal_(model.head_b[m].weight, std=b_scale)
        if shared_lora:
            torch.nn.init.normal_(model.shared_b[m], std=b_scale)
    return model.eval()


def export_random_hypernet(base: BaseSpec, out: Path, *, encoder_name: str = "sentence-transformers/all-MiniLM-L6-v2",
                           fp16: bool = False, **kw) -> tuple[HypernetModule, Path]:
    model = random_hypernet(base, **kw)
    export_onnx(model, out, fp16=fp16)
    meta = {
        "id": "random-test-fixture",
        "base_model": {"name": base.name, "sha256": base.sha256, "arch": base.arch},
        "encoder": {"name": encoder_name, "dim": model.cfg.emb_dim},
        "profile": {"top_k": 2},
    }
    write_card(out, model, meta, "float16" if fp16 else "float32")
    return model, out
