import gzip
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_edge.errors import InputError
from p2p_edge.tasks import SplitConfig, OodConfig, load_config
from p2p_edge.train import data as D

CONFIG = """
[splits]
seed = 1
test_fraction = 0.2
val_fraction = 0.2

[splits.ood]
k = 4
n_test_clusters = 1

[protocol]
train_queries_per_user = 2

[tasks.rate]
dataset = "users.jsonl"
kind = "rating"
input_fields = ["text"]
target_field = "rating"
prompt = "{text}"
metrics = ["mae"]

[tasks.cat]
dataset = "news.jsonl.gz"
kind = "classification"
input_fields = ["text"]
target_field = "label"
labels = { auto_top_k = 2 }
prompt = "{text} {labels}"
metrics = ["accuracy"]
global_item_ids = true

[tasks.cat_same_day]
dataset = "news.jsonl.gz"
kind = "classification"
input_fields = ["text"]
target_field = "label"
labels = ["A", "B"]
prompt = "{text}"
metrics = ["accuracy"]
protocol = { same_time_in_profile = true, min_profile_items = 0, train_queries_per_user = 10 }
"""


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "tasks.toml"
    p.write_text(textwrap.dedent(CONFIG))
    return load_config(p)


def item(i, day, **kw):
    d = {"id": f"i{i}", "time": f"2020-01-{day:02d}", "text": f"text {i}"}
    d.update(kw)
    return d


def write_users(path: Path, users, gz=False):
    data = "".join(json.dumps(u) + "\n" for u in users).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------------------------------ reading


def test_read_users_plain_and_gzip(tmp_path):
    users = [{"user_id": "u1", "history": [item(1, 1, rating=5), item(2, 2, rating=3)]},
             {"user_id": "u2", "history": []}]
    for gz, name in ((False, "a.jsonl"), (True, "a.jsonl.gz"), (True, "noext")):
        got = list(D.read_users(write_users(tmp_path / name, users, gz=gz)))
        assert got == users


@pytest.mark.parametrize(
    "line,field,msg",
    [
        ("not json", None, "invalid JSON"),
        ("[1]", None, "JSON object"),
        ('{"history": []}', "user_id", "non-empty string"),
        ('{"user_id": "u", "history": {}}', "history", "list"),
        ('{"user_id": "u", "history": [{"time": null, "text": "t"}]}', "history[0].id", "non-empty"),
        ('{"user_id": "u", "history": [{"id": "1", "time": null}]}', "history[0].text", "string"),
        ('{"user_id": "u", "history": [{"id": "1", "text": "t"}]}', "history[0].time", "missing"),
        ('{"user_id": "u", "history": [{"id": "1", "text": "t", "time": "May 1"}]}', "history[0].time", "YYYY"),
        ('{"user_id": "u", "history": [{"id": "1", "text": "t", "time": "2020-02-01"},'
         ' {"id": "2", "text": "t", "time": "2020-01-01"}]}', "history[1].time", "not sorted"),
        ('{"user_id": "u1", "history": []}', "user_id", "duplicate"),
    ],
)
def test_read_users_errors_have_line_numbers(tmp_path, line, field, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"user_id": "u1", "history": []}\n\n' + line + "\n")
    with pytest.raises(InputError, match=msg) as e:
        list(D.read_users(p))
    assert e.value.line == 3 and e.value.field == field
    assert str(e.value).startswith(f"{p}:3:")


def test_read_users_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(D.read_users(tmp_path / "missing.jsonl"))
    p = tmp_path / "bad.gz"
    body = "".join(json.dumps({"user_id": f"u{i}", "history": []}) + "\n" for i in range(50)).encode()
    p.write_bytes(gzip.compress(body)[:-20])
    with pytest.raises(InputError, match="gzip"):
        list(D.read_users(p))
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"user_id": "u\xe9", "history": []}\n')
    with pytest.raises(InputError, match="UTF-8") as e:
        list(D.read_users(p))
    assert e.value.line == 1


# ------------------------------------------------------------------------------------------------ examples


