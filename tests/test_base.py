"""base.base_spec: the one way commands read a base model's facts, cached in the project's cache dir."""

from __future__ import annotations

import json

import pytest

from p2p_edge import base
from p2p_edge.errors import ModelFileError


def test_base_spec_reads_once_then_from_the_cache(base_model_path, base_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_EDGE_HOME", str(tmp_path))
    assert base.base_spec(base_model_path) == base_spec
    cache = tmp_path / "cache" / base.SPEC_CACHE_NAME
    assert any(k.startswith("spec|") for k in json.loads(cache.read_text()))

    def no_gguf_read(*_):
        raise AssertionError("the GGUF was parsed again")

    monkeypatch.setattr(base, "_read_spec", no_gguf_read)
    assert base.base_spec(base_model_path) == base_spec


def test_base_spec_defaults_to_the_configured_base_model(base_model_path, base_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_EDGE_HOME", str(tmp_path))
    monkeypatch.setenv("P2P_EDGE_BASE_MODEL", str(base_model_path))
    assert base.base_spec() == base_spec
    monkeypatch.setenv("P2P_EDGE_BASE_MODEL", str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelFileError, match="gone.gguf: base model file not found"):
        base.base_spec()
