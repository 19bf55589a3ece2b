"""The personal token prior: the rule, its files, and that llama.cpp generation really runs under it."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from p2p_edge.errors import ModelFileError
from p2p_edge.token_prior import (POPULATION_FORMAT, Population, TokenPrior, prior_for_adapter, prior_path)

VOCAB = 50


def toy_tokenize(text: str) -> list[int]:
    """Words to ids < VOCAB (stable), as a tokenizer would."""
    return [sum(map(ord, w)) % VOCAB for w in text.split()]


def population(beta=0.5, mu=20.0, seed=0, **meta) -> Population:
    counts = np.random.default_rng(seed).integers(0, 40, VOCAB)
    return Population.from_counts(counts, beta=beta, mu=mu, meta=meta)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("seed", range(5))
def test_sparse_bias_is_the_dirichlet_log_ratio_up_to_a_constant(seed):
    """beta log(p_user / p_pop), p_user = (c + mu p_pop) / (n + mu), and the sparse bias give the same softmax."""
    rng = np.random.default_rng(seed)
    pop = population(beta=rng.uniform(0.1, 1.0), mu=rng.uniform(5, 500), seed=seed)
    counts = rng.integers(0, 6, VOCAB) * (rng.random(VOCAB) < 0.3)
    logits = rng.standard_normal(VOCAB)
    p_user = (counts + pop.mu * pop.p) / (counts.sum() + pop.mu)
    full = logits + pop.beta * np.log(p_user / pop.p)
    np.testing.assert_allclose(softmax(logits + pop.bias_values(counts)), softmax(full), rtol=1e-5)


def test_a_users_prior_covers_exactly_the_tokens_of_their_history():
    pop = population()
    items = [{"title": "red kite", "text": "red red sky"}, {"text": "kite"}]
    prior = pop.prior(items, toy_tokenize, history_sha256="abc")
    used = sorted({toy_tokenize(w)[0] for w in ("red", "kite", "sky")})
    assert prior.ids.tolist() == used and np.all(prior.values > 0)
    assert prior.meta["n_tokens"] == 6 and prior.meta["history_sha256"] == "abc"
    dense = Population.from_counts(np.zeros(VOCAB), beta=0.5, mu=20.0).prior(items, toy_tokenize).dense()
    assert dense[toy_tokenize("red")[0]] > dense[toy_tokenize("sky")[0]] > 0   # even population: 3 uses beat 1
    common = Population.from_counts(np.eye(VOCAB)[toy_tokenize("sky")[0]] * 1e4, beta=0.5, mu=20.0)
    dense_c = common.prior(items, toy_tokenize).dense()
    assert dense_c[toy_tokenize("sky")[0]] < dense_c[toy_tokenize("kite")[0]]   # what everyone writes counts less
    assert np.count_nonzero(dense) == len(used)
    empty = pop.prior([], toy_tokenize)
    assert len(empty) == 0 and not empty.dense().any()   # no history, no prior: the null control


def test_processor_adds_the_bias_in_place_and_leaves_another_vocabulary_alone():
    prior = population().prior([{"text": "red kite"}], toy_tokenize)
    scores = np.zeros(VOCAB, np.float32)
    out = prior.processor(2.0)(None, scores)
    np.testing.assert_allclose(out, prior.dense(2.0))
    other = np.zeros(VOCAB + 1, np.float32)
    assert not prior.processor()(None, other).any()


def test_prior_file_round_trips_privately(tmp_path):
    prior = population().prior([{"text": "red kite sky"}], toy_tokenize, history_sha256="abc", default_on=True)
    path = prior.save(tmp_path / "u" / "token_prior.npz")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = TokenPrior.load(path)
    assert back.ids.tolist() == prior.ids.tolist() and back.vocab == VOCAB
    np.testing.assert_array_equal(back.values, prior.values)
    assert back.meta["history_sha256"] == "abc" and back.meta["default_on"] is True


def test_population_round_trips_and_refuses_another_base(tmp_path):
    pop = population(base_sha256="f" * 64, id="toy")
    back = Population.load(pop.save(tmp_path / "pop.npz"))
    np.testing.assert_allclose(back.p, pop.p)
    assert (back.beta, back.mu, back.meta["id"], back.default_on) == (pop.beta, pop.mu, "toy", False)
    back.check_base("f" * 64, VOCAB)
    for sha, vocab in (("0" * 64, VOCAB), ("f" * 64, VOCAB + 1)):
        with pytest.raises(ModelFileError, match="another base model"):
            back.check_base(sha, vocab, "pop.npz")


@pytest.mark.parametrize("what", ["missing", "garbage", "prior as population", "bad p", "ids out of range"])
def test_broken_files_are_one_line_model_file_errors(tmp_path, what):
    path = tmp_path / "x.npz"
    load = Population.load
    if what == "garbage":
        path.write_bytes(b"not a zip")
    elif what == "prior as population":
        population().prior([{"text": "a b"}], toy_tokenize).save(path)
    elif what == "bad p":
        bad = population()
        bad.p = -bad.p
        bad.save(path)
    elif what == "ids out of range":
        TokenPrior(np.array([3, VOCAB + 5], np.int32), np.ones(2, np.float32), VOCAB).save(path)
        load = TokenPrior.load
    with pytest.raises(ModelFileError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    if what == "prior as population":
        assert POPULATION_FORMAT in msg


def test_a_prior_rides_only_with_the_adapter_of_its_own_history(tmp_path):
    adapter = tmp_path / "u" / "adapter.gguf"
    assert prior_for_adapter(adapter, "abc") is None   # none stored
    population().prior([{"text": "red"}], toy_tokenize, history_sha256="abc").save(prior_path(adapter))
    assert prior_for_adapter(adapter, "abc") is not None
    assert prior_for_adapter(adapter, "other history") is None
    assert prior_for_adapter(adapter, None) is None


# ------------------------------------------------------------------------------------ the real llama.cpp model
@pytest.mark.slow
def test_generation_runs_under_the_prior_and_summaries_never_do(llm):
    """A strong bias on one token makes greedy chat emit it; set_prior(None) gives the base reply back; `complete`
    (summaries, task answers) ignores the prior."""
    msgs = [{"role": "user", "content": "Name a colour."}]
    kw = dict(max_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    base = llm.chat(msgs, **kw)
    target = llm.tokenize(" banana")[0]
    vocab = llm.llm.n_vocab()
    llm.set_prior(TokenPrior(np.array([target], np.int32), np.array([40.0], np.float32), vocab))
    try:
        steered = llm.chat(msgs, **kw)
        assert steered.lower().count("banana") >= 2 and steered != base
        assert llm.complete(msgs, max_tokens=6) == base.strip()
        llm.prior_scale = 0.0   # scale 0 = no prior
        assert llm.chat(msgs, **kw) == base
    finally:
        llm.set_prior(None)
    assert llm.chat(msgs, **kw) == base
    with pytest.raises(ModelFileError, match="vocabulary"):
        llm.set_prior(TokenPrior(np.array([1], np.int32), np.ones(1, np.float32), vocab + 1))


@pytest.mark.slow
def test_llama_cpp_tokenizer_counts_as_the_client_does(base_model_path, llm):
    from p2p_edge.runtime import vocab_tokenizer

    tokenize, n = vocab_tokenizer(base_model_path)
    text = "I bought a capo for my Taylor; it's great.\n\nFive stars: 5/5 ✓"
    assert n == llm.llm.n_vocab() and tokenize(text) == llm.tokenize(text)


def test_the_shipped_population_fits_the_bundled_base_and_says_what_it_does_not_do(base_spec):
    from p2p_edge.token_prior import DEFAULT_POPULATION

    pop = Population.load(DEFAULT_POPULATION)
    pop.check_base(base_spec.sha256, 49152, DEFAULT_POPULATION)
    assert pop.meta["id"] and pop.meta["limits"] and pop.meta["n_users"] > 100
    assert 0 < pop.beta <= 1 and pop.mu > 0
    assert DEFAULT_POPULATION.stat().st_size < 1_000_000
