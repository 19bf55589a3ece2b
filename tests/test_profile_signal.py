"""bench.profile_signal: the non-LLM probe of how much a profile's labels tell, and its power estimate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("scipy")

from bench.profile_signal import Probe, fit_softmax, log_softmax_scores, panel_power  # noqa: E402
from p2p_edge.eval.task import Task  # noqa: E402


def test_softmax_regression_fits_separable_classes():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 5)) * 4
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.standard_normal((300, 5))
    W = fit_softmax(x, y, 3)
    assert (log_softmax_scores(W, x).argmax(1) == y).mean() > 0.95


def test_panel_power_tells_a_real_gain_from_none():
    rng = np.random.default_rng(0)
    own = {f"u{i}": (rng.random(10) < 0.8).astype(float) for i in range(100)}
    worse = {u: (rng.random(10) < 0.3).astype(float) for u in own}
    same = {u: v.copy() for u, v in own.items()}
    assert panel_power(own, worse, 14, panels=50, n_boot=100) > 0.9
    assert panel_power(own, same, 14, panels=50, n_boot=100) == 0.0   # identical answers: CI is [0, 0]


class FakeEncoder:
    """Texts about 'politics' and 'sports' map to two far-apart points; the rest to the middle."""

    def encode(self, texts):
        return np.array([[1.0, 0.0] if "politics" in t else [0.0, 1.0] if "sports" in t else [0.5, 0.5]
                         for t in texts], np.float32)


def fake_corpus():
    task = Task(name="cat", dataset="x", kind="classification", input_fields=("text",), target_field="label",
                prompt="{text}", metrics=("accuracy",), requires=("text", "label"), labels=("Politics", "Sports"))
    profiles, examples = {}, {}
    for u, fav in (("d/pol", "Politics"), ("d/spo", "Sports")):
        profiles[u] = {"items": [{"text": f"{fav.lower()} story {i}", "label": fav} for i in range(8)]}
        # ambiguous queries: only the profile can tell which label this user means
        examples[u] = [SimpleNamespace(task="cat", prompt="ambiguous story", target=fav, item={})] * 3
    return SimpleNamespace(uids=list(profiles), profiles=profiles, examples=examples, tasks={"cat": task})


def test_probe_uses_the_profile_and_a_swapped_profile_hurts():
    probe = Probe(fake_corpus(), "cat", FakeEncoder())
    assert probe.counts["d/pol"].tolist() == [8, 0, 0]
    W, p_train = probe.fit(probe.uids)
    own = probe.answers(W, p_train, probe.uids, beta=1.0, alpha=1.0)
    assert all(p == t for rows in own.values() for _, p, t in rows)
    swapped = probe.answers(W, p_train, probe.uids, beta=1.0, alpha=1.0, donor={"d/pol": "d/spo", "d/spo": "d/pol"})
    assert not any(p == t for rows in swapped.values() for _, p, t in rows)
    beta, _ = probe.choose(W, p_train, probe.uids)
    assert beta > 0   # validation prefers using the profile when it is what decides


def test_read_out_counts_recovers_a_label_mix_the_vector_encodes_and_not_one_it_lacks():
    from bench.profile_signal import read_out_counts

    probe = Probe(fake_corpus(), "cat", FakeEncoder())
    pol, spo = probe.counts["d/pol"], probe.counts["d/spo"]
    clear = read_out_counts(probe, {"d/pol": np.array([1.0, 0.0]), "d/spo": np.array([0.0, 1.0])}, probe.uids, lam=1e-3)
    assert clear["d/pol"].argmax() == pol.argmax() and clear["d/spo"].argmax() == spo.argmax()
    blind = read_out_counts(probe, {"d/pol": np.array([1.0, 1.0]), "d/spo": np.array([1.0, 1.0])}, probe.uids)
    np.testing.assert_allclose(blind["d/pol"], blind["d/spo"])   # same vector: no per-user prior left


def test_a_missing_answers_report_is_a_one_line_error_before_any_encoding(tmp_path, capsys, monkeypatch):
    import p2p_edge.encoder as enc
    from bench.profile_signal import main

    monkeypatch.setattr(enc, "Encoder", lambda *a, **k: pytest.fail("encoded before checking --answers"))
    rc = main(["--config", "configs/train_default.toml", "--task", "news_category", "--out", str(tmp_path / "o"),
               "--answers", str(tmp_path / "no_report")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "answers_random.json" in err
    assert not list(tmp_path.glob("o.*"))
