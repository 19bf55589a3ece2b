"""Run an exported P2P hypernetwork (ONNX) on onnxruntime: profile embedding -> LoRA weights.

Every hypernet ships with a JSON card (hypernet.json beside hypernet.onnx) stating the base model it was
trained for; a hypernet is refused for any other base model, since its LoRA would be meaningless there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapter import LoraWeights
from .base import BaseSpec
from .errors import ModelFileError
from .paths import ASSETS_DIR

CARD_FORMAT = "p2p-edge-hypernet/1"
DEFAULT_HYPERNET = ASSETS_DIR / "hypernet.onnx"


def card_path_for(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


@dataclass
class HypernetCard:
    raw: dict
    path: Path

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def emb_dim(self) -> int:
        return int(self.raw["emb_dim"])

    @property
    def rank(self) -> int:
        return int(self.raw["rank"])

    @property
    def alpha(self) -> float:
        return float(self.raw["alpha"])

    @property
    def modules(self) -> list[str]:
        return list(self.raw["modules"])

    @property
    def n_layers(self) -> int:
        return int(self.raw["n_layers"])

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]:
        return {m: tuple(int(x) for x in s) for m, s in self.raw["module_shapes"].items()}

    @property
    def encoder_name(self) -> str:
        return str(self.raw["encoder"]["name"])

    @property
    def profile(self) -> dict:
        return dict(self.raw.get("profile", {}))

    # How the client must build the profile vector; cards written before a setting existed get its old behaviour.
    @property
    def top_k(self) -> int:
        return int(self.profile.get("top_k", 2))

    @property
    def habits_weight(self) -> float:
        return float(self.profile.get("habits_weight", 0.0))   # 0: the profile text's embedding alone (v1)

    @property
    def chat_scale(self) -> float:
        """The LoRA strength chat uses by default (cards before it existed: 1.0, the strength it was trained at)."""
        return float(self.raw.get("chat_scale", 1.0))

    @property
    def limits(self) -> str:
        """What the hypernet does not do, in words (empty on cards before the field existed)."""
        return str(self.raw.get("limits", ""))

    def check_base(self, base: BaseSpec) -> None:
        """Refuse a hypernet that was not trained for this base model (one clear line)."""
        want = self.raw["base_model"]
        if want.get("sha256") and want["sha256"] != base.sha256:
            raise ModelFileError(
                f"{self.path}: hypernet '{self.id}' was trained for base model {want.get('name')} "
                f"(sha256 {want['sha256'][:12]}…), not {base.name} (sha256 {base.sha256[:12]}…)"
            )
        if self.n_layers != base.n_layers or self.module_shapes != {
            m: s for m, s in base.module_shapes().items() if m in self.modules
        }:
            raise ModelFileError(
                f"{self.path}: hypernet '{self.id}' generates {self.n_layers} layers of {self.module_shapes}, "
                f"but base model {base.name} has {base.n_layers} layers of {base.module_shapes()}"
            )

    def check_encoder(self, name: str, dim: int) -> None:
        if self.emb_dim != dim or self.encoder_name != name:
            raise ModelFileError(
                f"{self.path}: hypernet '{self.id}' expects {self.encoder_name} ({self.emb_dim}-d) embeddings, "
                f"not {name} ({dim}-d)"
            )


def load_card(onnx_path: Path) -> HypernetCard:
    path = card_path_for(onnx_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: hypernet card not found (every hypernet.onnx needs its .json card)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != CARD_FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {CARD_FORMAT!r}")
        card = HypernetCard(raw, path)
        for key in ("id", "emb_dim", "rank", "alpha", "modules", "n_layers", "module_shapes", "base_model", "encoder"):
            if key not in raw:
                raise ValueError(f"missing key '{key}'")
        card.module_shapes, card.encoder_name  # parse now so errors surface here
        if card.rank <= 0 or card.alpha <= 0:
            raise ValueError("rank and alpha must be positive")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ModelFileError(f"{path}: malformed hypernet card ({e})") from None
    return card


class Hypernet:
    """onnxruntime session for one hypernet.onnx + its card."""

    def __init__(self, onnx_path: Path | None = None, threads: int | None = None, verify_sha: bool = True):
        import onnxruntime as ort

        self.path = Path(onnx_path or DEFAULT_HYPERNET)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: hypernet ONNX not found")
        self.card = load_card(self.path)
        want_sha = self.card.raw.get("onnx_sha256")
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
