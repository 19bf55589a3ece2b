"""GGUF LoRA adapter writer/reader: round trips, the q rope permutation, atomic private writes, and the
validator that stands between files on disk and llama.cpp's GGUF parser (no llama.cpp needed here)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p_edge.gguf import (
    GGUF_NAMES,
    TARGET_MODULES,
    LoraWeights,
    export_peft,
    permute_q_rows,
    read_adapter,
    unpermute_q_rows,
    validate_adapter,
    write_adapter,
)
from p2p_edge.base import BaseSpec
from p2p_edge.errors import ModelFileError

TINY = BaseSpec(arch="llama", n_layers=2, hidden=64, n_head=4, n_head_kv=2, head_dim=16, name="tiny",
                sha256="ab" * 32)
S, F32, U32, F64 = GGUFValueType.STRING, GGUFValueType.FLOAT32, GGUFValueType.UINT32, GGUFValueType.FLOAT64


def random_lora(base: BaseSpec = TINY, rank: int = 4, seed: int = 0, alpha: float = 16.0) -> LoraWeights:
    rng = np.random.default_rng(seed)
    shapes = base.module_shapes()
    a = {m: rng.standard_normal((base.n_layers, rank, i), dtype=np.float32) for m, (i, _) in shapes.items()}
    b = {m: rng.standard_normal((base.n_layers, o, rank), dtype=np.float32) for m, (_, o) in shapes.items()}
    return LoraWeights(rank=rank, alpha=alpha, a=a, b=b)


def assert_same_lora(got: LoraWeights, want: LoraWeights, **tol) -> None:
    assert (got.rank, got.alpha) == (want.rank, want.alpha)
    for m in TARGET_MODULES:
        np.testing.assert_allclose(got.a[m], want.a[m], **tol)
        np.testing.assert_allclose(got.b[m], want.b[m], **tol)


@pytest.fixture
def lora() -> LoraWeights:
    return random_lora()


@pytest.fixture
def valid(tmp_path, lora):
    return write_adapter(tmp_path / "valid.gguf", lora, TINY, dtype="f32")


# ------------------------------------------------------------------------------------------- round trips

def test_round_trip_f32_is_exact(tmp_path, lora):
    path = write_adapter(tmp_path / "a.gguf", lora, TINY, dtype="f32", metadata={"user": "u1", "note": "é"})
    got, meta = read_adapter(path, TINY)
    assert_same_lora(got, lora, rtol=0, atol=0)
    assert meta == {"user": "u1", "note": "é"}
    for m in TARGET_MODULES:
        np.testing.assert_allclose(got.delta(m, 1), lora.alpha / lora.rank * lora.b[m][1] @ lora.a[m][1])


def test_round_trip_f16_within_half_precision(tmp_path, lora):
    got, _ = read_adapter(write_adapter(tmp_path / "a.gguf", lora, TINY), TINY)
    assert_same_lora(got, lora, rtol=1e-3, atol=1e-7)


def test_read_without_base_uses_recorded_head_count(valid, lora):
    got, _ = read_adapter(valid)
    assert_same_lora(got, lora, rtol=0, atol=0)


def test_file_layout_is_what_llama_cpp_expects(valid, lora):
    reader = GGUFReader(valid)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert reader.fields["adapter.lora.alpha"].types == [F32] and fields["adapter.lora.alpha"] == 16.0
    assert fields["p2p.base.sha256"] == TINY.sha256 and fields["p2p.lora.rank"] == 4
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(tensors) == 4 * TINY.n_layers
    for m, g in GGUF_NAMES.items():
        stem = f"blk.1.{g}.weight"
        np.testing.assert_array_equal(tensors[f"{stem}.lora_a"], lora.a[m][1])  # (r, in) like PEFT lora_A
        b = permute_q_rows(lora.b[m][1], TINY.n_head) if m == "q_proj" else lora.b[m][1]
        np.testing.assert_array_equal(tensors[f"{stem}.lora_b"], b)  # (out, r); only q's rows permuted


def test_unpermuted_arch_stores_q_as_is(tmp_path, lora):
    qwen = BaseSpec(**{**TINY.to_dict(), "arch": "qwen2"})
    path = write_adapter(tmp_path / "a.gguf", lora, qwen, dtype="f32")
    stored = {t.name: np.array(t.data) for t in GGUFReader(path).tensors}
    np.testing.assert_array_equal(stored["blk.0.attn_q.weight.lora_b"], lora.b["q_proj"][0])
    assert_same_lora(read_adapter(path, qwen)[0], lora, rtol=0, atol=0)


def test_unknown_arch_is_refused_rather_than_guessed(tmp_path, lora):
    other = BaseSpec(**{**TINY.to_dict(), "arch": "mystery"})
    with pytest.raises(ModelFileError, match="permutes q rows"):
        write_adapter(tmp_path / "a.gguf", lora, other)


# ------------------------------------------------------------------------------------------- permutation

def test_permutation_matches_convert_hf_to_gguf_on_a_known_case():
    # one head of 4 rows: HF halves [x0 x1 | y0 y1] -> llama.cpp pairs [x0 y0 x1 y1]
    rows = np.arange(4.0)[:, None]
    assert permute_q_rows(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]
    two_heads = permute_q_rows(np.arange(8.0)[:, None], 2)[:, 0].tolist()
    assert two_heads == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("n_head, head_dim", [(2, 4), (4, 16), (9, 64)])
def test_permutation_is_a_real_permutation_with_exact_inverse(n_head, head_dim):
    rows = np.arange(n_head * head_dim, dtype=np.float64)[:, None] * np.ones((1, 3))
    p = permute_q_rows(rows, n_head)
    assert not np.array_equal(p, rows)
    assert sorted(p[:, 0]) == list(rows[:, 0])
    np.testing.assert_array_equal(unpermute_q_rows(p, n_head), rows)
    np.testing.assert_array_equal(permute_q_rows(unpermute_q_rows(rows, n_head), n_head), rows)


def test_permutation_rejects_odd_head_split():
    with pytest.raises(ValueError):
        permute_q_rows(np.zeros((12, 2)), 4)


# ------------------------------------------------------------------------------------------ file writing

def test_file_is_private(valid):
    assert os.stat(valid).st_mode & 0o777 == 0o600


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, lora, monkeypatch):
    path = write_adapter(tmp_path / "a.gguf", lora, TINY)
    before = path.read_bytes()

    def boom(self, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_adapter(path, random_lora(seed=1), TINY)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.gguf"]


@pytest.mark.parametrize("mutate, message", [
    (lambda lw: lw.a["q_proj"].__setitem__((0, 0, 0), np.nan), "NaN/Inf"),
    (lambda lw: lw.b["v_proj"].__setitem__((1, 0, 0), 1e6), "NaN/Inf"),  # overflows f16
    (lambda lw: lw.a.__setitem__("q_proj", lw.a["q_proj"][:, :, :-1]), "shape"),
    (lambda lw: lw.b.pop("v_proj"), "modules"),
    (lambda lw: setattr(lw, "alpha", 0.0), "alpha"),
    (lambda lw: setattr(lw, "rank", 0), "rank"),
])
def test_write_refuses_weights_that_do_not_fit(tmp_path, lora, mutate, message):
    mutate(lora)
    with pytest.raises(ModelFileError, match=message):
        write_adapter(tmp_path / "a.gguf", lora, TINY)
    assert not os.listdir(tmp_path)


def test_write_rejects_bad_arguments(tmp_path, lora):
    with pytest.raises(ValueError, match="dtype"):
        write_adapter(tmp_path / "a.gguf", lora, TINY, dtype="q4_0")
    with pytest.raises(ValueError, match="metadata"):
        write_adapter(tmp_path / "a.gguf", lora, TINY, metadata={"n": 3})


# -------------------------------------------------------------------------------------------- validation

def base_kv(rank: int = 4) -> dict:
    return {
        "general.type": ("adapter", S), "adapter.type": ("lora", S), "adapter.lora.alpha": (16.0, F32),
        "p2p.base.sha256": (TINY.sha256, S), "p2p.base.name": ("tiny", S),
        "p2p.base.n_layers": (2, U32), "p2p.base.n_head": (4, U32), "p2p.lora.rank": (rank, U32),
    }


def tensors_of(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


def craft(path, tensors: dict, kv: dict | None = None, arch: str = "llama"):
    """Write a GGUF with exactly these KV pairs ((value, type[, array element type]); None drops a key)
    and tensors."""
    writer = GGUFWriter(path, arch=arch)
    for key, spec in {**base_kv(), **(kv or {})}.items():
        if spec is not None:
            writer.add_key_value(key, *spec)
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


Q0A, Q0B, V1B = "blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.1.attn_v.weight.lora_b"
OTHER_SHA = {"p2p.base.sha256": ("cd" * 32, S), "p2p.base.name": ("Other-1B", S)}
FOREIGN = {k: None for k in ("p2p.base.sha256", "p2p.base.name", "p2p.base.n_layers", "p2p.base.n_head",
                             "p2p.lora.rank")}


@pytest.mark.parametrize("kv, edit, arch, message", [
    ({"general.type": ("model", S)}, None, "llama", "not 'adapter'"),
    ({"general.type": None}, None, "llama", "missing metadata 'general.type'"),
    ({"adapter.type": ("ia3", S)}, None, "llama", "not 'lora'"),
    ({"adapter.lora.alpha": None}, None, "llama", "missing metadata 'adapter.lora.alpha'"),
    ({"adapter.lora.alpha": (0.0, F32)}, None, "llama", "> 0"),
    ({"adapter.lora.alpha": (-2.0, F32)}, None, "llama", "> 0"),
    ({"adapter.lora.alpha": (float("nan"), F32)}, None, "llama", "finite"),
    ({"adapter.lora.alpha": (16.0, F64)}, None, "llama", "expected FLOAT32"),
    ({"general.type": (7, U32)}, None, "llama", "expected STRING"),
    ({"general.type\0x": (7, U32)}, None, "llama", "control character"),  # aborts llama.cpp (C-string key lookup)
    ({"general.archi\necture": (7, U32)}, None, "llama", "control character"),  # found by the fuzzer: 2-line error
    ({}, None, "qwen2", "architecture 'qwen2'"),
    (OTHER_SHA, None, "llama", r"made for base model Other-1B \(sha cdcdcdcdcdcd…\), not tiny"),
    ({"p2p.base.n_layers": (3, U32)}, None, "llama", "n_layers"),
    ({"p2p.lora.rank": (8, U32)}, None, "llama", "rank is 8"),
    ({"adapter.alora.invocation_tokens": ([1, 2], GGUFValueType.ARRAY)}, None, "llama", "aLoRA"),
    ({"general.alignment": (24, U32)}, None, "llama", "power of two"),
    ({}, lambda t: {**t, "blk.0.attn_k.weight.lora_a": t[Q0A]}, "llama", "unexpected tensor"),
    ({}, lambda t: {**t, "token_embd.weight": t[Q0A]}, "llama", "unexpected tensor"),
    ({}, lambda t: {**t, "blk.01.attn_q.weight.lora_a": t[Q0A]}, "llama", "unexpected tensor"),
    ({}, lambda t: without(t, Q0B), "llama", "only one of lora_a/lora_b"),
    ({}, lambda t: {**t, Q0A: t[Q0A].T.copy()}, "llama", "do not fit"),
    ({}, lambda t: {**t, V1B: t[V1B][:-1]}, "llama", "do not fit"),
    ({}, lambda t: {**t, Q0A: t[Q0A][None]}, "llama", "2-D"),
    ({}, lambda t: {**t, Q0A: t[Q0A].astype(np.float64)}, "llama", "dtype F64"),
    ({}, lambda t: {**t, Q0A: t[Q0A].astype(np.int32)}, "llama", "dtype I32"),
    ({}, lambda t: {**t, "blk.2.attn_q.weight.lora_a": t[Q0A], "blk.2.attn_q.weight.lora_b": t[Q0B]},
     "llama", "layer 2"),
    ({}, lambda t: {**t, V1B: np.where(np.arange(t[V1B].size).reshape(t[V1B].shape) == 3, np.inf, t[V1B])
                    .astype(np.float32)}, "llama", "NaN/Inf"),
    ({}, lambda t: without(t, "blk.1.attn_v.weight.lora_a", V1B), "llama", "missing, e.g. layer 1 v_proj"),
    ({}, lambda t: {}, "llama", "no LoRA tensors"),
    (FOREIGN, lambda t: {**t, Q0A: t[Q0A][:2], Q0B: t[Q0B][:, :2]}, "llama", "different ranks"),
])
def test_invalid_adapters_raise_one_line_model_file_error(tmp_path, valid, kv, edit, arch, message):
    tensors = tensors_of(valid)
    path = craft(tmp_path / "bad.gguf", edit(tensors) if edit else tensors, kv, arch=arch)
    with pytest.raises(ModelFileError, match=message) as err:
        validate_adapter(path, TINY)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_foreign_subset_is_accepted_with_zeros(tmp_path, valid, lora):
    only_q1 = {k: v for k, v in tensors_of(valid).items() if k.startswith("blk.1.attn_q")}
    got, meta = read_adapter(craft(tmp_path / "f.gguf", only_q1, FOREIGN), TINY)
    assert meta == {} and got.rank == 4
    np.testing.assert_array_equal(got.b["q_proj"][1], lora.b["q_proj"][1])
    for arr in (got.a["q_proj"][0], got.b["v_proj"], got.a["v_proj"]):
        assert not arr.any()


def test_foreign_llama_adapter_needs_base_for_q(tmp_path, valid):
    path = craft(tmp_path / "f.gguf", tensors_of(valid), FOREIGN)
    with pytest.raises(ModelFileError, match="head count"):
        read_adapter(path)
    assert read_adapter(path, TINY)[0].a["q_proj"].shape == (2, 4, 64)


def test_foreign_adapter_without_base_has_only_its_modules(tmp_path, valid):
    only_v = {k: v for k, v in tensors_of(valid).items() if ".attn_v." in k}
    got, _ = read_adapter(craft(tmp_path / "f.gguf", only_v, FOREIGN))
    assert set(got.a) == {"v_proj"} and got.b["v_proj"].shape == (2, 32, 4)


@pytest.mark.parametrize("content, message", [
    (b"", "not a GGUF"), (b"hello world, not a model", "not a GGUF"), (b"GGUF", "truncated"),
    (b"GGUF\x01\x00\x00\x00" + bytes(16), "version 1"), (b"GGUF\x00\x00\x00\x03" + bytes(16), "version"),
])
def test_junk_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        read_adapter(path, TINY)


def test_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        read_adapter(tmp_path / "nope.gguf", TINY)


@pytest.mark.parametrize("cut", [10, 30, 100, 400, -1])
def test_truncated_files_are_rejected(tmp_path, valid, cut):
    path = tmp_path / "cut.gguf"
    path.write_bytes(valid.read_bytes()[:cut])
    with pytest.raises(ModelFileError, match="truncated"):
        read_adapter(path, TINY)


def patch_u64(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8:]


def value_offset(data: bytes, key: str) -> int:
    """Offset of the value right after `key` and its u32 type tag."""
    return data.index(key.encode()) + len(key) + 4


def test_absurd_counts_and_lengths_are_rejected_quickly(tmp_path, valid):
    data = valid.read_bytes()
    # a u8 array with a length of 2**40 makes gguf-py's own GGUFReader spin
    arr_kv = {"tokenizer.ids": ([1, 2, 3], GGUFValueType.ARRAY, GGUFValueType.UINT8)}
    arr_path = craft(tmp_path / "arr.gguf", tensors_of(valid), arr_kv)
    read_adapter(arr_path, TINY)  # foreign metadata arrays are fine as such
    arr = arr_path.read_bytes()
    cases = {
        "tensors": (patch_u64(data, 8, 1 << 62), "implausible header"),
        "kv": (patch_u64(data, 16, 1 << 40), "implausible header"),
        "string": (patch_u64(data, value_offset(data, "p2p.base.name"), 1 << 60), "truncated"),
        "array": (patch_u64(arr, value_offset(arr, "tokenizer.ids") + 4, 1 << 40), "truncated"),
        "key": (patch_u64(data, 24, 1 << 50), "truncated"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=message):
            read_adapter(path, TINY)


def test_misplaced_tensor_data_is_rejected(tmp_path, valid):
    data = valid.read_bytes()
    name = b"blk.0.attn_q.weight.lora_b"
    offset_at = data.index(name) + len(name) + 4 + 2 * 8 + 4  # n_dims, 2 dims, type -> offset
    path = tmp_path / "moved.gguf"
    path.write_bytes(patch_u64(data, offset_at, 64))
    with pytest.raises(ModelFileError, match="expected"):
        read_adapter(path, TINY)


# ------------------------------------------------------------------------------------------- properties

@st.composite
def specs_and_loras(draw):
    n_head_kv = draw(st.integers(1, 3))
    n_head = n_head_kv * draw(st.integers(1, 3))
    base = BaseSpec(arch=draw(st.sampled_from(["llama", "qwen2"])), n_layers=draw(st.integers(1, 3)),
                    hidden=draw(st.integers(1, 24)), n_head=n_head, n_head_kv=n_head_kv,
                    head_dim=2 * draw(st.integers(1, 4)), name="h", sha256="0" * 64)
    rank = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-4, 1.0, 1e3]))
    arrays = {m: ((base.n_layers, rank, i), (base.n_layers, o, rank)) for m, (i, o) in base.module_shapes().items()}
    lora = LoraWeights(
        rank=rank, alpha=draw(st.floats(0.125, 64.0, width=32)),
        a={m: (scale * rng.standard_normal(sa)).astype(np.float32) for m, (sa, _) in arrays.items()},
        b={m: (scale * rng.standard_normal(sb)).astype(np.float32) for m, (_, sb) in arrays.items()},
    )
    return base, lora


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=specs_and_loras(), dtype=st.sampled_from(["f16", "f32"]))
def test_round_trip_property(tmp_path, case, dtype):
    base, lora = case
    got, _ = read_adapter(write_adapter(tmp_path / "p.gguf", lora, base, dtype=dtype), base)
    cast = np.float16 if dtype == "f16" else np.float32
    expected = LoraWeights(lora.rank, lora.alpha, {m: v.astype(cast).astype(np.float32) for m, v in lora.a.items()},
                           {m: v.astype(cast).astype(np.float32) for m, v in lora.b.items()})
    assert_same_lora(got, expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> tuple[bytes, int]:
    """A small valid adapter and the offset where its tensor data starts (the header is the interesting part)."""
    path = write_adapter(tmp_path_factory.mktemp("fuzz") / "v.gguf", random_lora(rank=2), TINY)
    data = path.read_bytes()
    header_end = GGUFReader(path).data_offset
    return data, header_end


mutation = st.one_of(
    st.tuples(st.just("byte"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("u64"), st.floats(0, 1), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])),
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
)


def mutate(data: bytes, header_end: int, ops, header_only: bool) -> bytes:
    buf = bytearray(data)
    for kind, where, value in ops:
        span = header_end if header_only else len(buf)
        pos = min(int(where * span), max(len(buf) - 1, 0))
        if kind == "byte" and buf:
            buf[pos] = value
        elif kind == "u64" and pos + 8 <= len(buf):
            buf[pos:pos + 8] = struct.pack("<Q", value)
        elif kind == "cut":
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(mutation, min_size=1, max_size=4), header_only=st.booleans(), with_base=st.booleans())
def test_mutated_files_never_raise_anything_but_model_file_error(tmp_path_factory, valid_bytes, ops, header_only,
                                                                  with_base):
    data, header_end = valid_bytes
    path = tmp_path_factory.getbasetemp() / "fuzzed.gguf"
    path.write_bytes(mutate(data, header_end, ops, header_only))
    try:
        got, _ = read_adapter(path, TINY if with_base else None)
    except ModelFileError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        return
    shapes = TINY.module_shapes()
    for m, arr in got.a.items():
        assert arr.shape == (TINY.n_layers, got.rank, shapes[m][0]) and np.isfinite(arr).all()
        assert got.b[m].shape == (TINY.n_layers, shapes[m][1], got.rank) and np.isfinite(got.b[m]).all()
    assert got.alpha > 0


# ------------------------------------------------------------------------------------------------ PEFT

def test_export_peft_layout(tmp_path, lora):
    from safetensors.numpy import load_file

    out = export_peft(lora, tmp_path / "peft", "tiny/base")
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(TARGET_MODULES) * TINY.n_layers
    prefix = "base_model.model.model.layers.1.self_attn"
    assert tensors[f"{prefix}.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors[f"{prefix}.q_proj.lora_B.weight"].shape == (64, 4)
    assert tensors[f"{prefix}.v_proj.lora_B.weight"].shape == (32, 4)
    np.testing.assert_array_equal(tensors[f"{prefix}.q_proj.lora_B.weight"], lora.b["q_proj"][1])  # HF row order
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16.0
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["base_model_name_or_path"] == "tiny/base"
    assert {os.stat(p).st_mode & 0o777 for p in out.iterdir()} == {0o600}


def test_export_peft_loads_in_peft_with_the_same_delta(tmp_path, lora):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=TINY.hidden, intermediate_size=32,
                                      num_hidden_layers=TINY.n_layers, num_attention_heads=TINY.n_head,
                                      num_key_value_heads=TINY.n_head_kv, head_dim=TINY.head_dim)
    model = transformers.LlamaForCausalLM(config).eval()
    before = {m: getattr(model.model.layers[1].self_attn, m).weight.detach().clone() for m in TARGET_MODULES}
    merged = peft.PeftModel.from_pretrained(model, export_peft(lora, tmp_path / "peft", "tiny")).merge_and_unload()
    for m in TARGET_MODULES:
        after = getattr(merged.model.layers[1].self_attn, m).weight.detach()
        torch.testing.assert_close(after - before[m], torch.from_numpy(lora.delta(m, 1)), rtol=1e-4, atol=1e-5)


def test_a_control_character_in_a_tensor_name_still_gives_one_line(tmp_path, valid):
    """Found by the fuzz test above: a name from the file is quoted in the error, so it is escaped there."""
    data = valid.read_bytes().replace(b"blk.1.attn_q.weight.lora_a", b"blk.1.att\n_q.weight.lora_a", 1)
    bad = tmp_path / "newline.gguf"
    bad.write_bytes(data)
    with pytest.raises(ModelFileError) as e:
        read_adapter(bad, TINY)
    assert "\n" not in str(e.value) and "att\\n_q" in str(e.value)
