"""bench.headline_copy: the copied-word share and the per-method summary of a report's generation answers."""

import gzip
import json
from pathlib import Path

import pytest

from bench import headline_copy as H
from p2p_edge.eval.task_config import load_config

TASK = load_config(Path(__file__).resolve().parents[1] / "configs" / "tasks.toml").tasks["news_headline"]


def test_copied_share_counts_answer_words_found_in_the_article():
    assert H.copied_share("Trump Golfs Before Tribute", "Trump played a round of golf before paying tribute") == 0.75
    assert H.copied_share("", "anything") is None


def _answers():
    art = {("ds/u1", "Dogs Win"): "the dogs won the match", ("ds/u1", "Cats Nap"): "cats sleep all day",
           ("ds/u2", "Dogs Win"): "the dogs won the match", ("ds/u2", "Cats Nap"): "cats sleep all day"}
    rows = lambda a, b: [["news_headline", a, "Dogs Win"], ["news_headline", b, "Cats Nap"]]  # noqa: E731
    answers = {"base": {"ds/u1": rows("dogs won", "sleep all day"), "ds/u2": rows("the match", "cats nap")},
               "p2p": {"ds/u1": rows("Dogs Win", "Cats Nap"), "ds/u2": rows("Dogs Win", "Cats Nap")},
               "prior": {"ds/u1": [["news_category", "X", "Y"]], "ds/u2": [["news_category", "X", "Y"]]}}
    return answers, art


def test_summary_pairs_users_against_base_and_skips_methods_without_answers():
    answers, art = _answers()
    s = H.summarize(answers, TASK, art)
    assert set(s["methods"]) == {"base", "p2p"}   # the label-only prior has no headline answers
    assert s["methods"]["p2p"]["rouge1"] == 1.0
    assert s["methods"]["p2p"]["minus_base"][0] == pytest.approx(1.0 - s["methods"]["base"]["rouge1"])
    assert s["methods"]["base"]["copied"] == 0.875 and s["target_copied"] == pytest.approx(0.5)


def test_a_method_missing_queries_or_a_target_missing_from_the_data_is_an_error():
    answers, art = _answers()
    answers["p2p"]["ds/u2"] = answers["p2p"]["ds/u2"][:1]
    with pytest.raises(ValueError, match="did not answer every query"):
        H.summarize(answers, TASK, art)
    answers, art = _answers()
    del art[("ds/u2", "Cats Nap")]
    with pytest.raises(ValueError, match="not in the task's dataset"):
        H.summarize(answers, TASK, art)


def test_all_empty_answers_render_a_dash_not_a_crash():
    answers, art = _answers()
    answers["p2p"] = {u: [[t, "", g] for t, _, g in rows] for u, rows in answers["p2p"].items()}
    s = H.summarize(answers, TASK, art)
    assert s["methods"]["p2p"]["copied"] is None
    md = H.render({"task": "news_headline", "reports": {"r": {"dir": "d"} | s}}, "cmd")
    assert "| p2p | 0.000 |" in md and "| – |" in md


def test_the_article_index_keys_by_author_and_keeps_a_repeated_title_latest(tmp_path):
    data = tmp_path / "news.users.jsonl.gz"
    col = "What To Watch This Week"
    users = [{"user_id": "a", "history": [{"id": "1", "time": "2020-01-01", "text": "old", "title": col},
                                          {"id": "2", "time": "2020-02-01", "text": "new", "title": f" {col} "}]},
             {"user_id": "b", "history": [{"id": "3", "time": "2019-01-01", "text": "other", "title": col}]}]
    with gzip.open(data, "wt") as f:
        f.writelines(json.dumps(u) + "\n" for u in users)
    idx = H.article_index(data, TASK)
    assert idx[("news/a", col)] == "new" and idx[("news/b", col)] == "other"


def test_a_file_that_is_not_a_report_is_one_error_naming_it(tmp_path, capsys):
    (tmp_path / "answers_random.json").write_text(json.dumps({"p2p": {}}))
    assert H.main(["--out", str(tmp_path / "o"), f"x={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "answers_random.json") in err and "no base answers" in err
    assert not (tmp_path / "o.md").exists() and not (tmp_path / "o.json").exists()
