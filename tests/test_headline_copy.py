"""bench.headline_copy: the copied-word share and the per-method summary of a report's generation answers."""

import json
from pathlib import Path

import pytest

from bench import headline_copy as H
from p2p_edge.tasks import load_config

TASK = load_config(Path(__file__).resolve().parents[1] / "configs" / "tasks.toml").tasks["news_headline"]


def test_copied_share_counts_answer_words_found_in_the_article():
    assert H.copied_share("Trump Golfs Before Tribute", "Trump played a round of golf before paying tribute") == 0.75
    assert H.copied_share("", "anything") is None


def _answers():
    art = {"Dogs Win": "the dogs won the match", "Cats Nap": "cats sleep all day"}
    rows = lambda a, b: [["news_headline", a, "Dogs Win"], ["news_headline", b, "Cats Nap"]]  # noqa: E731
    answers = {"base": {"u1": rows("dogs won", "sleep all day"), "u2": rows("the match", "cats nap")},
               "p2p": {"u1": rows("Dogs Win", "Cats Nap"), "u2": rows("Dogs Win", "Cats Nap")},
               "prior": {"u1": [["news_category", "X", "Y"]], "u2": [["news_category", "X", "Y"]]}}
    return answers, art


def test_summary_pairs_users_against_base_and_skips_methods_without_answers():
    answers, art = _answers()
    s = H.summarize(answers, TASK, art)
    assert set(s["methods"]) == {"base", "p2p"}   # the label-only prior has no headline answers
    assert s["methods"]["p2p"]["rouge1"] == 1.0
    assert s["methods"]["p2p"]["minus_base"][0] == pytest.approx(1.0 - s["methods"]["base"]["rouge1"])
    assert s["methods"]["base"]["copied"] == 0.875 and s["target_copied"] == pytest.approx(0.5)


def test_a_file_that_is_not_a_report_is_one_error_naming_it(tmp_path, capsys):
    (tmp_path / "answers_random.json").write_text(json.dumps({"p2p": {}}))
    assert H.main(["--out", str(tmp_path / "o"), f"x={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "answers_random.json") in err and "no base answers" in err
    assert not (tmp_path / "o.md").exists()
