"""eval.results_io: the one reader/writer of a report's answers_SPLIT.json."""

from __future__ import annotations

import pytest

from p2p_edge.errors import InputError
from p2p_edge.eval.results_io import answers_path, read_answers, write_answers


def test_answers_round_trip_as_tuples(tmp_path):
    answers = {"p2p": {"u1": [("cat", "A", "B"), ("rate", None, "4")]}, "base": {"u1": [("cat", "B", "B")]}}
    write_answers(tmp_path, "ood", answers)
    assert answers_path(tmp_path, "ood").name == "answers_ood.json"
    assert read_answers(tmp_path, "ood") == answers


@pytest.mark.parametrize("content, fragment", [
    ("{oops", "invalid JSON"),
    ("[1, 2]", "not a report's answers"),
    ('{"p2p": [1]}', "field 'p2p': not a report's answers"),
    ('{"p2p": {"u1": [["cat", "A"]]}}', "field 'p2p': user u1: not [task, answer, target] rows"),
])
def test_a_malformed_answers_file_is_one_error_naming_it(tmp_path, content, fragment):
    answers_path(tmp_path, "random").write_text(content)
    with pytest.raises(InputError, match="answers_random.json") as e:
        read_answers(tmp_path, "random")
    assert fragment in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        read_answers(tmp_path, "ood")
