"""A small soak (the CI version of `python -m bench.robustness`'s): many users personalized by one Client, their
adapters swapped in and out of one llama.cpp model; RSS must stay flat and every adapter must give back its own
logits whenever it is swapped in again."""

from __future__ import annotations


def test_soak_many_users_and_swaps_in_one_process(use_encoder, random_hypernet_path, tmp_path):
    from bench.robustness import soak

    # its own single-threaded model: with 2 llama.cpp threads and a busy second core, each evaluation can stall
    # for seconds in llama.cpp's spin barriers (the session `llm` fixture uses 2 threads)
    r = soak(30, 60, workdir=tmp_path, hypernet=random_hypernet_path, threads=1, revisit_every=3, sample_every=10)
    assert r["errors"] == 0, r["error_examples"]
    assert r["personalized"] == 30 and r["users_swapped_in"] == 30
    # the same adapter gives the same logits each time it is swapped back in ...
    assert r["revisits_checked"] == 20 and r["logits_mismatches_on_revisit"] == 0
    assert r["max_abs_logit_diff_on_revisit"] <= 1e-4
    # ... different users' adapters give different logits, and none is silently the base model
    assert r["distinct_user_logits"] == 30 and r["consecutive_users_with_identical_logits"] == 0
    assert r["users_with_logits_equal_to_base"] == 0
    # memory: a leaked adapter (~1 MB each, 90 loads incl. personalize's load checks) would show here
    assert r["rss_growth_after_warmup_mib"] < 20, r["rss_samples"]
    assert r["adapters_still_loaded"] == 0 and not r["adapter_active_at_end"]  # everything freed


def test_threads_also_bound_prompt_evaluation(llm):
    """`--threads N` must hold for prompt evaluation too: llama-cpp-python's n_threads_batch defaults to every core,
    and a 2-thread evaluation next to a busy core stalls for seconds in llama.cpp's spin barriers."""
    params = llm.llm.context_params
    assert params.n_threads_batch == params.n_threads == 2  # the session model is made with n_threads=2
