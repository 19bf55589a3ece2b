"""Sentence encoder on onnxruntime + tokenizers: mean-pool, L2-normalise (= sentence-transformers).

The ONNX file comes from `python -m p2p_edge.export.encoder` (run once where torch is: `make encoder` puts it inside
the package, and a wheel built then carries it); the client never needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ModelFileError
from .paths import encoder_dir


class Encoder:
    def __init__(self, model_dir: Path | None = None, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.dir = Path(model_dir or encoder_dir())
        card_path = self.dir / "encoder.json"
        if not card_path.is_file():
            raise ModelFileError(
                f"{self.dir}: no exported sentence encoder here; install a p2p-edge wheel built by `make wheel` "
                "(it carries the encoder), run `make encoder` in a checkout (needs the export extra), "
                "or set P2P_EDGE_ENCODER"
            )
        try:
            self.card = json.loads(card_path.read_text())
            self.dim = int(self.card["dim"])
            self.name = str(self.card["name"])
            max_len = int(self.card.get("max_seq_length", 256))
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"{card_path}: malformed encoder card ({e})") from None
        try:
            self.tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        except Exception as e:
            raise ModelFileError(f"{self.dir / 'tokenizer.json'}: cannot load tokenizer ({e})") from None
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.dir / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelFileError(f"{self.dir / 'model.onnx'}: cannot load encoder ONNX ({e})") from None
        self._inputs = {i.name for i in self.session.get_inputs()}
        model_path = self.dir / "model.onnx"
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise ModelFileError(f"{model_path}: not a sentence encoder (inputs {sorted(self._inputs)})")
        out_dim = self.session.get_outputs()[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != self.dim:
            raise ModelFileError(f"{card_path}: says dim {self.dim} but {model_path.name} outputs {out_dim}")

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32, unit-norm rows."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so padding in each batch is small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        return out
