"""LocalLLM on the real SmolLM2 GGUF: adapters from the (random) hypernet change the logits, swap without reloading
the base and without stale KV state, free cleanly, and bad adapter files never reach llama.cpp.

Logits are read straight from the llama.cpp context (`llama_get_logits_ith(ctx, -1)`) after a decode: that is what
the sampler uses. (`LocalLLM.last_logits` is checked separately: it reads `Llama.scores`, which llama-cpp-python
0.3.x only fills with logits_all=True.)
"""

from __future__ import annotations

import ctypes
import dataclasses
import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from p2p_edge.gguf import write_adapter  # noqa: E402
from p2p_edge.errors import ModelFileError  # noqa: E402
from p2p_edge.hypernet import Hypernet  # noqa: E402

PROMPT = b"<|im_start|>user\nWhat should I cook tonight?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(llm):
    """With other jobs on this 2-core box, llama.cpp's 2-thread barrier can stall a 15-token decode for seconds;
    one thread keeps these tests fast and does not change what they compare (all within one setting)."""
    llama_cpp.llama_set_n_threads(llm.llm.ctx, 1, 1)
    yield
    n = llm.llm.context_params.n_threads
    llama_cpp.llama_set_n_threads(llm.llm.ctx, n, llm.llm.context_params.n_threads_batch)


@pytest.fixture(scope="module")
def toks(llm) -> list[int]:
    return llm.llm.tokenize(PROMPT, special=True)


def _addr(p) -> int:
    return p if isinstance(p, int) else ctypes.cast(p, ctypes.c_void_p).value


def ctx_logits(llm) -> np.ndarray:
    """The last decoded position's logits, as the sampler sees them."""
    ptr = llama_cpp.llama_get_logits_ith(llm.llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.llm.n_vocab(),)).copy()


def fresh_logits(llm, toks) -> np.ndarray:
    llm.llm.reset()
    llm.llm.eval(toks)
    return ctx_logits(llm)


def first_token_logits(llm, toks) -> np.ndarray:
    """Logits behind the first sampled token of llama-cpp-python's own generate(), which reuses the KV cache
    when the prompt matches what it evaluated last (the path chat / complete take)."""
    gen = llm.llm.generate(toks, temp=0.0)
    next(gen)
    gen.close()
    return ctx_logits(llm)


@pytest.fixture(scope="module")
def adapter_files(random_hypernet_path, base_spec, tmp_path_factory):
    """Two adapters from the random hypernet for two different profile embeddings (one f16, one f32)."""
    h = Hypernet(random_hypernet_path)
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("adapters")
    paths = []
    for i, dtype in enumerate(("f16", "f32")):
        e = rng.standard_normal(384).astype(np.float32)
        paths.append(write_adapter(d / f"user{i}.gguf", h.generate(e / np.linalg.norm(e)), base_spec, dtype=dtype))
    return paths


@pytest.fixture
def loaded(llm, adapter_files):
    """Load the two adapters; afterwards free whatever they loaded and put the shared model back to base."""
    before = list(llm._loaded)
    ads = [llm.load_adapter(p) for p in adapter_files]
    yield ads
    llm.use(None)
    for ad in list(llm._loaded):
        if ad not in before:
            llm.free(ad)


@pytest.fixture(scope="module")
def base_logits(llm, toks):
    llm.use(None)
    return fresh_logits(llm, toks)


def test_base_logits_are_deterministic(llm, toks, base_logits):
    assert np.abs(base_logits).max() > 1  # real logits, not a zero buffer
    np.testing.assert_array_equal(fresh_logits(llm, toks), base_logits)


def test_adapter_changes_logits_and_use_none_restores_base_exactly(llm, toks, loaded, base_logits):
    a, b = loaded
    llm.use(a)
    la = fresh_logits(llm, toks)
    assert np.abs(la - base_logits).max() > 0.5
    llm.use(None)
    np.testing.assert_array_equal(fresh_logits(llm, toks), base_logits)
    assert llm.active is None


def test_swapping_gives_each_adapter_its_own_logits(llm, toks, loaded, base_logits):
    a, b = loaded
    llm.use(a)
    la = fresh_logits(llm, toks)
    llm.use(b)
    lb = fresh_logits(llm, toks)
    assert np.abs(la - lb).max() > 0.5
    # deltas from base differ in direction too, not only in size
    assert np.corrcoef(la - base_logits, lb - base_logits)[0, 1] < 0.99
    for ad, want in ((a, la), (b, lb), (a, la), (None, base_logits), (b, lb)):
        llm.use(ad)
        np.testing.assert_array_equal(fresh_logits(llm, toks), want)


def test_repeated_prompt_after_swap_is_not_served_from_stale_kv_cache(llm, toks, loaded):
    a, b = loaded
    llm.use(a)
    la = fresh_logits(llm, toks)
    llm.use(b)
    lb = fresh_logits(llm, toks)

    llm.use(a)
    np.testing.assert_array_equal(first_token_logits(llm, toks), la)
    llm.use(b)  # same prompt again: llama-cpp-python would reuse its cached KV state without use()'s reset
    np.testing.assert_array_equal(first_token_logits(llm, toks), lb)
    llm.use(None)
    llm.use(a)
    np.testing.assert_array_equal(first_token_logits(llm, toks), la)

    # Control (the DESIGN pitfall): swapping through the raw API without a reset IS served from the stale cache,
    # so the checks above can tell the difference.
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(b.handle)
    assert llama_cpp.llama_set_adapters_lora(llm.llm.ctx, arr, 1, (ctypes.c_float * 1)(1.0)) == 0
    stale = first_token_logits(llm, toks)
    assert not np.array_equal(stale, lb)
    np.testing.assert_array_equal(stale, la)
    llm.use(None)


