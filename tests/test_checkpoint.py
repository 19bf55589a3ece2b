"""train.checkpoint: the one decoder of last.pt / good.pt, used by training, export, the report and the benches."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from p2p_edge.errors import InputError  # noqa: E402
from p2p_edge.train.checkpoint import hypernet_from, read_checkpoint, shared_lora_from  # noqa: E402
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, SharedLora  # noqa: E402

CFG = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (16, 16), "v_proj": (16, 8)})


def save(path, method: str, module) -> None:
    torch.save({"config": CFG.to_dict(), "state_dict": module.state_dict(), "method": method, "step": 3,
                "meta": {"training": {"tasks": ["t"]}}}, path)


def test_a_hypernet_checkpoint_decodes_to_the_same_generator(tmp_path):
    torch.manual_seed(0)
    gen = HypernetModule(CFG).eval()
    torch.nn.init.normal_(gen.head_b["q_proj"].weight)
    save(tmp_path / "last.pt", "p2p", gen)
    ck = read_checkpoint(tmp_path / "last.pt", method="p2p")
    back = hypernet_from(ck)
    e = torch.randn(2, 8)
    with torch.no_grad():
        for k, v in gen(e).items():
            assert torch.equal(back(e)[k], v)
    assert not back.training and ck["meta"]["training"]["tasks"] == ["t"]


def test_a_shared_lora_checkpoint_decodes_to_its_one_lora(tmp_path):
    lora = SharedLora(CFG)
    torch.nn.init.normal_(lora.b["v_proj"])
    save(tmp_path / "mt.pt", "mt_lora", lora)
    w = shared_lora_from(read_checkpoint(tmp_path / "mt.pt", method="mt_lora"))
    assert (w.rank, w.alpha) == (CFG.rank, CFG.alpha)
    np.testing.assert_array_equal(w.b["v_proj"], lora.b["v_proj"].detach().numpy())
    assert w.a["q_proj"].shape == (2, CFG.rank, 16) and w.b["v_proj"].shape == (2, 8, CFG.rank)


def test_bad_checkpoints_are_one_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not a p2p-edge training checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    save(tmp_path / "mt.pt", "mt_lora", SharedLora(CFG))
    with pytest.raises(InputError, match="a p2p checkpoint is needed, this one was trained with 'mt_lora'"):
        read_checkpoint(tmp_path / "mt.pt", method="p2p")


def exported(tmp_path, **cfg_kw):
    """A tiny random hypernet (B heads non-zero) exported as the client's ONNX + card, and the module itself."""
    from p2p_edge.export.hypernet import export_onnx, write_card

    torch.manual_seed(1)
    gen = HypernetModule(HypernetModuleConfig(**{**CFG.to_dict(), **cfg_kw})).eval()
    for m in gen.cfg.modules:
        torch.nn.init.normal_(gen.head_b[m].weight, std=0.02)
    if gen.cfg.profile_branch:   # trained-looking: fitted standardisation, a last layer no longer zero
        gen.set_profile_stats(torch.randn(20, gen.cfg.emb_dim) * 0.3 + 0.1)
        torch.nn.init.normal_(gen.profile_in[2].weight, std=0.1)
    out = tmp_path / "hypernet.onnx"
    export_onnx(gen, out)
    write_card(out, gen, {"base_model": {"name": "tiny", "sha256": "0" * 64, "arch": "llama"},
                          "encoder": {"name": "enc", "dim": 8}}, "float32")
    return out, gen


@pytest.mark.parametrize("shared,branch", [(False, False), (True, False), (False, True)])
def test_an_exported_hypernet_reads_back_as_its_weights(tmp_path, shared, branch):
    pytest.importorskip("onnx")
    out, gen = exported(tmp_path, shared_lora=shared, profile_branch=branch)
    ck = read_checkpoint(out, method="p2p")
    assert ck["method"] == "p2p" and ck["step"] == 0 and ck["config"] == gen.cfg.to_dict()
    want = gen.state_dict()
    assert set(ck["state_dict"]) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(ck["state_dict"][k], v, rtol=0, atol=0, msg=k)   # the same numbers, not close ones


def test_an_exported_hypernet_that_does_not_match_its_card_is_refused(tmp_path):
    pytest.importorskip("onnx")
    import json

    out, _ = exported(tmp_path)
    card = json.loads(out.with_suffix(".json").read_text())
    card["hypernet_config"]["hidden"] = 128
    out.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="hypernet.onnx: its weights do not fit its card's hypernet_config"):
        read_checkpoint(out)
    (tmp_path / "good").mkdir()
    good, _ = exported(tmp_path / "good")
    with pytest.raises(InputError, match="an exported hypernet is a p2p one"):
        read_checkpoint(good, method="mt_lora")
