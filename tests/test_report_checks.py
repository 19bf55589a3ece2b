"""What a hypernet card claims: P2P minus each control on each task's primary metric, with a verdict from the CI."""

import json
from pathlib import Path

import pytest

from p2p_edge.eval.stats import checks, verdict
from p2p_edge.lab import report

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
    from p2p_edge.eval.stats import detectable

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


def test_scoring_needs_a_hypernet_checkpoint(tmp_path):
    with pytest.raises(SystemExit):  # --mt-lora alone is not enough; --p2p alone is (a k-fold run has no control)
        report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path),
                     "--mt-lora", str(tmp_path / "m.pt")])


def test_a_report_without_the_mt_lora_control_renders_without_its_rows(tmp_path):
    diffs = {k: v for k, v in _diffs().items() if k != "p2p-mt_lora"}
    metrics = {"config": "x", "queries_per_user_task": 4, "part": "test", "checkpoints": {"p2p": "p", "mt_lora": None},
               "splits": {"random": {"n_test_users": 3, "methods": {"p2p": {}}, "paired_diffs": diffs}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "p2p-p2p_shuffled (accuracy)" in md and "mt_lora" not in md


class _Kind:
    def __init__(self, kind):
        self.kind = kind


def _answers():
    return {"p2p": {"u1": [["cat", "A", "A"], ["cat", "B", "C"], ["gen", "a title", "x"]],
                    "u2": [["cat", "C", "C"], ["cat", None, "A"]]},
            "p2p_shuffled": {"u1": [["cat", "B", "A"], ["cat", "B", "C"], ["gen", "other", "x"]],
                             "u2": [["cat", "A", "C"], ["cat", "A", "A"]]}}


def test_answer_changes_count_what_the_profile_moves():
    from p2p_edge.eval.stats import answer_changes

    got = answer_changes(_answers(), "p2p", "p2p_shuffled", {"cat": _Kind("classification"), "gen": _Kind("generation")})
    # cat: 4 queries, 3 changed; own profile right on 2 of them (u1 q1, u2 q1), shuffled on 1 (u2 q2; None is wrong)
    assert got["cat"] == {"n": 4, "changed": 3, "a_right": 2, "b_right": 1, "changed_fraction": 0.75}
    assert got["gen"] == {"n": 1, "changed": 1, "changed_fraction": 1.0}  # exact match means nothing for free text


def test_answer_changes_refuse_misaligned_answers():
    from p2p_edge.eval.stats import answer_changes

    a = _answers()
    a["p2p_shuffled"]["u2"][0][2] = "B"  # another target: not the same query
    with pytest.raises(ValueError, match="u2"):
        answer_changes(a, "p2p", "p2p_shuffled", {"cat": _Kind("classification"), "gen": _Kind("generation")})
    a = _answers()
    a["p2p_shuffled"]["u1"].pop()
    with pytest.raises(ValueError, match="u1"):
        answer_changes(a, "p2p", "p2p_shuffled", {"cat": _Kind("classification"), "gen": _Kind("generation")})


def test_rerender_with_answers_states_the_profiles_influence(tmp_path):
    metrics = {"config": "x", "queries_per_user_task": 4, "part": "test",
               "splits": {"random": {"n_test_users": 2, "methods": {"p2p": {}}, "paired_diffs": _diffs()}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    ans = {"p2p": {"u": [["news_category", "POLITICS", "POLITICS"], ["news_category", "SPORTS", "POLITICS"]]},
           "p2p_shuffled": {"u": [["news_category", "SPORTS", "POLITICS"], ["news_category", "SPORTS", "POLITICS"]]}}
    (tmp_path / "answers_random.json").write_text(json.dumps(ans))
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 0
    got = json.loads((tmp_path / "metrics.json").read_text())["splits"]["random"]["answer_changes"]
    assert got["news_category"] == {"n": 2, "changed": 1, "a_right": 1, "b_right": 0, "changed_fraction": 0.5}
    assert "| random | news_category | 1 of 2 (50%) | 1 / 0 |" in (tmp_path / "report.md").read_text()


def test_rerender_with_broken_answers_names_that_file(tmp_path, capsys):
    metrics = {"splits": {"random": {"n_test_users": 2, "methods": {"p2p": {}}, "paired_diffs": _diffs()}},
               "queries_per_user_task": 4}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "answers_random.json").write_text('{"p2p": ')
    assert report.main(["--config", str(ROOT / "configs/train_default.toml"), "--out", str(tmp_path), "--rerender"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "answers_random.json" in err
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # nothing rewritten


# ----------------------------------------------------------------------------------------------- --reuse
def _earlier_report(tmp_path, ckpt, config):
    """An earlier report's files for 2 users scored with checkpoint `ckpt` (written after it). As in real reports,
    the prior answers label tasks only, grouped by task."""
    prev = tmp_path / "report"
    prev.mkdir()
    rows = {"u1": [["cat", "A", "A"], ["gen", "t", "x"], ["cat", "B", "B"]], "u2": [["cat", "B", "C"]]}
    ans = {m: rows for m in ("base", "p2p", "p2p_shuffled", "mt_lora")}
    ans["prior"] = {"u1": [["cat", "A", "A"], ["cat", "A", "B"]], "u2": [["cat", "C", "C"]]}
    for split in ("random", "ood"):
        (prev / f"answers_{split}.json").write_text(json.dumps(ans))
    (prev / "metrics.json").write_text(json.dumps({"config": str(config), "part": "test", "queries_per_user_task": 4,
                                                   "checkpoints": {"p2p": str(ckpt), "mt_lora": "old.pt"}}))
    return prev


def _reuse(prev, ckpt, cfg, **over):
    kw = dict(config=cfg, p2p=ckpt, part="test", queries_per_user_task=4,
              users_of={"random": ["u1", "u2"], "ood": ["u1", "u2"]},
              queries={"u1": [("cat", "A"), ("gen", "x"), ("cat", "B")], "u2": [("cat", "C")]})
    return report.reused_answers(prev, **(kw | over))


@pytest.fixture
def run_files(tmp_path):
    ckpt, config = tmp_path / "last.pt", tmp_path / "config.toml"
    ckpt.write_bytes(b"x")
    config.write_text("")
    return ckpt, config


def test_reuse_takes_the_llm_answers_but_not_the_controls_or_the_prior(tmp_path, run_files):
    got = _reuse(_earlier_report(tmp_path, *run_files), *run_files)
    assert set(got) == {"random", "ood"}
    # the control is rescored from --mt-lora; the prior (no LLM) is recomputed with this run's users
    assert set(got["ood"]) == {"base", "p2p", "p2p_shuffled"}
    assert got["random"]["p2p"]["u1"] == [("cat", "A", "A"), ("gen", "t", "x"), ("cat", "B", "B")]


@pytest.mark.parametrize("change,field", [
    ({"part": "val"}, "part"),
    ({"queries_per_user_task": 8}, "queries_per_user_task"),
    ({"config": Path("/elsewhere/config.toml")}, "config"),
    ({"users_of": {"random": ["u1"], "ood": ["u1", "u2"]}}, "base"),
    ({"users_of": {"random": ["u2", "u1"], "ood": ["u1", "u2"]}}, "base"),  # donors follow the order
    ({"queries": {"u1": [("cat", "A"), ("gen", "y"), ("cat", "B")], "u2": [("cat", "C")]}}, "base"),
])
def test_reuse_refuses_other_users_queries_or_protocol(tmp_path, run_files, change, field):
    with pytest.raises(report.InputError, match=f"field '{field}'"):
        _reuse(_earlier_report(tmp_path, *run_files), *run_files, **change)


def test_reuse_refuses_another_or_a_retrained_checkpoint(tmp_path, run_files):
    import os

    ckpt, config = run_files
    other = tmp_path / "other.pt"
    other.write_bytes(b"y")
    prev = _earlier_report(tmp_path, ckpt, config)
    with pytest.raises(report.InputError, match="this run .*other.pt"):
        _reuse(prev, other, config)
    st = (prev / "answers_random.json").stat()
    os.utime(ckpt, (st.st_atime, st.st_mtime + 10))  # retrained after the answers were scored...
    os.utime(prev / "metrics.json", (st.st_atime, st.st_mtime + 20))  # ...and the report re-rendered since
    with pytest.raises(report.InputError, match="answers_random.json: .*rewritten after"):
        _reuse(prev, ckpt, config)


def test_reuse_of_a_missing_or_broken_report_names_the_file(tmp_path, run_files):
    with pytest.raises(report.InputError, match="metrics.json"):
        _reuse(tmp_path, *run_files)
    prev = _earlier_report(tmp_path, *run_files)
    (prev / "answers_ood.json").write_text("{not json")
    with pytest.raises(report.InputError, match="answers_ood.json: invalid JSON"):
        _reuse(prev, *run_files)


def _run_dir(tmp_path, split, train):
    from p2p_edge.eval.splits import save_splits

    run = tmp_path / "run"
    run.mkdir()
    users = ["a", "b", "c", "d", "e", "f"]
    parts = {"train": train, "val": [], "test": [u for u in users if u not in train]}
    save_splits(run / "splits.json", {"random": parts, "ood": parts})
    (run / "config.json").write_text(json.dumps({"split": split}))
    return run / "last.pt"


def test_a_checkpoint_is_never_scored_on_users_its_run_trained_on(tmp_path):
    ckpt = _run_dir(tmp_path, "both", ["a", "b", "c", "d"])
    report.check_not_trained_on(ckpt, ["e", "f"])
    with pytest.raises(report.InputError, match="trained on 1 of the users scored here, e.g. c"):
        report.check_not_trained_on(ckpt, ["c", "e"])   # e.g. another fold's control
    report.check_not_trained_on(tmp_path / "elsewhere" / "last.pt", ["c"])   # no record of its run: trusted


def test_score_split_takes_known_answers_instead_of_rescoring(monkeypatch):
    from p2p_edge.eval import answer as evaluate

    def no_llm(*a, **k):
        raise AssertionError("rescored a known answer")

    monkeypatch.setattr(evaluate, "run_adapter_method", no_llm)
    other = {"u1": [("cat", "B", "A")], "u2": [("cat", "C", "C")]}
    monkeypatch.setattr(evaluate, "prior_answers", lambda *a: other)   # no LLM: always recomputed

    class Task:
        kind, primary_metric = "classification", "accuracy"

        def score(self, preds, targs):
            return {"accuracy": sum(p == t for p, t in zip(preds, targs)) / len(preds)}

    class Corpus:
        tasks = {"cat": Task()}

    own = {"u1": [("cat", "A", "A")], "u2": [("cat", "C", "C")]}
    ans, table, diffs = evaluate.score_split(None, Corpus(), ["u1", "u2"], {"p2p": own}, None, None, {},
                                             train_uids=[], val_uids=[], compare=("p2p_shuffled", "prior"),
                                             known={"p2p_shuffled": other})
    assert ans["p2p_shuffled"] is other and diffs["p2p-p2p_shuffled"]["cat"]["accuracy"][0] == 0.5


def test_report_heading_names_the_scored_checkpoint_not_the_shipped_one():
    md = report.render_markdown({"checkpoints": {"p2p": "runs/folds/f0/p2p/last.pt"}, "queries_per_user_task": 4,
                                 "splits": {}})
    assert md.splitlines()[0] == "# Hypernet `runs/folds/f0/p2p/last.pt` on held-out users"
