"""The benchmark's own logic: scaling/extrapolation, verdicts, report, quality.json shape, and an offline run of
its quality and latency paths on a tiny synthetic corpus with the real llama.cpp model."""

from __future__ import annotations

import json

import pytest

from test_dataset import config, dataset, summaries_for  # noqa: F401  (dataset is a fixture)
from test_privacy import no_network  # noqa: F401  (fixture)

from bench.latency import scaling
from bench.quality import reshape
from bench.report import _verdict, render
from bench.run import findings


def _p2p(n):
    return {"n_users": n, "per_user_ms": {"cold": [{"total": 1000.0}] * n, "warm": [{"total": 50.0}] * n}}


def test_scaling_measures_p2p_and_marks_oppu_extrapolation():
    oppu = {"n_users": 2, "per_user": [{"total_ms": 10_000.0}, {"total_ms": 20_000.0}], "mean_ms": 15_000.0}
    rows = scaling(_p2p(10), oppu, (2, 10, 50))
    assert [r["n_users"] for r in rows] == [2, 10]  # 50 > users timed for P2P: never extrapolate P2P
    assert rows[0] == {"n_users": 2, "p2p_cold_total_s": 2.0, "p2p_warm_total_s": 0.1, "oppu_total_s": 30.0,
                       "oppu_extrapolated": False}
    assert rows[1]["oppu_total_s"] == 150.0 and rows[1]["oppu_extrapolated"]


@pytest.mark.parametrize("metric,ci,word", [("accuracy", [0.1, 0.3], "better"), ("accuracy", [-0.3, -0.1], "worse"),
                                            ("accuracy", [-0.1, 0.2], "tie"), ("mae", [-0.4, -0.1], "better"),
                                            ("mae", [0.1, 0.4], "worse")])
def test_verdict_respects_metric_direction(metric, ci, word):
    assert word in _verdict({metric: sum(ci) / 2, f"{metric}_ci": ci}, metric)


def _quality():
    cat = {"p2p": {"accuracy": 0.7, "accuracy_ci": [0.6, 0.8], "n_users": 10, "n_examples": 40},
           "base": {"accuracy": 0.2, "accuracy_ci": [0.1, 0.3], "n_users": 10, "n_examples": 40}}
    paired = {"cat": {"p2p-base": {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6]},
                      "p2p-oppu": {"accuracy": 0.0, "accuracy_ci": [-0.1, 0.1]},
                      "p2p-mt_lora": {"accuracy": -0.2, "accuracy_ci": [-0.3, -0.1]}}}
    meta = {"hypernet": "h", "queries_per_user_task": 4, "top_k": 2, "n_test_users": {"ood": 10},
            "primary_metric": {"cat": "accuracy"}}
    return {"meta": meta, "quality": {"ood": {"cat": cat}}, "paired": {"ood": paired}}


def test_findings_state_targets_met_and_not_met():
    f = "\n".join(findings(_quality()))
    assert "P2P beats the base model: **met** on cat" in f
    assert "matches or beats OPPU: **met** on cat (tie" in f      # a tie matches OPPU
    assert "beats MT-LoRA: met on no task; not on cat (P2P worse)" in f


def test_report_renders_every_table():
    md = render(None, _quality(), {"command": "python -m bench", "wall_s": 60, "date": "2026-11-26", "commit": "abc",
                                   "quick": False, "findings": findings(_quality())})
    assert "| **p2p** | 0.700 [0.600, 0.800] |" in md
    assert "| cat | p2p-mt_lora (accuracy) | -0.200 [-0.300, -0.100] | P2P worse | 0.143 |" in md
    assert "## Findings" in md and "Quick mode" not in md


def test_reshape_is_split_task_method_with_primary_ci():
    class T:  # the Task fields reshape reads
        metrics = ["mae", "rmse"]
        primary_metric = "mae"

    table = {"p2p": {"r": {"mae": 0.5, "mae_ci": [0.4, 0.6], "rmse": 0.7, "rmse_ci": [0.6, 0.8]}},
             "base": {"r": {"mae": 1.0, "mae_ci": [0.9, 1.1]}}}
    out = reshape(table, {"r": T()})
    assert list(out["r"]) == ["base", "p2p"]  # METHODS order
    assert out["r"]["p2p"]["ci"] == [0.4, 0.6]


