"""The hypernet card (hypernet.json beside hypernet.onnx): one dataclass, written by the exporter and read by the
client through the same code, so a field cannot be written under one name and read under another.

It states what the client checks before using a hypernet (dims, rank, alpha, modules, layers, the base model and
sentence encoder it was trained for), how to build the profile vector, the LoRA strength chat uses, what the
hypernet does not do (`limits`), and the evaluation it shipped with (`metrics`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from p2p_edge.base import BaseSpec
from p2p_edge.errors import ModelFileError
from p2p_edge.fileio import atomic_write_text

CARD_FORMAT = "p2p-edge-hypernet/1"


def card_path_for(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


@dataclass(frozen=True)
class HypernetCard:
    id: str
    emb_dim: int
    rank: int
    alpha: float
    modules: tuple[str, ...]
    n_layers: int
    module_shapes: dict[str, tuple[int, int]]
    base_model: dict           # name, sha256, arch (and id): the only base the LoRA means anything on
    encoder: dict              # name, dim: the sentence encoder whose vectors it reads
    profile: dict = field(default_factory=dict)    # how the client builds the vector (top_k, habits_weight)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    chat_scale: float = 1.0    # the LoRA strength chat uses by default (cards before it existed: 1.0, as trained)
    limits: str = ""           # what the hypernet does not do, in words
    hypernet_config: dict = field(default_factory=dict)
    onnx: dict = field(default_factory=dict)       # opset, dtype, file
    onnx_sha256: str = ""
    path: Path | None = field(default=None, compare=False)   # where it was read from / written to (not stored)

    # ------------------------------------------------------------------------------------ derived settings

    @property
    def encoder_name(self) -> str:
        return str(self.encoder["name"])

    # How the client must build the profile vector; cards written before a setting existed get its old behaviour.
    @property
    def top_k(self) -> int:
        return int(self.profile.get("top_k", 2))

    @property
    def habits_weight(self) -> float:
        return float(self.profile.get("habits_weight", 0.0))   # 0: the profile text's embedding alone (v1)

    @property
    def lexical(self) -> str:
        return str(self.profile.get("lexical", ""))   # "": no lexical input (p2p_edge/lexical.py)

    # ------------------------------------------------------------------------------------------------ JSON

    def to_json(self) -> dict:
        d = {"format": CARD_FORMAT, **asdict(self)}
        del d["path"]
        d["modules"] = list(self.modules)
        d["module_shapes"] = {m: list(s) for m, s in self.module_shapes.items()}
        return d

    @classmethod
    def from_json(cls, raw: dict, path: Path | None = None) -> "HypernetCard":
        """Validate and parse; raise ValueError/TypeError/KeyError naming what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("the card must be a JSON object")
        if raw.get("format") != CARD_FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {CARD_FORMAT!r}")
        known = {f.name for f in fields(cls)} - {"path"}
        required = ("id", "emb_dim", "rank", "alpha", "modules", "n_layers", "module_shapes", "base_model",
                    "encoder")
        for key in required:
            if key not in raw:
                raise ValueError(f"missing key '{key}'")
        kw = {k: v for k, v in raw.items() if k in known}
        card = cls(**{**kw, "id": str(raw["id"]), "emb_dim": int(raw["emb_dim"]), "rank": int(raw["rank"]),
                      "alpha": float(raw["alpha"]), "modules": tuple(str(m) for m in raw["modules"]),
                      "n_layers": int(raw["n_layers"]),
                      "module_shapes": {str(m): (int(s[0]), int(s[1])) for m, s in raw["module_shapes"].items()},
                      "chat_scale": float(raw.get("chat_scale", 1.0)), "limits": str(raw.get("limits", "")),
                      "onnx_sha256": str(raw.get("onnx_sha256", "")), "path": path})
        if card.rank <= 0 or card.alpha <= 0:
            raise ValueError("rank and alpha must be positive")
        for name in ("base_model", "encoder", "profile", "training", "metrics", "onnx", "hypernet_config"):
            if not isinstance(getattr(card, name), dict):
                raise ValueError(f"'{name}' must be an object")
        card.encoder_name  # noqa: B018 - parse now so an error surfaces here
        return card

    def write(self, onnx_path: Path) -> "HypernetCard":
        """Write the card beside `onnx_path` (atomically, world-readable: a model file, not private data), after
        checking that it reads back as itself; returns the card with its path."""
        path = card_path_for(onnx_path)
        doc = self.to_json()
        if HypernetCard.from_json(json.loads(json.dumps(doc))) != self:
            raise ValueError("the card does not read back as written")
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        path.chmod(0o644)
        return HypernetCard.from_json(doc, path)

    # ------------------------------------------------------------------------------------------------ checks

    def check_base(self, base: BaseSpec) -> None:
        """Refuse a hypernet that was not trained for this base model (one clear line)."""
        want = self.base_model
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
        if self.lexical:
            raise ModelFileError(f"{self.path}: hypernet '{self.id}' reads a lexical profile input ({self.lexical}) "
                                 "that the client does not build yet; read it with bench.fit_gap (torch)")
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
        return HypernetCard.from_json(json.loads(path.read_text(encoding="utf-8")), path)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{path}: malformed hypernet card ({e})") from None
