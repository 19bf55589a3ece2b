"""bench.panels: the profile effect on each panel of held-out users, read from two reports' saved answers."""

from __future__ import annotations

import json
from pathlib import Path

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
    r = analyse([("cand", [val, test])], "cat")["candidates"]["cand"]["splits"]["random"]
    assert list(r) == [str(val), str(test), "pooled"]
    assert r[str(val)]["own_minus_shuffled"] == {"diff": 1.0, "ci": [1.0, 1.0]}
    assert r[str(test)]["own_minus_shuffled"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    pooled = r["pooled"]
    assert pooled["n_users"] == 12 and pooled["own_minus_shuffled"]["diff"] == pytest.approx(0.5)
    lo, hi = pooled["own_minus_shuffled"]["ci"]
    assert 0.0 < lo < 0.5 < hi < 1.0
    assert r[str(val)]["methods"] == {"mt_lora": 0.5, "p2p": 1.0, "p2p_shuffled": 0.0, "prior": 0.0}
    assert r[str(val)]["p2p_minus_prior"] == {"diff": 1.0, "ci": [1.0, 1.0]}   # the prior never answers here
    assert r[str(val)]["p2p_minus_mt_lora"] == {"diff": 0.5, "ci": [0.5, 0.5]}  # MT-LoRA always answers "A"
    assert r["pooled"]["p2p_minus_mt_lora"]["diff"] == pytest.approx(0.5)
    assert r[str(val)]["answer_changes"] == {"n": 12, "changed": 12, "a_right": 12, "b_right": 0, "changed_fraction": 1.0}
    assert r[str(test)]["answer_changes"]["changed"] == 0
    assert r["pooled"]["answer_changes"]["n"] == 24 and r["pooled"]["answer_changes"]["changed"] == 12


def test_reports_without_a_prior_or_mt_lora(tmp_path):
    d = write_report(tmp_path / "r", {"u1": ([("A", "A")], [("B", "A")])})
    for split in ("random", "ood"):
        f = d / f"answers_{split}.json"
        ans = json.loads(f.read_text())
        del ans["prior"], ans["mt_lora"]
        f.write_text(json.dumps(ans))
    row = analyse([("c", [d])], "cat")["candidates"]["c"]["splits"]["random"][str(d)]
    assert set(row["methods"]) == {"p2p", "p2p_shuffled"} and "p2p_minus_prior" not in row
    assert "p2p_minus_mt_lora" not in row
    main([f"c={d}", "--task", "cat", "--out", str(tmp_path / "o")])
    md = (tmp_path / "o.md").read_text()
    assert "| – | – | 1.000 | 0.000 | – | +1.000" in md and "| – | 1 of 1 (100%) | 1 / 0 |" in md


def test_k_panels_pool_and_one_split_only(tmp_path):
    right, wrong = [("A", "A")], [("B", "A")]
    dirs = [write_report(tmp_path / f"fold{k}", {f"f{k}u{i}": (right, wrong if i % 2 else right) for i in range(4)})
            for k in range(3)]
    r = analyse([("v1", dirs)], "cat", splits=("random",))["candidates"]["v1"]["splits"]
    assert list(r) == ["random"] and r["random"]["pooled"]["n_users"] == 12
    assert r["random"]["pooled"]["own_minus_shuffled"]["diff"] == pytest.approx(0.5)
    alone = analyse([("one", dirs[:1])], "cat")["candidates"]["one"]["splits"]["random"]
    assert list(alone) == [str(dirs[0])]  # one panel: nothing to pool


def test_the_null_profile_control_where_a_report_scored_it(tmp_path):
    # fold reports run with --null-profile: own minus null pooled beside own minus shuffled
    right, wrong = [("A", "A"), ("B", "B")], [("B", "A"), ("A", "B")]
    dirs = []
    for k in range(2):
        d = write_report(tmp_path / f"fold{k}", {f"f{k}u{i}": (right, right) for i in range(4)})
        for split in ("random", "ood"):
            f = d / f"answers_{split}.json"
            ans = json.loads(f.read_text())
            # the null profile is right on half the users' queries
            ans["p2p_null"] = {u: [["cat", p, t] for p, t in (right if i % 2 else wrong)]
                               for i, u in enumerate(sorted(ans["p2p"]))}
            f.write_text(json.dumps(ans))
        dirs.append(d)
    r = analyse([("c", dirs)], "cat", splits=("random",))["candidates"]["c"]["splits"]["random"]
    assert r["pooled"]["methods"]["p2p_null"] == pytest.approx(0.5)
    assert r["pooled"]["p2p_minus_null"]["diff"] == pytest.approx(0.5)
    assert r[str(dirs[0])]["p2p_minus_null"]["diff"] == pytest.approx(0.5)
    main([f"c={dirs[0]},{dirs[1]}", "--task", "cat", "--splits", "random", "--out", str(tmp_path / "o")])
    md = (tmp_path / "o.md").read_text()
    assert "| P2P, null | P2P minus null [95% CI] |" in md
    pooled = next(line for line in md.splitlines() if "| pooled |" in line)
    assert pooled.endswith("| 0.500 | +0.500 [" + pooled.rsplit("[", 1)[1])
    no_null = write_report(tmp_path / "plain", {"u1": ([("A", "A")], [("B", "A")])})
    row = analyse([("c", [no_null])], "cat")["candidates"]["c"]["splits"]["random"][str(no_null)]
    assert "p2p_null" not in row["methods"] and "p2p_minus_null" not in row


def test_a_user_in_both_panels_is_an_error(tmp_path):
    a = write_report(tmp_path / "a", {"u1": ([("A", "A")], [("A", "A")])})
    b = write_report(tmp_path / "b", {"u1": ([("A", "A")], [("A", "A")])})
    with pytest.raises(InputError, match="in two panels"):
        analyse([("c", [a, b])], "cat")


@pytest.mark.parametrize("spec", ["c", "=a,b", "c=a,", "c=", "c=a,b,a"])
def test_bad_candidate_spec(spec):
    with pytest.raises(InputError, match="NAME=REPORT_DIR"):
        parse_candidate(spec)


def test_candidate_spec():
    assert parse_candidate("v1=a,b/c,d") == ("v1", [Path("a"), Path("b/c"), Path("d")])


def test_missing_report_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    a = write_report(tmp_path / "a", {"u1": ([("A", "A")], [("A", "A")])})
    out = tmp_path / "out"
    assert main([f"c={a},{tmp_path / 'nope'}", "--task", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "answers_random.json" in err and "\n" not in err
    assert not list(tmp_path.glob("out*"))


def test_a_note_goes_above_the_table_and_the_command_line_reruns(tmp_path):
    import shlex

    d = write_report(tmp_path / "r", {"u1": ([("A", "A")], [("B", "A")])})
    out = tmp_path / "o"
    assert main([f"c={d}", "--task", "cat", "--out", str(out), "--note", "Fold 2's model is broken."]) == 0
    md = out.with_suffix(".md").read_text()
    assert md.index("Fold 2's model is broken.") < md.index("| candidate |")
    assert json.loads(out.with_suffix(".json").read_text())["note"] == "Fold 2's model is broken."
    cmd = md.splitlines()[0].removeprefix("<!-- generated by: python -m bench.panels ").removesuffix(" -->")
    assert shlex.split(cmd)[-1] == "Fold 2's model is broken."


def test_a_generation_task_by_rouge_with_the_base_model_beside_it(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    target = "senate passes the climate bill"
    ans = {"base": {}, "p2p": {}, "p2p_shuffled": {}, "prior": {}}
    for i in range(5):
        u = f"u{i}"
        ans["base"][u] = [["cat", "A", "A"], ["headline", "a story about things", target]]
        ans["p2p"][u] = [["cat", "A", "A"], ["headline", "senate passes climate bill", target]]
        ans["p2p_shuffled"][u] = [["cat", "A", "A"], ["headline", "senate passes the budget", target]]
        ans["prior"][u] = [["cat", "A", "A"]]   # the prior rule answers label tasks only
    for split in ("random", "ood"):
        (d / f"answers_{split}.json").write_text(json.dumps(ans))
    row = analyse([("c", [d])], "headline", metric="rouge1")["candidates"]["c"]["splits"]["random"][str(d)]
    # rouge1 F: p2p 4 of 4 words in a 5-word target (8/9), shuffled 3 of 4 (6/9), base none
    assert row["methods"] == pytest.approx({"base": 0.0, "p2p": 8 / 9, "p2p_shuffled": 6 / 9}, abs=1e-4)  # 4 places
    assert row["own_minus_shuffled"]["diff"] == pytest.approx(2 / 9, abs=1e-4)
    assert row["p2p_minus_base"]["diff"] == pytest.approx(8 / 9, abs=1e-4) and "p2p_minus_prior" not in row
    assert "a_right" not in row["answer_changes"]   # exact match says nothing about free text
    main([f"c={d}", "--task", "headline", "--metric", "rouge1", "--splits", "random", "--out", str(tmp_path / "o")])
    md = (tmp_path / "o.md").read_text()
    assert "rouge1" in md and "| +0.222 [+0.222, +0.222] | – | +0.889 [+0.889, +0.889] | – | 5 of 5 (100%) | – |" in md
