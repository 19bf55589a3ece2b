"""Shared fixtures. Expensive real-model fixtures are session-scoped and skip cleanly when a part is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Every test gets its own p2p-edge data/cache dir; nothing touches the real user dirs."""
    monkeypatch.setenv("P2P_EDGE_HOME", str(tmp_path / "p2p-home"))


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    """The exported ONNX MiniLM: P2P_EDGE_ENCODER if set and present, else the default location, else exported
    once for this session with optimum (~10 s)."""
    from p2p_edge.paths import encoder_dir as default_dir

    for cand in (os.environ.get("P2P_EDGE_ENCODER"), os.environ.get("P2P_EDGE_TEST_ENCODER")):
        if cand and (Path(cand) / "encoder.json").is_file():
            return Path(cand)
    home = os.environ.pop("P2P_EDGE_HOME", None)
    try:
        d = default_dir()
    finally:
        if home is not None:
            os.environ["P2P_EDGE_HOME"] = home
    if (d / "encoder.json").is_file():
        return d
    pytest.importorskip("optimum.onnxruntime")
    from p2p_edge.export.encoder import export_encoder

    return export_encoder(tmp_path_factory.mktemp("encoder") / "all-MiniLM-L6-v2")


@pytest.fixture
def use_encoder(encoder_dir, monkeypatch) -> Path:
    monkeypatch.setenv("P2P_EDGE_ENCODER", str(encoder_dir))
    return encoder_dir


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    from p2p_edge.paths import default_base_model

    return default_base_model()


@pytest.fixture(scope="session")
def base_spec(base_model_path, tmp_path_factory):
    from p2p_edge.base import read_base_spec

    return read_base_spec(base_model_path, tmp_path_factory.mktemp("sha") / "sha256.json")


@pytest.fixture(scope="session")
def random_hypernet_path(base_spec, tmp_path_factory) -> Path:
    """A randomly initialised hypernet of the real shape, exported to ONNX (test fixture, not a product model)."""
    pytest.importorskip("torch")
    from hypernet_fixture import export_random_hypernet

    _, path = export_random_hypernet(base_spec, tmp_path_factory.mktemp("hypernet") / "hypernet.onnx")
    return path


@pytest.fixture(scope="session")
def llm(base_model_path):
    """One llama.cpp base model for the whole session (as in the product: one model per process)."""
    pytest.importorskip("llama_cpp")
    from p2p_edge.runtime import LocalLLM

    return LocalLLM(base_model_path, n_threads=2)


EXAMPLE_HISTORY = ROOT / "examples" / "history.jsonl"


# Fixtures that load a real model (the bundled SmolLM2 GGUF through llama.cpp, or the exported MiniLM encoder):
# every test using one is `slow`, so `pytest -m "not slow"` is the fast suite on tiny random models.
REAL_MODEL_FIXTURES = frozenset({"llm", "encoder_dir", "use_encoder", "random_hypernet_path"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
