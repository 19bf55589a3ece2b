"""The adapter llama.cpp runs must do what the LoRA does in torch (where the hypernet is trained).

On the real bundled SmolLM2 GGUF: a random r=8 LoRA on q_proj/v_proj of all layers is applied in torch
(transformers, weights dequantized from the GGUF) and, written with write_adapter, in llama.cpp; the last-token
logit deltas (LoRA - base) must correlate. The sharp check runs llama.cpp on an F32 copy of the base (the same
weights torch sees), because the shipped Q4_1 base adds llama.cpp's own quantization noise (its Q4_1 matmuls
quantize activations too). The q-only check proves the rope row permutation: without it the correlation
collapses.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[train])")
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from gguf import GGUFReader, GGUFValueType, GGUFWriter  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from p2p_edge.gguf import TARGET_MODULES, LoraWeights, write_adapter  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "The best way to spend a rainy Sunday afternoon in a small town is, in my honest opinion,"
RANK, ALPHA, SEED = 8, 16.0, 0
B_STD = 0.1  # logit deltas with std ~1.3 (base logits ~3.6): clearly visible, far from saturating
ALL_F32 = 0  # llama_ftype LLAMA_FTYPE_ALL_F32, for general.file_type


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def f32_base_path(tmp_path_factory, base_model_path):
    return write_f32_copy(base_model_path, tmp_path_factory.mktemp("f32_base") / "base-f32.gguf")


def write_f32_copy(src, dst):
    """The same model as `src` with every tensor dequantized to F32 (metadata copied the way gguf-py's
    gguf_new_metadata.py does), so llama.cpp computes with exactly the weights transformers dequantizes."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # virtual fields, and the one GGUFWriter writes itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = ALL_F32 if field.name == "general.file_type" else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
        if field.name == "general.alignment":
            writer.data_alignment = value
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def hf_model(base_model_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        base_model_path.parent, gguf_file=base_model_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def token_ids(llama_q4) -> list[int]:
    """llama.cpp's token ids for the prompt, fed unchanged to both runtimes so they see identical input
    (llama.cpp's tokenizer loads instantly; transformers' GGUF tokenizer takes seconds)."""
    ids = llama_q4.llm.tokenize(PROMPT.encode(), add_bos=False)
    assert 15 <= len(ids) <= 30
    return ids


@pytest.fixture(scope="module")
def lora(base_spec) -> LoraWeights:
    rng = np.random.default_rng(SEED)
    shapes = base_spec.module_shapes()
    a = {m: (rng.standard_normal((base_spec.n_layers, RANK, i)) / np.sqrt(i)).astype(np.float32)
         for m, (i, _) in shapes.items()}
    b = {m: (B_STD * rng.standard_normal((base_spec.n_layers, o, RANK))).astype(np.float32)
         for m, (_, o) in shapes.items()}
    return LoraWeights(rank=RANK, alpha=ALPHA, a=a, b=b)


def only(lora: LoraWeights, module: str) -> LoraWeights:
    """The same LoRA with every other module's B zeroed (a zero delta there)."""
    b = {m: (arr if m == module else np.zeros_like(arr)) for m, arr in lora.b.items()}
    return LoraWeights(lora.rank, lora.alpha, lora.a, b)


class LlamaRunner:
    """One llama.cpp model; adapters are swapped in with the low-level API, as the runtime does."""

    def __init__(self, path):
        self.llm = llama_cpp.Llama(model_path=str(path), logits_all=False, n_ctx=256, verbose=False, n_threads=2)

    def last_logits(self, ids: list[int], adapter_path=None) -> np.ndarray:
        adapter = None
        if adapter_path is not None:
            adapter = llama_cpp.llama_adapter_lora_init(self.llm.model, str(adapter_path).encode())
            assert adapter, f"llama.cpp refused {adapter_path}"  # NULL is falsy, not None
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            llama_cpp.llama_set_adapters_lora(self.llm.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        try:
            self.llm.reset()  # otherwise the cached KV state is reused and the adapter silently ignored
            self.llm.eval(ids)
            logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
            return np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).copy()
        finally:
            if adapter is not None:
                llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
                llama_cpp.llama_adapter_lora_free(adapter)

    def delta(self, ids, lora: LoraWeights, base, path, permute_q: bool = True) -> np.ndarray:
        write_adapter(path, lora, base, dtype="f32", permute_q=permute_q)
        return self.last_logits(ids, path) - self.last_logits(ids)


@pytest.fixture(scope="module")
def llama_f32(f32_base_path):
    runner = LlamaRunner(f32_base_path)
    yield runner
    runner.llm.close()


@pytest.fixture(scope="module")
def llama_q4(base_model_path):
    runner = LlamaRunner(base_model_path)
    yield runner
    runner.llm.close()


def torch_last_logits(model, ids: list[int], lora: LoraWeights | None = None) -> np.ndarray:
    """Last-token logits, with `lora` added functionally: x @ A.T @ B.T * alpha/r on each target module."""
    hooks = []
    if lora is not None:
        scale = lora.alpha / lora.rank
        for i, layer in enumerate(model.model.layers):
            for m in TARGET_MODULES:
                a, b = torch.from_numpy(lora.a[m][i]), torch.from_numpy(lora.b[m][i])
                hook = lambda mod, inp, out, a=a, b=b: out + scale * (inp[0] @ a.T) @ b.T  # noqa: E731
                hooks.append(getattr(layer.self_attn, m).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].numpy().copy()
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def torch_deltas(hf_model, token_ids, lora) -> dict[str, np.ndarray]:
    base_logits = torch_last_logits(hf_model, token_ids)
    return {
        "q": torch_last_logits(hf_model, token_ids, only(lora, "q_proj")) - base_logits,
        "qv": torch_last_logits(hf_model, token_ids, lora) - base_logits,
    }


@pytest.fixture
def adapter_path(tmp_path):
    return tmp_path / "adapter.gguf"


def compare(label: str, expected: np.ndarray, got: np.ndarray) -> tuple[float, int]:
    """Correlation of the two deltas and how many of the 10 most boosted tokens agree (printed for -s)."""
    corr = float(np.corrcoef(expected, got)[0, 1])
    top10 = len(set(np.argsort(expected)[-10:]) & set(np.argsort(got)[-10:]))
    print(f"\n{label}: correlation {corr:.6f}, top-10 boosted tokens agree {top10}/10, "
          f"torch std {expected.std():.3f}")
    return corr, top10


# --------------------------------------------------------------------------------------------------- tests

def test_base_models_agree(hf_model, token_ids, llama_f32):
    """Sanity for everything below: without an adapter both runtimes compute the same model."""
    corr, _ = compare("base logits, torch vs llama.cpp F32", torch_last_logits(hf_model, token_ids),
                      llama_f32.last_logits(token_ids))
    assert corr > 0.999


def test_q_only_matches_on_f32_base(torch_deltas, llama_f32, token_ids, lora, base_spec, adapter_path):
    got = llama_f32.delta(token_ids, only(lora, "q_proj"), base_spec, adapter_path)
    corr, top10 = compare("q only, F32 base", torch_deltas["q"], got)
    assert corr >= 0.99 and top10 >= 8


def test_q_and_v_match_on_f32_base(torch_deltas, llama_f32, token_ids, lora, base_spec, adapter_path):
    got = llama_f32.delta(token_ids, lora, base_spec, adapter_path)
    corr, top10 = compare("q+v, F32 base", torch_deltas["qv"], got)
    assert corr >= 0.99 and top10 >= 8


def test_q_and_v_match_on_shipped_q4_1_base(torch_deltas, llama_q4, token_ids, lora, base_spec, adapter_path):
    corr, _ = compare("q+v, shipped Q4_1 base", torch_deltas["qv"],
                      llama_q4.delta(token_ids, lora, base_spec, adapter_path))
    assert corr >= 0.95


def test_q_without_rope_permutation_does_not_match(torch_deltas, llama_f32, token_ids, lora, base_spec,
                                                   adapter_path):
    """Proves the parity checks above can fail: dropping the permutation breaks q."""
    got = llama_f32.delta(token_ids, only(lora, "q_proj"), base_spec, adapter_path, permute_q=False)
    corr, _ = compare("q only, F32 base, q NOT permuted", torch_deltas["q"], got)
    assert corr < 0.9


def test_peft_export_matches_llama_cpp_on_f32_base(hf_model, llama_f32, token_ids, lora, base_spec, tmp_path):
    """`p2p-edge export --format peft` of a GGUF adapter, loaded with PeftModel.from_pretrained onto the HF model,
    moves the logits as llama.cpp moves them with the GGUF itself (same bar as the parity tests above)."""
    import copy

    peft = pytest.importorskip("peft")
    from p2p_edge.interop import export_adapter

    gguf_path = tmp_path / "adapter.gguf"
    write_adapter(gguf_path, lora, base_spec, dtype="f32")
    export_adapter(gguf_path, "peft", tmp_path / "peft")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(hf_model), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        peft_logits = model(torch.tensor([token_ids])).logits[0, -1].numpy()
    expected = peft_logits - torch_last_logits(hf_model, token_ids)
    got = llama_f32.last_logits(token_ids, gguf_path) - llama_f32.last_logits(token_ids)
    corr, top10 = compare("PEFT export vs llama.cpp GGUF, F32 base", expected, got)
    assert corr >= 0.99 and top10 >= 8
