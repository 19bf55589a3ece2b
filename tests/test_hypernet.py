"""ONNX hypernet vs torch hypernet, card checks, and the generated LoRA's shapes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypernet_fixture import export_random_hypernet, random_hypernet  # noqa: E402
from p2p_edge.base import BaseSpec  # noqa: E402
from p2p_edge.errors import ModelFileError  # noqa: E402
from p2p_edge.hypernet import Hypernet, load_card  # noqa: E402

TINY = BaseSpec(arch="llama", n_layers=3, hidden=48, n_head=4, n_head_kv=2, head_dim=12, name="tiny", sha256="ab" * 32)


def _torch_out(model, e):
    with torch.no_grad():
        return {k: v[0].numpy() for k, v in model(torch.from_numpy(e[None])).items()}


@pytest.mark.parametrize("fp16,tol,shared", [(False, 1e-4, False), (True, 2e-2, False), (False, 1e-4, True)])
def test_onnx_matches_torch(tmp_path, fp16, tol, shared):
    model, path = export_random_hypernet(TINY, tmp_path / "h.onnx", emb_dim=16, hidden=32, fp16=fp16,
                                         shared_lora=shared)
    h = Hypernet(path)
    rng = np.random.default_rng(0)
    for _ in range(3):
        e = rng.standard_normal(16).astype(np.float32)
        lora = h.generate(e)
        ref = _torch_out(model, e)
        for m in ("q_proj", "v_proj"):
            assert np.abs(lora.a[m] - ref[f"{m}.lora_a"]).max() <= tol
            assert np.abs(lora.b[m] - ref[f"{m}.lora_b"]).max() <= tol
    assert lora.a["q_proj"].shape == (3, 8, 48) and lora.b["v_proj"].shape == (3, 24, 8)


def test_real_shape_fixture_parity(random_hypernet_path, base_spec):
    """The random fixture of the real SmolLM2 shape: ONNX == torch within 1e-4 (fp32)."""
    model = random_hypernet(base_spec)
    h = Hypernet(random_hypernet_path)
    e = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    e /= np.linalg.norm(e)
    lora, ref = h.generate(e), _torch_out(model, e)
    diff = max(np.abs(getattr(lora, x)[m] - ref[f"{m}.lora_{x}"]).max() for m in ("q_proj", "v_proj") for x in "ab")
    assert diff <= 1e-4
    h.card.check_base(base_spec)


def test_zero_init_gives_zero_delta():
    """As in P2P/Text-to-LoRA, a fresh hypernet generates B = 0, so training starts from the base model."""
    from p2p_edge.train.model import HypernetModule, HypernetModuleConfig

    for shared in (False, True):
        m = HypernetModule(HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (16, 16)}, shared_lora=shared))
        out = m(torch.randn(2, 8))
        assert torch.count_nonzero(out["q_proj.lora_b"]) == 0 and torch.count_nonzero(out["q_proj.lora_a"]) > 0


def test_shared_lora_is_the_common_part():
    """With shared_lora, a zero trunk output leaves exactly the shared matrices, per layer; the profile adds to them."""
    from p2p_edge.train.model import HypernetModule, HypernetModuleConfig

    torch.manual_seed(0)
    m = HypernetModule(HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (16, 12)}, shared_lora=True))
    for head in (m.head_a["q_proj"], m.head_b["q_proj"]):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    torch.nn.init.normal_(m.shared_b["q_proj"])
    out = m(torch.randn(3, 8))
    assert torch.equal(out["q_proj.lora_a"], m.shared_a["q_proj"].expand(3, -1, -1, -1))
    assert torch.equal(out["q_proj.lora_b"], m.shared_b["q_proj"].expand(3, -1, -1, -1))
    assert not torch.equal(out["q_proj.lora_a"][0, 0], out["q_proj.lora_a"][0, 1])  # one per layer


def test_refuses_other_base_model(tmp_path):
    _, path = export_random_hypernet(TINY, tmp_path / "h.onnx", emb_dim=16)
    card = load_card(path)
    with pytest.raises(ModelFileError, match="trained for base model tiny"):
        card.check_base(replace(TINY, sha256="cd" * 32))
    with pytest.raises(ModelFileError, match="layers"):
        card.check_base(replace(TINY, n_layers=4))
    with pytest.raises(ModelFileError, match="expects"):
        card.check_encoder("other-encoder", 16)
    lexical = replace(card, profile={**card.profile, "lexical": "token_centroid"})
    with pytest.raises(ModelFileError, match="lexical profile input .token_centroid. that the client does not build"):
        lexical.check_encoder(card.encoder_name, 16)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_card", "bad_card", "wrong_format"])
def test_damaged_hypernet_is_refused(tmp_path, damage):
    _, path = export_random_hypernet(TINY, tmp_path / "h.onnx", emb_dim=16)
    card = path.with_suffix(".json")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "flip":
        b = bytearray(path.read_bytes())
        b[len(b) // 2] ^= 0xFF
        path.write_bytes(bytes(b))
    elif damage == "no_card":
        card.unlink()
    elif damage == "bad_card":
        card.write_text("{not json")
    else:
        d = json.loads(card.read_text())
        d["format"] = "something-else/9"
        card.write_text(json.dumps(d))
    with pytest.raises(ModelFileError) as ei:
        Hypernet(path)
    assert str(path.parent / path.stem) in str(ei.value) and "\n" not in str(ei.value)  # names the onnx or its card


def test_corrupt_onnx_without_sha_check_still_one_line(tmp_path):
    _, path = export_random_hypernet(TINY, tmp_path / "h.onnx", emb_dim=16)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match="cannot load hypernet ONNX"):
        Hypernet(path, verify_sha=False)


@pytest.mark.parametrize("metrics,checkpoint,expect", [
    ("{not json", True, "--metrics"), (None, False, "no such checkpoint file"), ("missing", True, "--metrics")])
def test_export_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, metrics, checkpoint, expect):
    from p2p_edge.export.hypernet import main as export_main

    ckpt = tmp_path / "last.pt"
    if checkpoint:
        ckpt.write_bytes(b"never loaded: the inputs are checked first")
    args = [str(ckpt), "--out", str(tmp_path / "out" / "h.onnx")]
    if metrics is not None:
        m = tmp_path / "metrics.json"
        if metrics != "missing":
            m.write_text(metrics)
        args += ["--metrics", str(m)]
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    assert not (tmp_path / "out").exists()


def test_the_card_can_carry_bench_chat_readings():
    """export --chat FILE=NAME: the card gets that hypernet's preservation and writing readings (here from a
    committed bench.chat result)."""
    from pathlib import Path

    from p2p_edge.export.hypernet import bench_readings

    result = Path(__file__).resolve().parents[1] / "bench" / "results" / "chat_candidate2_val.json"
    chat = bench_readings(f"{result}=chat_kl", None)["chat"]
    assert chat["part"] == "val" and chat["preservation"]["base_reply_loss_diff"] == pytest.approx(0.0582)
    assert chat["preservation"]["base_short_share"] == 0.0 and set(chat["writing"]) >= {"blog_post"}
    with pytest.raises(KeyError):
        bench_readings(f"{result}=nope", None)
