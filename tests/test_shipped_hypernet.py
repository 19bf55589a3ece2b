"""The hypernet shipped in the package: fits the size budget, loads for the bundled base model, and its card
states held-out results with every control the issue asks for."""

import json

import numpy as np
import pytest

from p2p_edge.hypernet import DEFAULT_HYPERNET, Hypernet, card_path_for

MAX_BYTES = 20 * 1000 * 1000
CONTROLS = ("p2p-mt_lora", "p2p-p2p_shuffled", "p2p-base", "p2p-prior")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(card_path_for(DEFAULT_HYPERNET).read_text(encoding="utf-8"))


def test_fits_the_package_budget():
    assert DEFAULT_HYPERNET.stat().st_size <= MAX_BYTES


def test_loads_for_the_bundled_base_and_encoder(base_spec):
    h = Hypernet()  # verifies the file against the card's sha256
    h.card.check_base(base_spec)
    lora = h.generate(np.full(h.card.emb_dim, 0.05, dtype=np.float32))
    assert set(lora.a) == set(h.card.modules) == {"q_proj", "v_proj"} and h.card.rank == 8
    assert all(np.isfinite(lora.a[m]).all() and np.isfinite(lora.b[m]).all() for m in lora.a)
    assert any(np.abs(lora.b[m]).max() > 0 for m in lora.b)  # trained: the zero-initialised B head has moved


def report_tasks(card) -> set[str]:
    """The tasks the report scored by decoded answers: the card's `scored_tasks` when it trained on more (a chat
    hypernet's long-form writing tasks are read by bench.chat instead), else every training task."""
    return set(card["metrics"].get("scored_tasks") or card["training"]["tasks"])


def test_card_states_held_out_checks_on_both_splits(card):
    splits = card["metrics"]["splits"]
    assert set(splits) == {"random", "ood"}
    tasks = report_tasks(card)
    for split, r in splits.items():
        assert r["n_test_users"] > 0
        assert {"base", "prior", "mt_lora", "p2p", "p2p_shuffled"} <= set(r["methods"])
        for comp in CONTROLS[:3]:  # the prior only exists for rating / classification tasks
            assert set(r["checks"][comp]) == tasks, (split, comp)
        for by_task in r["checks"].values():
            for c in by_task.values():
                lo, hi = c["ci"]
                assert lo <= c["diff"] <= hi and c["verdict"] in ("better", "worse", "tie") and c["detectable"] >= 0


def test_card_states_what_it_does_outside_the_scored_tasks(card):
    """Every training task is read somewhere on held-out users: by the report, or (long-form writing) by bench.chat,
    whose readings the card then carries with the assistant-preservation bar."""
    writing = set(card["training"]["tasks"]) - report_tasks(card)
    if not writing:
        return
    chat = card["metrics"]["chat"]
    assert writing <= set(chat["writing"]), writing - set(chat["writing"])
    for task in writing:
        own_base = chat["writing"][task]["own_minus_base"]
        assert own_base["ci"][0] <= own_base["diff"] <= own_base["ci"][1]
    p = chat["preservation"]
    assert {"length_ratio", "short_share", "base_short_share", "base_reply_loss_diff"} <= set(p)
    assert card["limits"], "a chat hypernet states in words what it does not do"


def test_card_names_the_weights_it_scored(card):
    # the report scores the checkpoint's fp32 weights: a file stored otherwise must say what was scored
    assert card["onnx"]["dtype"] == "float32" or card["metrics"].get("weights")


def test_the_bench_default_config_builds_the_vectors_it_was_trained_on(card):
    from pathlib import Path

    from p2p_edge.hypernet import HypernetCard
    from p2p_edge.train.config import check_card_profile, load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "train_default.toml")
    check_card_profile(HypernetCard.from_json(card, card_path_for(DEFAULT_HYPERNET)), cfg, "the shipped hypernet")