def rating_user(uid, n, same_day_pairs=False):
    hist = []
    for i in range(n):
        day = 1 + (i // 2 if same_day_pairs else i)
        hist.append(item(f"{uid}-{i}", day, rating=1 + i % 5))
    return {"user_id": uid, "history": hist}


def assert_profile_before(ex: D.Example):
    q = ex.query_item
    for p in ex.profile_items:
        assert p is not q and p["id"] != q["id"]
        if p["time"] is not None and q["time"] is not None:   # the blogs data has null times (1% of posts)
            assert p["time"] < q["time"]


def test_user_examples_roles_and_profiles(cfg):
    t = cfg.tasks["rate"]
    u = rating_user("u", 6)
    exs = D.user_examples(u, t, train_user=True, split="train")
    assert [e.role for e in exs] == ["test", "dev", "extra", "extra"]
    assert [e.query_item["id"] for e in exs] == ["iu-5", "iu-4", "iu-3", "iu-2"]
    assert [len(e.profile_items) for e in exs] == [5, 4, 3, 2]
    assert exs[0].target == str(u["history"][5]["rating"]) and exs[0].split == "train"
    for e in exs:
        assert_profile_before(e)
    # not a train user: test + dev only
    assert [e.role for e in D.user_examples(u, t)] == ["test", "dev"]


def test_same_day_items_are_not_profile(cfg):
    t = cfg.tasks["rate"]
    u = rating_user("u", 6, same_day_pairs=True)  # days 1,1,2,2,3,3
    exs = D.user_examples(u, t, train_user=True)
    # test query (day 3) sees days 1-2 only (4 items); dev query is also day 3 -> 4 items;
    # extra u-3 (day 2) sees 2 items; u-2 (day 2) sees 2.
    assert [len(e.profile_items) for e in exs] == [4, 4, 2, 2]
    for e in exs:
        assert_profile_before(e)
    # a user whose items are all on one day has no profile -> no examples (min_profile_items = 1)
    one_day = {"user_id": "d", "history": [item(f"d{i}", 1, rating=3) for i in range(4)]}
    assert D.user_examples(one_day, t, train_user=True) == []


def test_same_time_allowed_by_config(cfg):
    t = cfg.tasks["cat_same_day"]
    u = {"user_id": "d", "history": [item(f"d{i}", 1, label="A") for i in range(4)]}
    exs = D.user_examples(u, t, train_user=True)
    assert [len(e.profile_items) for e in exs] == [3, 2, 1, 0]  # position order, min_profile_items = 0
    for e in exs:
        assert e.query_item not in e.profile_items


def test_null_times_fall_back_to_order(cfg):
    t = cfg.tasks["rate"]
    u = {"user_id": "n", "history": [dict(item(i, 1, rating=4), time=None) for i in range(4)]}
    exs = D.user_examples(u, t)
    assert [len(e.profile_items) for e in exs] == [3, 2]


def test_only_qualifying_items_are_queries(cfg):
    t = cfg.tasks["rate"]
    hist = [item(0, 1, rating=5), item(1, 2, rating=4), item(2, 3), item(3, 4, rating=9), item(4, 5, text="")]
    hist[4]["rating"] = 2
    exs = D.user_examples({"user_id": "u", "history": hist}, t, train_user=True)
    # only i0 and i1 qualify; i0 has no profile -> dropped; i1 is the test query, profile i0
    assert [(e.role, e.query_item["id"], len(e.profile_items)) for e in exs] == [("test", "i1", 1)]


@settings(max_examples=40, deadline=None)
@given(
    days=st.lists(st.integers(1, 6), min_size=0, max_size=12),
    has_rating=st.lists(st.booleans(), min_size=12, max_size=12),
    extra=st.integers(0, 5),
    same=st.booleans(),
)
def test_no_profile_item_at_or_after_query_property(days, has_rating, extra, same):
    from p2p_edge.tasks import Protocol, Task

    t = Task(name="r", dataset=Path("x"), kind="rating", input_fields=("text",), target_field="rating",
             prompt="{text}", metrics=("mae",), requires=("text", "rating"),
             protocol=Protocol(train_queries_per_user=extra, min_profile_items=0, same_time_in_profile=same))
    hist = []
    for i, d in enumerate(sorted(days)):
        it = item(i, d)
        if has_rating[i]:
            it["rating"] = 3
        hist.append(it)
    exs = D.user_examples({"user_id": "u", "history": hist}, t, train_user=True)
    assert len(exs) == min(sum(has_rating[: len(hist)]), 2 + extra)
    pos = {id(it): i for i, it in enumerate(hist)}
    for e in exs:
        q = pos[id(e.query_item)]
        assert all(pos[id(p)] < q for p in e.profile_items)
        if not same:
            assert all(p["time"] < e.query_item["time"] for p in e.profile_items)
            # and the profile is everything before that day
            assert len(e.profile_items) == sum(h["time"] < e.query_item["time"] for h in hist)
        else:
            assert len(e.profile_items) == q


def news_users():
    """6 authors; article 'shared' is co-authored by a (its last item) and b (an earlier item)."""
    users = []
    labels = ["A", "A", "B", "C", "A", "B", "A", "C"]
    for j, uid in enumerate(["a", "b", "c", "d", "e", "f"]):
        hist = [item(f"{uid}{i}", i + 1, label=labels[(i + j) % len(labels)]) for i in range(8)]
        users.append({"user_id": uid, "history": hist})
    users[0]["history"][-1]["id"] = "shared"
    users[1]["history"][5]["id"] = "shared"  # an extra query of b
    return users


def test_build_examples_and_shared_ids(cfg):
    users = news_users()
    split = {"train": ["b", "c", "d", "e"], "val": ["f"], "test": ["a"]}
    t = D.resolve_task_labels(cfg.tasks["cat"], users, split["train"])
    assert t.labels == ("A", "B")  # from train users only
    ex = D.build_examples(users, t, split)
    assert {e.user_id for e in ex["test"]} == {"a"} and [e.role for e in ex["test"]] == ["test"]
    assert [e.role for e in ex["val"]] == ["test"]
    assert ex["test"][0].query_item["id"] == "shared"
    train_ids = [e.query_item["id"] for e in ex["train"]]
    assert "shared" not in train_ids  # b's copy of the test article is not a train query
    assert {e.split for e in ex["train"]} == {"train"}
    # per train user: test, dev, 2 extras (b lost one)
    assert len(ex["train"]) == 4 * 4 - 1
    assert all(e.target in t.label_space for part in ex.values() for e in part)
    # without global ids, the item stays
    t2 = D.resolve_task_labels(cfg.tasks["cat_same_day"], users, split["train"])
    ex2 = D.build_examples(users, t2, split)
    assert "shared" in [e.query_item["id"] for e in ex2["train"]]


def test_build_examples_requires_resolved_labels(cfg):
    with pytest.raises(RuntimeError, match="resolve_labels"):
        D.build_examples(news_users(), cfg.tasks["cat"], {"train": ["a"], "val": [], "test": []})


def test_build_examples_rejects_overlapping_split(cfg):
    with pytest.raises(ValueError, match="both"):
        D.build_examples([], cfg.tasks["rate"], {"train": ["a"], "val": [], "test": ["a"]})


# ------------------------------------------------------------------------------------------------ splits

IDS = [f"user{i:03d}" for i in range(100)]


def parts_ok(split, ids):
    all_ids = split["train"] + split["val"] + split["test"]
    assert sorted(all_ids) == sorted(ids)
    assert not set(split["train"]) & set(split["test"])
    assert not set(split["train"]) & set(split["val"])
    assert not set(split["val"]) & set(split["test"])


def test_random_split_shuffle(cfg):
    s = D.make_splits(IDS, cfg.splits)
    assert list(s) == ["random"]
    r = s["random"]
    parts_ok(r, IDS)
    assert (len(r["train"]), len(r["val"]), len(r["test"])) == (60, 20, 20)
    # deterministic and independent of input order; seed changes it
    assert D.make_splits(list(reversed(IDS)), cfg.splits)["random"] == r
    other = D.make_splits(IDS, SplitConfig(seed=2, test_fraction=0.2, val_fraction=0.2))["random"]
    assert other["test"] != r["test"]


def test_random_split_hash_is_stable_under_growth():
    c = SplitConfig(seed=0, method="hash", test_fraction=0.1, val_fraction=0.1)
    a = D.random_split(IDS[:60], c)
    b = D.random_split(IDS, c)
    parts_ok(b, IDS)
    for part in ("train", "val", "test"):
        assert set(a[part]) == set(b[part]) & set(IDS[:60])
    assert 0 < len(b["test"]) < 30


def test_duplicate_ids_rejected(cfg):
    with pytest.raises(ValueError, match="duplicate"):
        D.make_splits(["a", "b", "a"], cfg.splits)


def blobs(n_per=25, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, size=(k, d)) * 10
    x = np.concatenate([c + rng.normal(0, 0.3, size=(n_per, d)) for c in centers])
    truth = np.repeat(np.arange(k), n_per)
    return x, truth


def test_kmeans_recovers_blobs():
    x, truth = blobs()
    lab, centers, inertia = D.kmeans(x, 4, seed=0)
    assert centers.shape == (4, 8) and inertia > 0
    # same partition up to renaming
    pairs = set(zip(truth.tolist(), lab.tolist()))
    assert len(pairs) == 4
    lab2, _, _ = D.kmeans(x, 4, seed=0)
    assert np.array_equal(lab, lab2)
    with pytest.raises(ValueError):
        D.kmeans(x[:3], 4)


def test_kmeans_duplicate_points():
    x = np.zeros((10, 3))
    lab, c, inertia = D.kmeans(x, 3, seed=0)
    assert inertia == 0 and lab.shape == (10,)


def test_ood_holds_out_whole_clusters(cfg):
    x, truth = blobs(seed=5)
    ids = [f"u{i:03d}" for i in range(len(x))]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))  # rows aligned with a shuffled id order
    ids_sh, x_sh, truth_sh = [ids[i] for i in order], x[order], truth[order]
    s = D.make_splits(ids_sh, cfg.splits, embeddings=x_sh)
    o = s["ood"]
    parts_ok(o, ids)
    cluster_of = dict(zip(ids_sh, truth_sh.tolist()))
    test_clusters = {cluster_of[u] for u in o["test"]}
    assert len(test_clusters) == cfg.splits.ood.n_test_clusters
    # every member of a held-out cluster is a test user; no train/val user is from one
    for u, c in cluster_of.items():
        assert (u in o["test"]) == (c in test_clusters)
    assert len(o["val"]) == 20
    split, labels, held = D.ood_split(ids_sh, x_sh, cfg.splits)
    assert split == o and len(held) == 1 and labels.shape == (len(ids),)
    with pytest.raises(ValueError, match="one row per user"):
        D.make_splits(ids_sh[:-1], cfg.splits, embeddings=x_sh)


