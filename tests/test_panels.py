"""bench.panels: the profile effect on each panel of held-out users, read from two reports' saved answers."""

from __future__ import annotations

import json

import pytest

from bench.panels import analyse, main, parse_candidate
from p2p_edge.errors import InputError


def write_report(d, users: dict[str, tuple[list, list]]):
    """users: id -> (own-profile answers, shuffled-profile answers), each a list of (prediction, target)."""
    d.mkdir()
    for split in ("random", "ood"):
        ans = {m: {} for m in ("mt_lora", "p2p", "p2p_shuffled", "prior")}
        for u, (own, shuf) in users.items():
            uid = f"{split}/{u}"
            ans["p2p"][uid] = [["cat", p, t] for p, t in own] + [["headline", "x", "y"]]
            ans["p2p_shuffled"][uid] = [["cat", p, t] for p, t in shuf] + [["headline", "x", "y"]]
            ans["mt_lora"][uid] = [["cat", "A", t] for _, t in own]
            ans["prior"][uid] = [["cat", None, t] for _, t in own]
        (d / f"answers_{split}.json").write_text(json.dumps(ans))
    return d


def test_panels_and_their_pool(tmp_path):
    right, wrong = [("A", "A"), ("B", "B")], [("B", "A"), ("A", "B")]
    val = write_report(tmp_path / "val", {f"v{i}": (right, wrong) for i in range(6)})     # profile helps
    test = write_report(tmp_path / "test", {f"t{i}": (right, right) for i in range(6)})  # profile changes nothing
    r = analyse([("cand", val, test)], "cat")["candidates"]["cand"]["splits"]["random"]
    assert r["val"]["own_minus_shuffled"] == {"diff": 1.0, "ci": [1.0, 1.0]}
    assert r["test"]["own_minus_shuffled"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    pooled = r["pooled"]
    assert pooled["n_users"] == 12 and pooled["own_minus_shuffled"]["diff"] == pytest.approx(0.5)
    lo, hi = pooled["own_minus_shuffled"]["ci"]
    assert 0.0 < lo < 0.5 < hi < 1.0
    assert r["val"]["methods"] == {"mt_lora": 0.5, "p2p": 1.0, "p2p_shuffled": 0.0, "prior": 0.0}


def test_a_user_in_both_panels_is_an_error(tmp_path):
    a = write_report(tmp_path / "a", {"u1": ([("A", "A")], [("A", "A")])})
    b = write_report(tmp_path / "b", {"u1": ([("A", "A")], [("A", "A")])})
    with pytest.raises(InputError, match="in both panels"):
        analyse([("c", a, b)], "cat")


@pytest.mark.parametrize("spec", ["c", "c=a", "=a,b", "c=a,", "c=a,b,c"])
def test_bad_candidate_spec(spec):
    with pytest.raises(InputError, match="NAME=VAL_REPORT_DIR,TEST_REPORT_DIR"):
        parse_candidate(spec)


def test_missing_report_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    a = write_report(tmp_path / "a", {"u1": ([("A", "A")], [("A", "A")])})
    out = tmp_path / "out"
    assert main([f"c={a},{tmp_path / 'nope'}", "--task", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "answers_random.json" in err and "\n" not in err
    assert not list(tmp_path.glob("out*"))
