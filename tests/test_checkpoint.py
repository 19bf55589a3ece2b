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