def test_ood_seed_changes_held_out_cluster():
    x, truth = blobs(seed=7)
    ids = [f"u{i:03d}" for i in range(len(x))]
    held = {tuple(D.ood_split(ids, x, SplitConfig(seed=s, ood=OodConfig(k=4, n_test_clusters=1)))[0]["test"])
            for s in range(8)}
    assert len(held) > 1


def test_save_load_splits(tmp_path, cfg):
    x, _ = blobs()
    ids = [f"u{i:03d}" for i in range(len(x))]
    s = D.make_splits(ids, cfg.splits, embeddings=x)
    p = tmp_path / "out" / "splits.json"
    D.save_splits(p, s, meta={"dataset": "synthetic"})
    assert D.load_splits(p) == s
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert json.loads(p.read_text())["meta"] == {"dataset": "synthetic"}


def test_load_splits_rejects_overlap(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"format": D.SPLITS_FORMAT,
                             "splits": {"random": {"train": ["a", "b"], "val": [], "test": ["b"]}}}))
    with pytest.raises(InputError, match="both") as e:
        D.load_splits(p)
    assert e.value.field == "random.test"
    p.write_text("{}")
    with pytest.raises(InputError, match="not a splits file"):
        D.load_splits(p)
    p.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        D.load_splits(p)
    with pytest.raises(ValueError):
        D.save_splits(p, {"random": {"train": ["a"], "test": ["a"]}})


