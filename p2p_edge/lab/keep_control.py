"""Keep a trained MT-LoRA control as a ~1 MB GGUF adapter with its run record, so a later session can score it.

A k-fold's control trains ~70 min on this CPU, and a session's runs/ does not outlive the session; the adapter and
its record do, committed (e.g. bench/assets/folds_chat/mt_fold4/). The record (the run's splits.json, config.json and
train_log.jsonl) sits beside the adapter, so `lab.report --mt-lora DIR/mt_lora.gguf` still refuses to score users the
control trained on, and the fold's final val loss stays readable for the divergence rule.

    python -m p2p_edge.lab.keep_control --mt-lora runs/folds_chat/mt_fold4/mt_lora/last.pt \
        --out bench/assets/folds_chat/mt_fold4
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from p2p_edge.base import BaseSpec, base_spec, file_sha256
from p2p_edge.errors import InputError, ModelFileError
from p2p_edge.gguf import validate_adapter, write_adapter

ADAPTER = "mt_lora.gguf"
RECORD = ("splits.json", "config.json", "train_log.jsonl")   # what training writes beside last.pt


def keep_control(ckpt: Path, out: Path, spec: BaseSpec) -> Path:
    """Write OUT/mt_lora.gguf from the MT-LoRA checkpoint `ckpt` and copy its run record beside it.
    A run without its record is an InputError (the leak check would then trust the adapter); nothing is written."""
    from p2p_edge.lab.report import shared_lora_weights

    weights = shared_lora_weights(ckpt)   # InputError naming a missing file or one that is not an MT-LoRA checkpoint
    missing = [name for name in RECORD if not (ckpt.parent / name).is_file()]
    if missing:
        raise InputError(ckpt.parent / missing[0], "missing: a control is kept only with its run record "
                         "(training writes it beside last.pt)", field="record")
    out.mkdir(parents=True, exist_ok=True)
    adapter = write_adapter(out / ADAPTER, weights, spec, dtype="f16", metadata={"source_sha256": file_sha256(ckpt)})
    validate_adapter(adapter, spec)
    for name in RECORD:
        shutil.copyfile(ckpt.parent / name, out / name)
    return adapter


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mt-lora", type=Path, required=True, help="the control's checkpoint (RUN/last.pt)")
    ap.add_argument("--out", type=Path, required=True, help="folder for mt_lora.gguf and the run record")
    ap.add_argument("--base", type=Path, help="base GGUF (default: the bundled SmolLM2)")
    a = ap.parse_args(argv)
    try:
        spec = base_spec(a.base)
        adapter = keep_control(a.mt_lora, a.out, spec)
    except (InputError, ModelFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kept {adapter} ({adapter.stat().st_size / 1e6:.1f} MB) with {', '.join(RECORD)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