def test_greedy_chat_after_swap_matches_a_fresh_run(llm, loaded):
    """The user-visible form of the pitfall: the same question again after /adapter on|off."""
    a, b = loaded
    msgs = [{"role": "user", "content": "Name one thing to cook tonight, and why."}]

    def fresh(ad):
        llm.use(ad)
        llm.llm.reset()
        return llm.complete(msgs, max_tokens=8)

    ref = {"a": fresh(a), "b": fresh(b), "base": fresh(None)}
    assert len(set(ref.values())) > 1  # the adapters make a visible difference on this prompt
    for name, ad in (("a", a), ("b", b), ("base", None), ("a", a), ("base", None), ("b", b)):
        llm.use(ad)  # no explicit reset: the cached KV state from the previous answer is there
        assert llm.complete(msgs, max_tokens=8) == ref[name], name


def test_loading_adapters_does_not_reload_the_base(llm, adapter_files):
    model_ptr = _addr(llm.llm.model)
    ctx_ptr = _addr(llm.llm.ctx)
    inner = llm.llm
    ads = []
    try:
        for p in adapter_files * 3:
            ads.append(llm.load_adapter(p))  # our validation + llama_adapter_lora_init
            llm.use(ads[-1])
    finally:
        llm.use(None)
        for ad in ads:
            llm.free(ad)
    assert llm.llm is inner
    assert _addr(llm.llm.model) == model_ptr
    assert _addr(llm.llm.ctx) == ctx_ptr
    assert len({_addr(ad.handle) for ad in ads}) == len(ads) and all(_addr(ad.handle) for ad in ads)
    # how fast a load is, is bench/client_latency.py's number (adapter_load_ms_median), not a timed test's
    assert all(ad.load_ms > 0 for ad in ads)


def test_free(llm, toks, adapter_files, base_logits):
    n0 = len(llm._loaded)
    a = llm.load_adapter(adapter_files[0])
    b = llm.load_adapter(adapter_files[1])
    assert len(llm._loaded) == n0 + 2
    llm.use(b)
    lb = fresh_logits(llm, toks)
    llm.free(a)  # not the active one: b stays on
    assert llm.active is b and a not in llm._loaded
    np.testing.assert_array_equal(fresh_logits(llm, toks), lb)
    llm.free(b)  # the active one: back to the base model
    assert llm.active is None and len(llm._loaded) == n0
    np.testing.assert_array_equal(fresh_logits(llm, toks), base_logits)
    llm.free(b)  # a second free is a no-op, not a double free
    assert len(llm._loaded) == n0


def _truncated(path, base):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path, base):
    path.write_bytes(os.urandom(path.stat().st_size))


def _random_bytes_with_magic(path, base):
    path.write_bytes(b"GGUF" + os.urandom(4096))


def _empty(path, base):
    path.write_bytes(b"")


def _flipped_header_bytes(path, base):
    data = bytearray(path.read_bytes())
    for i in range(24, 600, 7):  # inside the metadata: lengths, types, strings
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncated, _random_bytes, _random_bytes_with_magic, _empty, _flipped_header_bytes])
def test_corrupt_adapter_is_refused_before_llama_cpp_sees_it(llm, toks, adapter_files, base_logits, tmp_path,
                                                            monkeypatch, damage, base_spec):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(adapter_files[0].read_bytes())
    damage(bad, base_spec)
    _assert_refused(llm, toks, bad, base_logits, monkeypatch)


def test_adapter_for_another_base_model_is_refused(llm, toks, random_hypernet_path, base_spec, base_logits,
                                                   tmp_path, monkeypatch):
    other = dataclasses.replace(base_spec, sha256="0" * 64, name="some other model")
    lora = Hypernet(random_hypernet_path).generate(np.full(384, 384 ** -0.5, np.float32))
    bad = write_adapter(tmp_path / "other.gguf", lora, other)
    msg = _assert_refused(llm, toks, bad, base_logits, monkeypatch)
    assert "some other model" in msg


def test_missing_adapter_file(llm, tmp_path, monkeypatch, toks, base_logits):
    _assert_refused(llm, toks, tmp_path / "nope.gguf", base_logits, monkeypatch)


def _assert_refused(llm, toks, path, base_logits, monkeypatch) -> str:
    seen = []
    monkeypatch.setattr(llama_cpp, "llama_adapter_lora_init", lambda *a: seen.append(a) or pytest.fail("reached llama.cpp"))
    n0, active = len(llm._loaded), llm.active
    with pytest.raises(ModelFileError) as ei:
        llm.load_adapter(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert not seen and len(llm._loaded) == n0 and llm.active is active
    monkeypatch.undo()
    np.testing.assert_array_equal(fresh_logits(llm, toks), base_logits)  # the process and the model are fine
    return msg


def test_last_logits_returns_the_real_logits(llm, toks, loaded, base_logits):
    llm.use(None)
    np.testing.assert_allclose(llm.last_logits(toks), base_logits)
    llm.use(loaded[0])
    assert np.abs(llm.last_logits(toks) - base_logits).max() > 0.5
