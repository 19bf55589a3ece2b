"""What a hypernet card claims: P2P minus each control on each task's primary metric, with a verdict from the CI."""

import json
from pathlib import Path

import pytest

from p2p_edge.evaluate import checks, verdict
from p2p_edge.train import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("metric,ci,word", [("accuracy", [0.02, 0.2], "better"), ("accuracy", [-0.2, -0.01], "worse"),
                                            ("accuracy", [-0.06, 0.07], "tie"), ("accuracy", [0.0, 0.1], "tie"),
                                            ("mae", [-0.3, -0.1], "better"), ("mae", [0.02, 0.19], "worse")])
def test_verdict_follows_the_ci_and_the_metric_direction(metric, ci, word):
    assert verdict({metric: sum(ci) / 2, f"{metric}_ci": ci}, metric) == word


def test_verdict_of_an_unscored_metric_is_none():
    assert verdict({"accuracy": 0.1, "accuracy_ci": [0.0, 0.2]}, "mae") is None


def _diffs():
    return {"p2p-mt_lora": {"news_category": {"accuracy": 0.1, "accuracy_ci": [0.02, 0.2],
                                              "macro_f1": -0.3, "macro_f1_ci": [-0.4, -0.2]},
                            "amazon_rating": {"mae": 0.1, "mae_ci": [0.02, 0.19], "accuracy": 0.0,
                                              "accuracy_ci": [0.0, 0.0]}},
            "p2p-p2p_shuffled": {"news_category": {"accuracy": 0.01, "accuracy_ci": [-0.06, 0.07]}}}


def test_checks_use_only_each_tasks_primary_metric():
    c = checks(_diffs(), {"news_category": "accuracy", "amazon_rating": "mae"})
    assert c["p2p-mt_lora"]["news_category"] == {"metric": "accuracy", "diff": 0.1, "ci": [0.02, 0.2], "verdict": "better",
                                                 "detectable": 0.1286}
    assert c["p2p-mt_lora"]["amazon_rating"]["verdict"] == "worse"  # mae up is worse, whatever accuracy says
    assert c["p2p-p2p_shuffled"]["news_category"]["verdict"] == "tie"
    # a task with no primary metric known is left out rather than guessed
    assert checks(_diffs(), {"amazon_rating": "mae"}) == {"p2p-mt_lora": {"amazon_rating": c["p2p-mt_lora"]["amazon_rating"]}}


def test_detectable_difference_scales_with_the_ci_width():
    from p2p_edge.evaluate import detectable

    # 95% CI half-width 1.96 se -> 80% power at 2.80 se
    assert detectable([-0.196, 0.196]) == pytest.approx(0.28)
    assert detectable([0.0, 0.0]) == 0.0
    # four times the users: half the width, half the detectable difference
    assert detectable([-0.049, 0.049]) == pytest.approx(detectable([-0.098, 0.098]) / 2, abs=1e-4)


def test_rerender_adds_checks_and_their_table(tmp_path):
    metrics = {"config": "x", "queries_per_user_task": 4, "part": "test",
               "splits": {"random": {"n_test_users": 3, "methods": {"p2p": {}}, "paired_diffs": _diffs()}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 0
    got = json.loads((tmp_path / "metrics.json").read_text())
    assert got["splits"]["random"]["checks"]["p2p-mt_lora"]["news_category"]["verdict"] == "better"
    assert got["splits"]["random"]["checks"]["p2p-mt_lora"]["amazon_rating"]["metric"] == "mae"
    md = (tmp_path / "report.md").read_text()
    assert "| random | news_category | p2p-mt_lora (accuracy) | +0.100 [0.020, 0.200] | **P2P better** | 0.129 |" in md
    assert "| random | news_category | p2p-p2p_shuffled (accuracy) | +0.010 [-0.060, 0.070] | tie (CI crosses 0) | 0.093 |" in md
    assert "| random | amazon_rating | p2p-mt_lora (mae) | +0.100 [0.020, 0.190] | P2P worse | 0.121 |" in md


def test_rerender_of_a_broken_metrics_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{not json")
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.json" in err
    assert (tmp_path / "metrics.json").read_text() == "{not json"  # nothing rewritten


@pytest.mark.parametrize("content", ["[1, 2]", '{"splits": {"random": {"methods": {}}}}', '{"splits": 3}'])
def test_rerender_of_a_json_that_is_not_a_report_is_a_one_line_error(tmp_path, capsys, content):
    (tmp_path / "metrics.json").write_text(content)
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.json" in err and "not a report" in err
    assert (tmp_path / "metrics.json").read_text() == content and not (tmp_path / "report.md").exists()


def test_scoring_needs_both_checkpoints(tmp_path):
    with pytest.raises(SystemExit):
        report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path)])
