"""Export a trained P2P hypernet checkpoint (torch) to ONNX + its JSON card.

    python -m p2p_edge.export.hypernet CHECKPOINT.pt --out p2p_edge/assets/hypernet.onnx [--fp16]

The card carries everything the client checks (dims, rank, alpha, modules, layers, base model id + sha256,
encoder) and what the checkpoint recorded about training data, splits and metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from p2p_edge.fileio import atomic_path
from p2p_edge.hypernet.card import HypernetCard, card_path_for

if TYPE_CHECKING:   # torch is imported only where a checkpoint is read or exported: the card code needs none
    from p2p_edge.train.model import HypernetModule

OPSET = 17


def load_checkpoint(path: Path) -> tuple[HypernetModule, dict]:
    from p2p_edge.train.checkpoint import hypernet_from, read_checkpoint

    ckpt = read_checkpoint(path, method="p2p")
    return hypernet_from(ckpt), ckpt.get("meta", {})


def export_onnx(model: HypernetModule, out: Path, fp16: bool = False) -> None:
    """torch -> ONNX (legacy TorchScript exporter: deterministic and dependency-free for an MLP)."""
    import torch

    model = model.eval().float()
    names = [f"{m}.{p}" for m in model.cfg.modules for p in ("lora_a", "lora_b")]
    dummy = torch.zeros(1, model.cfg.emb_dim)

    class Flat(torch.nn.Module):  # ONNX wants a tuple, not a dict
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, e):
            o = self.inner(e)
            return tuple(o[n] for n in names)

    with atomic_path(out) as tmp:
        torch.onnx.export(
            Flat(model).eval(), (dummy,), str(tmp), training=torch.onnx.TrainingMode.EVAL, input_names=["embedding"], output_names=names,
            dynamic_axes={"embedding": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=OPSET, dynamo=False,
        )
        if fp16:
            import onnx
            from onnxconverter_common import float16

            m = onnx.load(str(tmp))
            m = float16.convert_float_to_float16(m, keep_io_types=True)
            onnx.save(m, str(tmp))
    out.chmod(0o644)  # a model file, not private data


def write_card(out: Path, model: HypernetModule, meta: dict, dtype: str) -> HypernetCard:
    """The card of the ONNX file `out` (written beside it), from the model's config and the checkpoint's meta."""
    cfg = model.cfg
    card = HypernetCard(
        id=meta.get("id") or out.stem, emb_dim=cfg.emb_dim, rank=cfg.rank, alpha=cfg.alpha,
        modules=tuple(cfg.modules), n_layers=cfg.n_layers,
        module_shapes={m: tuple(s) for m, s in cfg.module_shapes.items()},
        base_model=meta.get("base_model", {}), encoder=meta.get("encoder", {}), profile=meta.get("profile", {}),
        training=meta.get("training", {}), metrics=meta.get("metrics", {}),
        chat_scale=float(meta.get("chat_scale", 1.0)), limits=str(meta.get("limits", "")),
        hypernet_config=cfg.to_dict(), onnx={"opset": OPSET, "dtype": dtype, "file": out.name},
        onnx_sha256=hashlib.sha256(out.read_bytes()).hexdigest(),
    )
    return card.write(out)


def export(checkpoint: Path, out: Path, fp16: bool = False, extra_meta: dict | None = None) -> dict:
    model, meta = load_checkpoint(checkpoint)
    meta = {**meta, **(extra_meta or {})}
    export_onnx(model, out, fp16=fp16)
    return write_card(out, model, meta, "float16" if fp16 else "float32")


def bench_readings(chat: str | None, target_nll: Path | None) -> dict:
    """Card metrics from the benchmarks beside the report's: what the hypernet does outside the report's tasks."""
    out: dict = {}
    if chat:
        path, _, name = chat.rpartition("=")
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        p = r["preservation"][name]
        out["chat"] = {"source": path, "part": r["part"], "reply_scale": r["reply_scales"][name],
                       "n_prompts": r["n_prompts"], "chat_users": r["chat_users"],
                       "preservation": {"length_ratio": p["length_ratio"], "short_share": p["short_share"],
                                        "base_short_share": r["base"]["short_share"],
                                        "base_reply_loss_diff": p["base_reply_nll_delta"],
                                        "null_length_ratio": p.get("null_length_ratio")},
                       "writing": r["writing"][name]}
    if target_nll:
        out["target_nll"] = {"source": str(target_nll), **json.loads(target_nll.read_text(encoding="utf-8"))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fp16", action="store_true", help="store weights as float16 (inputs/outputs stay float32)")
    ap.add_argument("--metrics", type=Path, help="JSON file of evaluation results to put in the card")
    ap.add_argument("--id", help="hypernet id recorded in the card and in every adapter it makes")
    ap.add_argument("--chat-scale", type=float, help="the LoRA strength chat uses by default (card field chat_scale)")
    ap.add_argument("--limits", help="what the hypernet does not do, in words (card field limits)")
    ap.add_argument("--chat", metavar="FILE=NAME", help="a bench.chat result and the hypernet's name in it: its "
                    "preservation and writing readings go into the card (metrics.chat)")
    ap.add_argument("--target-nll", type=Path, metavar="FILE", help="a bench.target_nll result for the card "
                    "(metrics.target_nll)")
    args = ap.parse_args(argv)
    # check both inputs before anything is written
    if not args.checkpoint.is_file():
        print(f"error: {args.checkpoint}: no such checkpoint file", file=sys.stderr)
        return 2
    try:
        extra = {"metrics": json.loads(args.metrics.read_text(encoding="utf-8"))} if args.metrics else {}
    except (OSError, ValueError) as e:
        print(f"error: --metrics {args.metrics}: {e}", file=sys.stderr)
        return 2
    try:
        if extra.get("metrics") and (args.chat or args.target_nll):
            extra["metrics"] = {**extra["metrics"], **bench_readings(args.chat, args.target_nll)}
            # the report scored these by decoded answers; the long-form writing tasks are read by bench.chat
            first = next(iter(extra["metrics"]["splits"].values()))
            extra["metrics"]["scored_tasks"] = sorted(first["checks"]["p2p-base"])
    except (OSError, ValueError, KeyError) as e:
        print(f"error: --chat / --target-nll: {e}", file=sys.stderr)
        return 2
    if args.id:
        extra["id"] = args.id
    if args.chat_scale is not None:
        if not 0 < args.chat_scale <= 4:
            print(f"error: --chat-scale must be in (0, 4], got {args.chat_scale}", file=sys.stderr)
            return 2
        extra["chat_scale"] = args.chat_scale
    if args.limits:
        extra["limits"] = args.limits
    export(args.checkpoint, args.out, fp16=args.fp16, extra_meta=extra)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) and {card_path_for(args.out).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
