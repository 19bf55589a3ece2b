"""p2p_edge.lab.keep_control: a fold's MT-LoRA control kept as a GGUF adapter that the report's leak check still reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from p2p_edge.base import BaseSpec  # noqa: E402
from p2p_edge.errors import InputError  # noqa: E402
from p2p_edge.eval.splits import save_splits  # noqa: E402
from p2p_edge.gguf import read_adapter  # noqa: E402
from p2p_edge.lab.keep_control import RECORD, keep_control  # noqa: E402
from p2p_edge.lab.report import check_not_trained_on  # noqa: E402
from p2p_edge.train.model import HypernetModuleConfig, SharedLora  # noqa: E402

# q_proj 16 -> 16 (4 heads x 4), v_proj 16 -> 8 (2 kv heads x 4), two layers
CFG = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (16, 16), "v_proj": (16, 8)})
TINY = BaseSpec(arch="llama", n_layers=2, hidden=16, n_head=4, n_head_kv=2, head_dim=4, name="tiny", sha256="ab" * 32)


def a_control_run(run, trained=("news/a", "news/b"), record=RECORD):
    """A finished MT-LoRA run as training leaves it: last.pt and (some of) its record."""
    run.mkdir(parents=True)
    torch.manual_seed(0)
    lora = SharedLora(CFG)
    torch.nn.init.normal_(lora.b["v_proj"])
    torch.save({"config": CFG.to_dict(), "state_dict": lora.state_dict(), "method": "mt_lora", "step": 1000,
                "meta": {}}, run / "last.pt")
    parts = {"train": list(trained), "val": ["news/v"], "test": ["news/t"]}
    if "splits.json" in record:
        save_splits(run / "splits.json", {"random": parts, "ood": parts})
    if "config.json" in record:
        (run / "config.json").write_text(json.dumps({"split": "both"}))
    if "train_log.jsonl" in record:
        (run / "train_log.jsonl").write_text('{"step": 1000, "val_loss": 2.7}\n')
    return run / "last.pt", lora


def test_the_kept_adapter_is_the_controls_lora_and_the_leak_check_still_reads_its_record(tmp_path):
    ckpt, lora = a_control_run(tmp_path / "run")
    adapter = keep_control(ckpt, tmp_path / "kept", TINY)
    weights, meta = read_adapter(adapter, TINY)
    np.testing.assert_allclose(weights.b["v_proj"], lora.b["v_proj"].detach().numpy(), rtol=1e-3, atol=1e-3)
    assert len(meta["source_sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(["mt_lora.gguf", *RECORD])
    check_not_trained_on(adapter, ["news/t"])          # the fold's test user: fine
    with pytest.raises(InputError, match="trained on 1 of the users scored here"):
        check_not_trained_on(adapter, ["news/t", "news/a"])


@pytest.mark.parametrize("lost", RECORD)
def test_a_run_without_its_record_is_refused_and_nothing_is_written(tmp_path, lost):
    ckpt, _ = a_control_run(tmp_path / "run", record=[r for r in RECORD if r != lost])
    with pytest.raises(InputError, match=f"{lost}: field 'record': missing"):
        keep_control(ckpt, tmp_path / "kept", TINY)
    assert not (tmp_path / "kept").exists()


def test_a_missing_checkpoint_is_named_before_its_record(tmp_path):
    with pytest.raises(InputError, match="nope/last.pt: no such checkpoint file"):
        keep_control(tmp_path / "nope" / "last.pt", tmp_path / "kept", TINY)
    assert not (tmp_path / "kept").exists()


def test_a_hypernet_checkpoint_is_not_a_control(tmp_path):
    ckpt, _ = a_control_run(tmp_path / "run")
    ck = torch.load(ckpt)
    torch.save({**ck, "method": "p2p"}, ckpt)
    with pytest.raises(InputError, match="mt_lora checkpoint is needed"):
        keep_control(ckpt, tmp_path / "kept", TINY)
    assert not (tmp_path / "kept").exists()
