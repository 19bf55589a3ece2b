"""Run an exported P2P hypernetwork (ONNX) on onnxruntime: profile embedding -> LoRA weights.

Every hypernet ships with its card (hypernet.json beside hypernet.onnx) stating the base model it was trained
for; a hypernet is refused for any other base model, since its LoRA would be meaningless there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from p2p_edge.errors import ModelFileError
from p2p_edge.gguf import LoraWeights
from p2p_edge.hypernet.card import load_card
from p2p_edge.paths import ASSETS_DIR

DEFAULT_HYPERNET = ASSETS_DIR / "hypernet.onnx"


class Hypernet:
    """onnxruntime session for one hypernet.onnx + its card."""

    def __init__(self, onnx_path: Path | None = None, threads: int | None = None, verify_sha: bool = True):
        import onnxruntime as ort

        self.path = Path(onnx_path or DEFAULT_HYPERNET)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: hypernet ONNX not found")
        self.card = load_card(self.path)
        want_sha = self.card.onnx_sha256
        data = self.path.read_bytes()
        if verify_sha and want_sha and hashlib.sha256(data).hexdigest() != want_sha:
            raise ModelFileError(f"{self.path}: hypernet ONNX does not match the sha256 in its card (corrupt or replaced)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelFileError(f"{self.path}: cannot load hypernet ONNX ({str(e).splitlines()[0]})") from None
        names = {o.name for o in self.session.get_outputs()}
        need = {f"{m}.{p}" for m in self.card.modules for p in ("lora_a", "lora_b")}
        if not need <= names:
            raise ModelFileError(f"{self.path}: hypernet ONNX lacks outputs {sorted(need - names)}")
        self._input = self.session.get_inputs()[0].name

    def generate(self, embedding: np.ndarray) -> LoraWeights:
        """One profile embedding (emb_dim,) -> the user's LoRA for every (module, layer)."""
        e = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if e.shape[1] != self.card.emb_dim:
            raise ValueError(f"embedding has {e.shape[1]} dims, hypernet expects {self.card.emb_dim}")
        names = [o.name for o in self.session.get_outputs()]
        outs = dict(zip(names, self.session.run(None, {self._input: e})))
        a = {m: np.ascontiguousarray(outs[f"{m}.lora_a"][0], dtype=np.float32) for m in self.card.modules}
        b = {m: np.ascontiguousarray(outs[f"{m}.lora_b"][0], dtype=np.float32) for m in self.card.modules}
        return LoraWeights(rank=self.card.rank, alpha=self.card.alpha, a=a, b=b)
