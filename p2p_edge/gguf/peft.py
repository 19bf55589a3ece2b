"""Export a LoRA for PEFT (adapter_config.json + adapter_model.safetensors), HF row order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from p2p_edge.fileio import atomic_path, ensure_private_dir
from p2p_edge.gguf.keys import LoraWeights, TARGET_MODULES


# ------------------------------------------------------------------------------------------------ PEFT export

def export_peft(lora: LoraWeights, out_dir, base_model_id: str) -> Path:
    """Write `lora` as a PEFT adapter directory (adapter_model.safetensors + adapter_config.json), so it can be
    loaded onto the HF model with `PeftModel.from_pretrained`. Files are written atomically, mode 0600."""
    from safetensors.numpy import save_file  # lazy: only the export path needs it

    out_dir = ensure_private_dir(Path(out_dir))
    tensors = {}
    for module in TARGET_MODULES:
        for layer in range(lora.a[module].shape[0]):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(lora.a[module][layer], np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(lora.b[module][layer], np.float32)
    with atomic_path(out_dir / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(out_dir / "adapter_config.json") as tmp:
        tmp.write_text(json.dumps(_peft_config(lora, base_model_id), indent=2))
    return out_dir


def _peft_config(lora: LoraWeights, base_model_id: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_id,
        "r": int(lora.rank),
        "lora_alpha": float(lora.alpha),
        "target_modules": list(TARGET_MODULES),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
