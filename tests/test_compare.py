"""bench.compare: a re-run's quality.json against the committed one."""

import json

from bench.compare import compare, main

DOC = {"quality": {"random": {"cat": {"p2p": {"acc": 0.5, "acc_ci": [0.4, 0.6]}, "oppu": {"acc": 0.4}}}},
       "paired": {"random": {"cat": {"p2p-oppu": {"acc": 0.1}}}},
       "answer_changes": {"random": {"cat": {"n": 10, "changed": 2}}}}


def test_equal_differ_and_missing(tmp_path):
    rerun = json.loads(json.dumps(DOC))
    del rerun["quality"]["random"]["cat"]["oppu"], rerun["paired"]["random"]["cat"]["p2p-oppu"]
    r = compare(DOC, rerun)
    assert r["quality"] == {"equal": 2, "differ": [], "missing": ["random/cat/oppu"]}
    assert r["paired"]["missing"] == ["random/cat/p2p-oppu"] and r["answer_changes"]["equal"] == 2
    rerun["quality"]["random"]["cat"]["p2p"]["acc_ci"] = [0.4, 0.7]
    rerun["answer_changes"]["random"]["cat"]["changed"] = 3
    r = compare(DOC, rerun)
    assert r["quality"]["differ"] == [{"path": "random/cat/p2p/acc_ci", "committed": [0.4, 0.6], "rerun": [0.4, 0.7]}]
    assert [d["path"] for d in r["answer_changes"]["differ"]] == ["random/cat/changed"]


def test_exit_codes_and_output(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(DOC)), b.write_text(json.dumps(DOC))
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert "| quality | 3 | 0 |" in (tmp_path / "cmp.md").read_text()
    b.write_text(json.dumps({**DOC, "answer_changes": {"random": {"cat": {"n": 10, "changed": 5}}}}))
    assert main([str(a), str(b)]) == 1
    (tmp_path / "bad.json").write_text("{")
    assert main([str(a), str(tmp_path / "bad.json")]) == 2
    assert "invalid JSON" in capsys.readouterr().err


def test_only_some_methods():
    rerun = json.loads(json.dumps(DOC))
    rerun["quality"]["random"]["cat"]["p2p"]["acc"] = 0.9   # another user subset: p2p differs, oppu is the same
    r = compare(DOC, rerun, only=["oppu", "p2p-oppu"])
    assert r["quality"] == {"equal": 1, "differ": [], "missing": []} and r["paired"]["equal"] == 1
    assert r["answer_changes"]["equal"] == 0
