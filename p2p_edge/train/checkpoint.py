"""The one decoder of training checkpoints (last.pt, good.pt): what training writes and everything else reads.

A checkpoint is a dict: `method` ("p2p" or "mt_lora"), `config` (the generator's HypernetModuleConfig as a dict),
`state_dict`, `step`, `meta` (base model, encoder, profile settings, training tasks: what the exported card states)
and, for resuming, `optimizer`, `rng`, `val_loss_start`, `lr_scale`, `rewinds_used`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from p2p_edge.errors import InputError
from p2p_edge.gguf import LoraWeights
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, SharedLora


def read_checkpoint(path: Path, *, method: str | None = None) -> dict:
    """Load a checkpoint on the CPU; a missing, unreadable or foreign file (or, with `method`, one trained with
    another method) is one InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise InputError(path, f"not a readable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ck, dict) or not {"config", "state_dict"} <= set(ck):
        raise InputError(path, "not a p2p-edge training checkpoint (no config / state_dict)")
    if method is not None and ck.get("method", "p2p") != method:
        raise InputError(path, f"a {method} checkpoint is needed, this one was trained with {ck.get('method')!r}",
                         field="method")
    return ck


def hypernet_from(ck: dict) -> HypernetModule:
    """The hypernet of a p2p checkpoint, in eval mode."""
    model = HypernetModule(HypernetModuleConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval()


def shared_lora_from(ck: dict) -> LoraWeights:
    """The one LoRA of an MT-LoRA checkpoint (SharedLora's a / b parameters), as float32 numpy."""
    cfg = HypernetModuleConfig(**ck["config"])
    lora = SharedLora(cfg)
    lora.load_state_dict(ck["state_dict"])
    return LoraWeights(rank=cfg.rank, alpha=cfg.alpha,
                       a={m: lora.a[m].detach().float().numpy() for m in cfg.modules},
                       b={m: lora.b[m].detach().float().numpy() for m in cfg.modules})
