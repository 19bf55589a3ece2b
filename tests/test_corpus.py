import gzip
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from p2p_edge.errors import InputError
from p2p_edge.eval.task import OodConfig, SplitConfig
from p2p_edge.eval.task_config import load_config
from p2p_edge.eval import corpus as D
from p2p_edge.eval import priors as P
from p2p_edge.eval import splits as S

CONFIG = """
[splits]
seed = 1
test_fraction = 0.2
val_fraction = 0.2

[splits.ood]
k = 4
n_test_clusters = 1

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


def test_labels_resolve_from_train_users_only(cfg):
    users = news_users()
    t = D.resolve_task_labels(cfg.tasks["cat"], users, ["b", "c", "d", "e"])
    assert t.labels == ("A", "B")
    assert D.resolve_task_labels(cfg.tasks["cat_same_day"], users, ["a"]).labels == ("A", "B")  # explicit labels stay


# ------------------------------------------------------------------------------------------------ splits

IDS = [f"user{i:03d}" for i in range(100)]


def parts_ok(split, ids):
    all_ids = split["train"] + split["val"] + split["test"]
    assert sorted(all_ids) == sorted(ids)
    assert not set(split["train"]) & set(split["test"])
    assert not set(split["train"]) & set(split["val"])
    assert not set(split["val"]) & set(split["test"])


def test_random_split_shuffle(cfg):
    r = S.random_split(IDS, cfg.splits)
    parts_ok(r, IDS)
    assert (len(r["train"]), len(r["val"]), len(r["test"])) == (60, 20, 20)
    # deterministic and independent of input order; seed changes it
    assert S.random_split(list(reversed(IDS)), cfg.splits) == r
    other = S.random_split(IDS, SplitConfig(seed=2, test_fraction=0.2, val_fraction=0.2))
    assert other["test"] != r["test"]


def test_random_split_hash_is_stable_under_growth():
    c = SplitConfig(seed=0, method="hash", test_fraction=0.1, val_fraction=0.1)
    a = S.random_split(IDS[:60], c)
    b = S.random_split(IDS, c)
    parts_ok(b, IDS)
    for part in ("train", "val", "test"):
        assert set(a[part]) == set(b[part]) & set(IDS[:60])
    assert 0 < len(b["test"]) < 30


def test_duplicate_ids_rejected(cfg):
    with pytest.raises(ValueError, match="duplicate"):
        S.random_split(["a", "b", "a"], cfg.splits)


def blobs(n_per=25, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, size=(k, d)) * 10
    x = np.concatenate([c + rng.normal(0, 0.3, size=(n_per, d)) for c in centers])
    truth = np.repeat(np.arange(k), n_per)
    return x, truth


def test_kmeans_recovers_blobs():
    x, truth = blobs()
    lab, centers, inertia = S.kmeans(x, 4, seed=0)
    assert centers.shape == (4, 8) and inertia > 0
    # same partition up to renaming
    pairs = set(zip(truth.tolist(), lab.tolist()))
    assert len(pairs) == 4
    lab2, _, _ = S.kmeans(x, 4, seed=0)
    assert np.array_equal(lab, lab2)
    with pytest.raises(ValueError):
        S.kmeans(x[:3], 4)


def test_kmeans_duplicate_points():
    x = np.zeros((10, 3))
    lab, c, inertia = S.kmeans(x, 3, seed=0)
    assert inertia == 0 and lab.shape == (10,)


def test_ood_holds_out_whole_clusters(cfg):
    x, truth = blobs(seed=5)
    ids = [f"u{i:03d}" for i in range(len(x))]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))  # rows aligned with a shuffled id order
    ids_sh, x_sh, truth_sh = [ids[i] for i in order], x[order], truth[order]
    o = S.ood_split(ids_sh, x_sh, cfg.splits)[0]
    parts_ok(o, ids)
    cluster_of = dict(zip(ids_sh, truth_sh.tolist()))
    test_clusters = {cluster_of[u] for u in o["test"]}
    assert len(test_clusters) == cfg.splits.ood.n_test_clusters
    # every member of a held-out cluster is a test user; no train/val user is from one
    for u, c in cluster_of.items():
        assert (u in o["test"]) == (c in test_clusters)
    assert len(o["val"]) == 20
    split, labels, held = S.ood_split(ids_sh, x_sh, cfg.splits)
    assert split == o and len(held) == 1 and labels.shape == (len(ids),)
    with pytest.raises(ValueError, match="one row per user"):
        S.ood_split(ids_sh[:-1], x_sh, cfg.splits)


def test_ood_seed_changes_held_out_cluster():
    x, truth = blobs(seed=7)
    ids = [f"u{i:03d}" for i in range(len(x))]
    held = {tuple(S.ood_split(ids, x, SplitConfig(seed=s, ood=OodConfig(k=4, n_test_clusters=1)))[0]["test"])
            for s in range(8)}
    assert len(held) > 1


def test_save_load_splits(tmp_path, cfg):
    x, _ = blobs()
    ids = [f"u{i:03d}" for i in range(len(x))]
    s = {"random": S.random_split(ids, cfg.splits), "ood": S.ood_split(ids, x, cfg.splits)[0]}
    p = tmp_path / "out" / "splits.json"
    S.save_splits(p, s, meta={"dataset": "synthetic"})
    assert S.load_splits(p) == s
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert json.loads(p.read_text())["meta"] == {"dataset": "synthetic"}


def test_load_splits_rejects_overlap(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"format": S.SPLITS_FORMAT,
                             "splits": {"random": {"train": ["a", "b"], "val": [], "test": ["b"]}}}))
    with pytest.raises(InputError, match="both") as e:
        S.load_splits(p)
    assert e.value.field == "random.test"
    p.write_text("{}")
    with pytest.raises(InputError, match="not a splits file"):
        S.load_splits(p)
    p.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        S.load_splits(p)
    with pytest.raises(ValueError):
        S.save_splits(p, {"random": {"train": ["a"], "test": ["a"]}})


# ------------------------------------------------------------------------------------------------ priors


def test_user_prior_rules(cfg):
    rate = cfg.tasks["rate"]
    prof = [item(1, 1, rating=2), item(2, 2, rating=4), item(3, 3, rating=4), item(4, 4, rating=5), item(5, 5)]
    assert P.user_prior_prediction(rate, prof, "5", "majority") == "5"
    assert P.user_prior_prediction(rate, prof, "5", "user_mode") == "4"
    assert P.user_prior_prediction(rate, prof, "5", "user_mean") == "4"  # 15/4 = 3.75
    assert P.user_prior_prediction(rate, prof[:2], "5", "user_mean") == "3"  # 3.0
    assert P.user_prior_prediction(rate, [item(1, 1, rating=3), item(2, 2, rating=4)], "5", "user_mean") == "4"  # 3.5 up
    assert P.user_prior_prediction(rate, [], "5", "user_mean") == "5"  # fallback
    # tie in the mode -> the most recent of the tied
    assert P.user_prior_prediction(rate, [item(1, 1, rating=4), item(2, 2, rating=2)], "5", "user_mode") == "2"
    cat = cfg.tasks["cat"].resolve_labels([{"text": "t", "label": x} for x in "AABBC"])
    prof = [item(1, 1, label="a"), item(2, 2, label="Z"), item(3, 3, label="Q"), item(4, 4, label="B")]
    assert P.user_prior_prediction(cat, prof, "A") == "Other"  # Z and Q both map to Other
    with pytest.raises(ValueError, match="rule"):
        P.user_prior_prediction(cat, prof, "A", "user_mean")


# ------------------------------------------------------------------------------------------------ smoke


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")
def test_smoke_real_data_first_users():
    """Reads only the first users of each configured dataset (fast): each task has items it can render and score."""
    from itertools import islice

    from p2p_edge.eval.task_config import default_config_path

    cfg = load_config(default_config_path())
    for task in cfg.tasks.values():
        if not task.dataset.is_file():
            pytest.skip(f"{task.dataset} missing")
        users = list(islice(D.read_users(task.dataset), 30))
        ids = [u["user_id"] for u in users]
        split = S.random_split(ids, cfg.splits)
        t = D.resolve_task_labels(task, users, split["train"])
        qualifying = [it for u in users for it in u["history"] if t.qualifies(it)]
        assert qualifying, task.name
        for it in qualifying[:50]:
            assert t.render(it) and t.target(it)
