"""`p2p-edge export ADAPTER --format peft|ollama --out DIR`: layout, privacy, all-or-nothing, the Modelfile.

Against the real bundled base GGUF's header (shapes, chat template), with a random LoRA; no model is run here (the
PEFT logits parity against llama.cpp is in test_lora_parity.py).
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from p2p_edge.cli import app
from p2p_edge.errors import InputError, ModelFileError, P2PError
from p2p_edge.gguf import LoraWeights, read_adapter, write_adapter
from p2p_edge.interop import HF_BASE_ID, export_adapter

pytestmark = pytest.mark.slow   # the real base GGUF's header and a full-size adapter

MODELFILE_INSTRUCTIONS = {"FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "MESSAGE", "LICENSE"}


@pytest.fixture(scope="module")
def lora(base_spec) -> LoraWeights:
    rng = np.random.default_rng(3)
    shapes = base_spec.module_shapes()
    a = {m: rng.standard_normal((base_spec.n_layers, 8, i)).astype(np.float32) * 0.05 for m, (i, _) in shapes.items()}
    b = {m: rng.standard_normal((base_spec.n_layers, o, 8)).astype(np.float32) * 0.05 for m, (_, o) in shapes.items()}
    return LoraWeights(rank=8, alpha=16.0, a=a, b=b)


@pytest.fixture
def adapter(tmp_path, lora, base_spec) -> Path:
    path = tmp_path / "user" / "adapter.gguf"
    path.parent.mkdir()
    write_adapter(path, lora, base_spec, dtype="f32", metadata={"hypernet": "test-hypernet", "chat_scale": "0.5"})
    return path


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_peft_export_is_peft_layout_in_hf_row_order_and_private(tmp_path, adapter, lora):
    from safetensors.numpy import load_file

    out = tmp_path / "peft"
    files = export_adapter(adapter, "peft", out)
    assert [p.name for p in files] == ["adapter_config.json", "adapter_model.safetensors", "p2p-edge.json"]
    assert private(out) and all(private(p) for p in files)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16.0
    assert config["base_model_name_or_path"] == HF_BASE_ID and set(config["target_modules"]) == {"q_proj", "v_proj"}
    tensors = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.model.layers.{}.self_attn.{}.lora_{}.weight"
    for layer in (0, 29):
        for m in ("q_proj", "v_proj"):   # exactly the LoRA that was written: q rows back in HF order
            np.testing.assert_allclose(tensors[key.format(layer, m, "B")], lora.b[m][layer], rtol=0, atol=1e-7)
            np.testing.assert_allclose(tensors[key.format(layer, m, "A")], lora.a[m][layer], rtol=0, atol=1e-7)
    info = json.loads((out / "p2p-edge.json").read_text())
    assert info["chat_scale"] == 0.5 and info["hypernet"] == "test-hypernet" and len(info["adapter_sha256"]) == 64


def modelfile_instructions(text: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, with Ollama's triple-quoted multi-line arguments; raises on anything else."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, arg = line.partition(" ")
        assert word.upper() in MODELFILE_INSTRUCTIONS, f"not a Modelfile instruction: {line!r}"
        if arg.startswith('"""'):
            body = arg[3:]
            while not body.endswith('"""'):
                assert i < len(lines), "unterminated triple-quoted argument"
                body += "\n" + lines[i]
                i += 1
            arg = body[:-3]
        out.append((word.upper(), arg))
    return out


def test_ollama_export_is_a_modelfile_whose_paths_resolve(tmp_path, adapter, lora, base_spec, base_model_path):
    out = tmp_path / "ollama"
    export_adapter(adapter, "ollama", out)
    text = (out / "Modelfile").read_text()
    inst = dict(modelfile_instructions(text))
    assert Path(inst["FROM"]) == base_model_path.resolve() and Path(inst["FROM"]).is_file()
    assert inst["ADAPTER"] == "./adapter.gguf" and (out / inst["ADAPTER"]).is_file()
    assert "<|im_start|>assistant" in inst["TEMPLATE"] and "{{ .Prompt }}" in inst["TEMPLATE"]
    assert inst["SYSTEM"] and re.search(r'PARAMETER stop "<\|im_end\|>"', text)
    # Ollama applies an adapter at scale 1: the chat scale (0.5) is baked into B, so it answers as `chat` does
    got, meta = read_adapter(out / "adapter.gguf", base_spec)
    np.testing.assert_allclose(got.b["v_proj"], 0.5 * lora.b["v_proj"], rtol=2e-3, atol=1e-4)   # stored as f16
    np.testing.assert_allclose(got.a["q_proj"], lora.a["q_proj"], rtol=2e-3, atol=1e-4)
    assert meta["chat_scale"] == "1.0" and meta["hypernet"] == "test-hypernet"
    assert private(out / "adapter.gguf") and private(out / "Modelfile")


def test_an_existing_folder_is_never_touched_and_a_failed_export_leaves_nothing(tmp_path, adapter):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="already exists"):
        export_adapter(adapter, "peft", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelFileError):
        export_adapter(bad, "ollama", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "p2p-home", "taken", "user"]   # no temp left
    with pytest.raises(P2PError, match="--format must be one of peft, ollama"):
        export_adapter(adapter, "onnx", tmp_path / "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_adapter(adapter, "peft", empty)   # an empty folder is fine


def test_cli_export_prints_the_files_and_errors_in_one_line(tmp_path, adapter):
    r = CliRunner().invoke(app, ["export", str(adapter), "--format", "ollama", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(tmp_path / "o" / "Modelfile"), str(tmp_path / "o" / "adapter.gguf")]
    r = CliRunner().invoke(app, ["export", str(tmp_path / "nope.gguf"), "--format", "peft", "--out",
                                 str(tmp_path / "p")])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert not (tmp_path / "p").exists()


def test_the_python_api_personalizes_and_chats(llm, use_encoder, random_hypernet_path, tmp_path):
    """The README's Python API: `from p2p_edge import Client`, personalize a history, chat with the adapter."""
    import p2p_edge
    from p2p_edge import Client, adapter_scale, personal_prior

    client = Client(hypernet_path=random_hypernet_path, llm=llm)
    history = Path(__file__).resolve().parents[1] / "examples" / "history.jsonl"
    result = client.personalize(history, summary="Plays guitar; reviews music gear.")
    assert result.adapter == p2p_edge.personalize.user_dir("history") / "adapter.gguf" and result.adapter.is_file()
    assert set(result.timings_ms) >= {"encode", "hypernet", "write", "total"}
    loaded = client.llm.load_adapter(result.adapter)
    try:
        client.llm.use(loaded, scale=adapter_scale(result.adapter))
        client.llm.set_prior(personal_prior(result.adapter))   # the shipped table: a prior beside the adapter
        assert client.llm.prior is not None and result.token_prior == result.adapter.parent / "token_prior.npz"
        reply = client.llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
    finally:
        client.llm.set_prior(None)
        client.llm.use(None)
        client.llm.free(loaded)
    assert reply.strip()
    with pytest.raises(ValueError, match="needs out_dir or user"):
        client.personalize(p2p_edge.personalize.read_history(history))
