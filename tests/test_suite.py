"""eval.suite.evaluate: the one evaluation bench.quality, the report and checkpoint selection run.

A fake LLM-free set-up: run_adapter_method and the split-dependent controls are replaced by recorders, so these
tests check the orchestration itself (who is answered, how often, what is reused, what is scored per split)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from p2p_edge.eval import answer, suite
from p2p_edge.eval.suite import Method, evaluate, held_out_users, union, validation_users


class Task:
    kind, primary_metric = "classification", "accuracy"

    def score(self, preds, targs):
        return {"accuracy": sum(p == t for p, t in zip(preds, targs)) / len(preds)}


def corpus(splits):
    users = sorted({u for s in splits.values() for p in s.values() for u in p})
    return SimpleNamespace(tasks={"cat": Task()}, splits=splits, index=lambda: {u: i for i, u in enumerate(users)},
                           part=lambda split, part: splits["random"]["train"])


@pytest.fixture
def calls(monkeypatch):
    """Every run_adapter_method call (method, users), answering 'A' for adapters named 'right', else 'B'."""
    log = []

    def fake_run(llm, corpus, uids, adapter_for, prompt_for=None, progress=None):
        log.append((adapter_for(None, None), tuple(uids)))
        return {u: [("cat", "A" if adapter_for(None, None) == "right" else "B", "A")] for u in uids}

    def fake_controls(llm, corpus, uids, shared, hypernet, emb, index, *, train_uids, val_uids, compare, known=None):
        ans = {m: {u: a[u] for u in uids if u in a} for m, a in shared.items()}
        ans["p2p_shuffled"] = (known or {}).get("p2p_shuffled") or {u: [("cat", "B", "A")] for u in uids}
        log.append(("controls", tuple(uids)))
        table = {m: {"cat": {"accuracy": 1.0}} for m in ans}
        return ans, table, {f"p2p-{b}": {} for b in compare if b in ans}

    monkeypatch.setattr(suite, "run_adapter_method", fake_run)
    monkeypatch.setattr(suite, "score_split", fake_controls)
    return log


SPLITS = {"random": {"train": ["t1"], "val": ["v1"], "test": ["a", "b"]},
          "ood": {"train": ["t1"], "val": ["v1", "a"], "test": ["b", "c"]}}


def test_split_independent_answers_once_for_both_splits_users(calls):
    methods = [Method("base", lambda u, t: "base"), Method("p2p", lambda u, t: "right")]
    scores, seconds = evaluate(None, corpus(SPLITS), held_out_users(corpus(SPLITS), "test"), methods,
                               hypernet=None, emb=None, compare=("base", "p2p_shuffled"))
    assert calls[:2] == [("base", ("a", "b", "c")), ("right", ("a", "b", "c"))]   # once each, the union of users
    assert calls[2:] == [("controls", ("a", "b")), ("controls", ("b", "c"))]       # controls per split
    assert set(scores) == {"random", "ood"} and set(seconds) == {"base", "p2p"}
    assert set(scores["ood"].answers["p2p"]) == {"b", "c"}          # a split's answers are its users'
    assert "cat" in scores["random"].changes   # p2p vs the shuffled profile, answer by answer


def test_identical_splits_are_scored_once_and_known_answers_are_not_recomputed(calls):
    same = {"random": {"train": ["t1"], "val": ["v1"], "test": ["a", "b"]},
            "ood": {"train": ["t1"], "val": ["v1"], "test": ["a", "b"]}}
    known = {"base": {"a": [("cat", "B", "A")], "b": [("cat", "B", "A")]}}
    shuffled = {"a": [("cat", "A", "A")], "b": [("cat", "A", "A")]}
    scores, seconds = evaluate(None, corpus(same), held_out_users(corpus(same), "test"),
                               [Method("base", lambda u, t: "base"), Method("p2p", lambda u, t: "right")],
                               hypernet=None, emb=None, compare=("base",), known=known,
                               known_by_split={"random": {"p2p_shuffled": shuffled}})
    assert calls == [("right", ("a", "b")), ("controls", ("a", "b"))]   # base reused; one scoring for both splits
    assert scores["random"] is scores["ood"] and set(seconds) == {"p2p"}
    assert scores["random"].answers["p2p_shuffled"] is shuffled


def test_without_controls_only_the_methods_are_scored_on_each_split(calls):
    scores, _ = evaluate(None, corpus(SPLITS), validation_users(corpus(SPLITS)), [Method("p2p", lambda u, t: "right")],
                         hypernet=None, emb=None, compare=(), controls=False)
    assert calls == [("right", ("v1",))]   # "a" is an OOD val user but a random test user: never used to choose
    assert set(scores["random"].answers) == {"p2p"} and scores["random"].diffs == {}


def test_a_method_restricted_to_some_users_answers_only_those(calls):
    evaluate(None, corpus(SPLITS), held_out_users(corpus(SPLITS), "test"),
             [Method("oppu", lambda u, t: "right", users=["c", "zz"])], hypernet=None, emb=None, compare=())
    assert calls[0] == ("right", ("c",))


def test_union_and_the_real_controls_signature_agree():
    assert union({"random": ["b", "a"], "ood": ["c", "a"]}) == ["a", "b", "c"]
    import inspect

    assert list(inspect.signature(answer.score_split).parameters) == [
        "llm", "corpus", "uids", "shared", "hypernet", "emb", "index", "train_uids", "val_uids", "compare", "known"]