@pytest.mark.slow
def test_bench_quality_and_latency_offline(no_network, dataset, tmp_path, use_encoder, random_hypernet_path, llm):  # noqa: F811
    """The benchmark's quality and latency paths on 20 synthetic users, with every internet socket refused."""
    from bench.latency import p2p_latency
    from bench.quality import run_quality
    from p2p_edge.encoder import Encoder
    from p2p_edge.hypernet import Hypernet
    from p2p_edge.personalize import Client
    from p2p_edge.train.dataset import load_corpus

    summaries_for(tmp_path, dataset, {f"user{u:02d}" for u in range(20)})
    encoder = Encoder()
    corpus = load_corpus(config(tmp_path), encoder)
    tests = {s: corpus.splits[s]["test"][:2] for s in ("random", "ood")}
    quality, paired, _, changes = run_quality(corpus, tests, llm=llm, hypernet=Hypernet(random_hypernet_path),
                                              encoder=encoder, mt_lora=None, oppu_adapter_for=None, top_k=2,
                                              log=lambda m: None)
    for split in ("random", "ood"):
        methods = quality[split]["cat"]
        assert {"base", "prior", "rag", "pag", "p2p", "p2p_shuffled", "p2p_summary_only"} <= set(methods)
        assert all(0.0 <= m["accuracy"] <= 1.0 and len(m["ci"]) == 2 for m in methods.values())
        assert "p2p-base" in paired[split]["cat"]
        n_cat = quality[split]["cat"]["p2p"]["n_examples"]
        assert changes[split]["cat"]["n"] == n_cat and 0 <= changes[split]["cat"]["changed"] <= n_cat
    json.dumps(quality)  # quality.json is plain JSON

    client = Client(hypernet_path=random_hypernet_path, llm=llm)
    encoded: list[list[str]] = []
    encode = client.encoder.encode
    client.encoder.encode = lambda texts, **kw: encoded.append(list(texts)) or encode(texts, **kw)
    lat = p2p_latency(client, corpus, corpus.uids[:2], tmp_path, log=lambda m: None)
    # cold: each user's items, summary and profile text are encoded; warm: nothing (all cached by content)
    assert [len(c) for c in encoded[1:3]] == [1, 1] and len(encoded) == 6
    cold, warm = lat["per_user_ms"]["cold"], lat["per_user_ms"]["warm"]
    assert all(r["summary"] > 0 for r in cold) and all(r["total"] > 0 for r in warm)
    assert all(w["summary"] < c["summary"] for c, w in zip(cold, warm))  # the second pass hits the summary cache


def test_plots_write_pngs(tmp_path):
    from bench.plots import latency_plots, quality_plots

    oppu = {"n_users": 2, "per_user": [{"total_ms": 30_000.0}] * 2, "mean_ms": 30_000.0}
    lat = {"machine": {"cpu": "x", "cores": 2, "threads": 2}, "p2p_warm_ms_per_user": 50.0,
           "p2p_cold_ms_per_user": 1500.0, "oppu_ms_per_user": 30_000.0, "oppu_n_users_timed": 2,
           "scaling": scaling(_p2p(10), oppu, (2, 10))}

    class T:  # the Task fields the plots read
        metrics = ["accuracy"]
        primary_metric = "accuracy"

    paths = latency_plots(lat, tmp_path) + quality_plots(_quality()["quality"], {"cat": T()}, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "quality_ood.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in paths)


def test_report_names_the_command_of_each_half():
    q = _quality()
    q["run"] = {"command": "python -m bench", "commit": "abc1234", "date": "2026-11-26", "wall_s": 600}
    md = render(None, q, {"quick": True})
    assert "- Quality: `python -m bench`, 10.0 min, 2026-11-26, commit abc1234" in md
    assert "Quick mode" in md


def test_bench_and_training_never_reach_a_model_hub():
    """HF_HUB_OFFLINE is set before transformers/huggingface_hub could read it (they read it at import)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os, sys; import {m}; assert 'huggingface_hub' not in sys.modules; print(os.environ['HF_HUB_OFFLINE'])")
    for m in ("bench.run", "p2p_edge.train"):
        out = subprocess.run([sys.executable, "-c", code.format(m=m)], env=env, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert out.returncode == 0 and out.stdout.strip() == "1", (m, out.stderr)


def test_bench_bad_config_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bench", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.toml'}: config file not found"]


def test_report_renders_the_profiles_influence():
    q = _quality()
    q["answer_changes"] = {"ood": {"cat": {"n": 40, "changed": 6, "a_right": 4, "b_right": 1, "changed_fraction": 0.15}}}
    md = render(None, q, {"command": "python -m bench", "wall_s": 60, "date": "2026-11-27", "commit": "abc",
                          "quick": False, "findings": []})
    assert "| cat | 6 of 40 (15%) | 4 / 1 |" in md


def test_report_names_the_measured_hypernet_file():
    q = _quality()
    q["run"] = {"command": "python -m bench", "wall_s": 120, "date": "2026-11-27", "commit": "abc + uncommitted changes",
                "hypernet_sha256": "0123456789abcdef" * 4}
    md = render(None, q, {"command": "python -m bench", "wall_s": 60, "date": "2026-11-27", "commit": "abc",
                          "quick": False, "findings": []})
    assert "- Quality: `python -m bench`, 2.0 min, 2026-11-27, commit abc + uncommitted changes, hypernet sha256 " \
           "0123456789ab" in md


def test_a_result_is_headed_by_the_command_that_reruns_it(tmp_path):
    from bench.output import write_result

    seen = []
    write_result(tmp_path / "r", {"x": 1}, lambda r, cmd: seen.append(cmd) or f"`{cmd}`\n", "bench.serve", [])
    write_result(tmp_path / "r", {"x": 1}, lambda r, cmd: seen.append(cmd) or f"`{cmd}`\n", "bench.serve",
                 ["--out", "a b"])
    assert seen == ["python -m bench.serve", "python -m bench.serve --out 'a b'"]   # no trailing blank, quoted
    assert (tmp_path / "r.md").read_text() == "`python -m bench.serve --out 'a b'`\n"
