"""Evaluation protocol helpers: the shuffled-profile control and the per-task query limits."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, strategies as st

from p2p_edge.eval.answer import derangement, limit_queries


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 30)), min_size=2, max_size=40, unique=True),
       st.integers(0, 5))
def test_derangement_is_in_dataset_and_has_no_fixed_points(pairs, seed):
    uids = [f"{d}/{i}" for d, i in pairs]
    donor = derangement(uids, seed=seed)
    assert set(donor) == set(uids) and all(donor[u] != u for u in uids)
    for u in uids:
        same = [v for v in uids if v.split("/")[0] == u.split("/")[0]]
        if len(same) > 1:  # an in-domain donor whenever the dataset has another user
            assert donor[u].split("/")[0] == u.split("/")[0]
    in_group = [donor[u] for u in uids if len([v for v in uids if v[0] == u[0]]) > 1]
    assert len(set(in_group)) == len(in_group)  # a permutation within each dataset: every profile used once


def test_derangement_is_seeded_and_single_user_keeps_itself():
    uids = [f"news/{i}" for i in range(10)]
    assert derangement(uids, seed=3) == derangement(uids, seed=3)
    assert derangement(uids, seed=3) != derangement(uids, seed=4)
    assert derangement(["news/a"]) == {"news/a": "news/a"}


def test_limit_queries_bounds_generation_tasks_only():
    tasks = {"title": SimpleNamespace(kind="generation"), "cat": SimpleNamespace(kind="classification")}
    ex = [SimpleNamespace(task=t, n=i) for i in range(10) for t in ("title", "cat")]
    corpus = SimpleNamespace(tasks=tasks, examples={"u": list(ex)})
    limit_queries(corpus, ["u"], 3)
    kept = corpus.examples["u"]
    assert [e.n for e in kept if e.task == "title"] == [7, 8, 9]       # the most recent, in order
    assert [e.n for e in kept if e.task == "cat"] == list(range(10))   # cheap answers: every reserved query
    limit_queries(corpus, ["u"], 0)
    assert corpus.examples["u"] == kept


def test_validation_users_never_include_a_test_user_of_either_split():
    import pytest
    pytest.importorskip("torch")
    from p2p_edge.eval.suite import validation_users
    from p2p_edge.lab.select import score

    splits = {"random": {"train": ["a"], "val": ["b", "c"], "test": ["d"]},
              "ood": {"train": ["a"], "val": ["b", "d"], "test": ["c"]}}
    assert validation_users(SimpleNamespace(splits=splits)) == {"random": ["b"], "ood": ["b"]}
    tasks = {"cat": SimpleNamespace(metrics=["accuracy"], primary_metric="accuracy"),
             "stars": SimpleNamespace(metrics=["mae"], primary_metric="mae")}
    table = {"random": {"cat": {"accuracy": 0.6}, "stars": {"mae": 0.5}},
             "ood": {"cat": {"accuracy": 0.4}, "stars": {"mae": 0.3}}}
    assert score(table, tasks, "cat", splits) == 0.5
    assert score(table, tasks, "stars", splits) == -0.4  # lower mae is better: higher score