# ------------------------------------------------------------------------------------------------ priors


def test_user_prior_rules(cfg):
    rate = cfg.tasks["rate"]
    prof = [item(1, 1, rating=2), item(2, 2, rating=4), item(3, 3, rating=4), item(4, 4, rating=5), item(5, 5)]
    assert D.user_prior_prediction(rate, prof, "5", "majority") == "5"
    assert D.user_prior_prediction(rate, prof, "5", "user_mode") == "4"
    assert D.user_prior_prediction(rate, prof, "5", "user_mean") == "4"  # 15/4 = 3.75
    assert D.user_prior_prediction(rate, prof[:2], "5", "user_mean") == "3"  # 3.0
    assert D.user_prior_prediction(rate, [item(1, 1, rating=3), item(2, 2, rating=4)], "5", "user_mean") == "4"  # 3.5 up
    assert D.user_prior_prediction(rate, [], "5", "user_mean") == "5"  # fallback
    # tie in the mode -> the most recent of the tied
    assert D.user_prior_prediction(rate, [item(1, 1, rating=4), item(2, 2, rating=2)], "5", "user_mode") == "2"
    cat = cfg.tasks["cat"].resolve_labels([{"text": "t", "label": x} for x in "AABBC"])
    prof = [item(1, 1, label="a"), item(2, 2, label="Z"), item(3, 3, label="Q"), item(4, 4, label="B")]
    assert D.user_prior_prediction(cat, prof, "A") == "Other"  # Z and Q both map to Other
    with pytest.raises(ValueError, match="rule"):
        D.user_prior_prediction(cat, prof, "A", "user_mean")


def test_majority_target(cfg):
    t = cfg.tasks["rate"]
    exs = [D.Example("u", "rate", {}, x, []) for x in ["5", "4", "5", "4", "3"]]
    assert D.majority_target(t, exs) == "4"  # tie 4/5 -> alphabetical first
    with pytest.raises(ValueError):
        D.majority_target(t, [])


# ------------------------------------------------------------------------------------------------ smoke


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")
def test_smoke_real_data_first_users():
    """Reads only the first users of each configured dataset (fast); checks the protocol invariants."""
    from itertools import islice

    from p2p_edge.tasks import default_config_path

    cfg = load_config(default_config_path())
    for task in cfg.tasks.values():
        if not task.dataset.is_file():
            pytest.skip(f"{task.dataset} missing")
        users = list(islice(D.read_users(task.dataset), 30))
        ids = [u["user_id"] for u in users]
        split = D.make_splits(ids, cfg.splits)["random"]
        t = D.resolve_task_labels(task, users, split["train"])
        ex = D.build_examples(users, t, split)
        assert ex["train"]
        for part in ex.values():
            for e in part:
                assert_profile_before(e)
                assert t.render(e.query_item) and e.target
