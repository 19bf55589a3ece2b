"""load_corpus on a tiny synthetic dataset: fixed splits from a file, users kept without summaries."""

import hashlib
import json

import numpy as np
import pytest

from p2p_edge.errors import P2PError
from p2p_edge.train.config import Config, ProfilesCfg
from p2p_edge.eval.splits import load_splits, save_splits
from p2p_edge.train.dataset import load_corpus
from p2p_edge.train.profiles import profile_items

LABELS = ["POLITICS", "SPORTS", "FOOD"]


class HashEncoder:
    name, dim = "hash", 8

    def encode(self, texts):
        out = np.array([np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], np.uint8)[:8] for t in texts], np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-6)


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "news.users.jsonl"
    with open(data, "w") as f:
        for u in range(20):
            hist = [{"id": f"u{u}i{i}", "time": f"2020-01-{i + 1:02d}", "text": f"story {u}-{i}",
                     "title": f"headline {u} {i}", "label": LABELS[(u + i) % 3]} for i in range(6)]
            f.write(json.dumps({"user_id": f"user{u:02d}", "history": hist}) + "\n")
    (tmp_path / "tasks.toml").write_text(f'''
[splits]
seed = 0
test_fraction = 0.2
val_fraction = 0.2
[splits.ood]
k = 4
n_test_clusters = 1
[tasks.cat]
dataset = "{data}"
kind = "classification"
input_fields = ["title"]
target_field = "label"
labels = {LABELS}
prompt = "Headline: {{title}}\\nCategory ({{labels}})?"
metrics = ["accuracy"]
''')
    return data


def summaries_for(tmp_path, data, users):
    out = tmp_path / "profiles"
    out.mkdir(exist_ok=True)
    with open(out / "news.summaries.jsonl", "w") as f:
        for line in open(data):
            u = json.loads(line)
            if u["user_id"] in users:
                f.write(json.dumps({"user_id": u["user_id"], "cutoff": len(profile_items(u, 2)), "summary": "likes news"}) + "\n")
    return out


def config(tmp_path, extra_cuts=None, **kw):
    return Config(tasks_config=str(tmp_path / "tasks.toml"), tasks=["cat"], out_dir=str(tmp_path / "run"),
                  profiles=ProfilesCfg(summaries_dir=str(tmp_path / "profiles"), default_query_items=2,
                                       extra_cuts=extra_cuts or {}), **kw)


def test_missing_summaries_are_an_error_or_kept_without_summary(tmp_path, dataset):
    summaries_for(tmp_path, dataset, {"user00", "user01"})
    with pytest.raises(P2PError, match="18 users have no cached summary"):
        load_corpus(config(tmp_path), HashEncoder())
    corpus = load_corpus(config(tmp_path), HashEncoder(), require_summaries=False)
    assert len(corpus.uids) == 20
    assert corpus.profiles["news/user00"]["summary"] == "likes news"
    assert corpus.profiles["news/user05"]["summary"] is None
    assert corpus.emb["full"].shape == (20, 8)


def test_splits_file_fixes_the_users_of_every_part(tmp_path, dataset):
    summaries_for(tmp_path, dataset, {f"user{u:02d}" for u in range(20)})
    computed = load_corpus(config(tmp_path), HashEncoder()).splits
    # a different assignment, as another run would have saved it
    uids = [f"news/user{u:02d}" for u in range(20)]
    fixed = {s: {"train": uids[:12], "val": uids[12:16], "test": uids[16:]} for s in ("random", "ood")}
    assert fixed != computed
    save_splits(tmp_path / "splits.json", fixed)
    got = load_corpus(config(tmp_path, splits_file=str(tmp_path / "splits.json")), HashEncoder()).splits
    assert {s: {p: sorted(v) for p, v in got[s].items()} for s in got} == load_splits(tmp_path / "splits.json")


def test_extra_cuts_add_training_users_from_earlier_history_only(tmp_path, dataset):
    from p2p_edge.train.profiles import earlier_cuts

    users = [json.loads(line) for line in open(dataset)]
    out = summaries_for(tmp_path, dataset, {u["user_id"] for u in users})
    with pytest.raises(P2PError, match="extra cuts have no cached summary"):
        load_corpus(config(tmp_path, extra_cuts={"news": 2}), HashEncoder())
    with open(out / "news.summaries.jsonl", "a") as f:
        for u in users:
            for c in earlier_cuts(u, 2, 2):
                f.write(json.dumps({"user_id": u["user_id"], "cutoff": len(profile_items(c, 2)), "summary": "older"}) + "\n")
    plain = load_corpus(config(tmp_path), HashEncoder())
    corpus = load_corpus(config(tmp_path, extra_cuts={"news": 2}), HashEncoder())
    assert corpus.splits == plain.splits  # the cuts never enter the saved splits
    train = set(plain.part("both", "train"))
    # 6 items, 2 queries: one earlier cut per user (profile 2 items, queries items 2-3); only train users give cuts
    assert sorted(u.split("@")[0] for u in corpus.extra_train) == sorted(train)
    assert set(corpus.part("both", "train")) == train | set(corpus.extra_train)
    assert set(corpus.part("random", "train")) == set(plain.part("random", "train")) | set(corpus.extra_train)
    assert corpus.part("both", "test") == plain.part("both", "test")
    for u in corpus.extra_train:
        assert u.endswith("@2") and corpus.profiles[u]["summary"] == "older"
        prof = {it["id"] for it in corpus.profiles[u]["items"]}
        targets = [ex.item["id"] for ex in corpus.examples[u]]
        assert len(targets) == 2 and not prof & set(targets)
        real = u.split("@")[0]
        assert targets == [it["id"] for it in corpus.profiles[real]["items"][2:4]]  # just before the real queries
    assert corpus.emb["full"].shape == (len(corpus.uids), 8) and len(corpus.uids) == 20 + len(corpus.extra_train)
    idx = corpus.index()
    u = corpus.extra_train[0]
    assert not np.allclose(corpus.emb["full"][idx[u]], corpus.emb["full"][idx[u.split("@")[0]]])


@pytest.mark.parametrize("fixed_splits", [False, True])
def test_train_only_users_join_train_and_leave_val_and_test_as_they_were(tmp_path, dataset, fixed_splits):
    from dataclasses import replace

    from p2p_edge.errors import InputError
    from p2p_edge.train.profiles import subsample_users

    summaries_for(tmp_path, dataset, {f"user{u:02d}" for u in range(20)})

    def corpus(splits_file="", **profiles):
        c = config(tmp_path, splits_file=splits_file)
        c = replace(c, profiles=replace(c.profiles, **profiles))
        return load_corpus(c, HashEncoder(), max_users=c.profiles.max_users)

    splits_file = ""
    if fixed_splits:   # the splits a run of 12 of the 20 users saved
        save_splits(tmp_path / "splits.json", corpus(max_users={"news": 12}).splits)
        splits_file = str(tmp_path / "splits.json")
    plain = corpus(splits_file, max_users={"news": 12})
    more = corpus(splits_file, max_users={"news": 12}, train_only_users={"news": 5})
    all_ids = [f"user{u:02d}" for u in range(20)]
    added = {f"news/{u}" for u in set(subsample_users(all_ids, 17)) - set(subsample_users(all_ids, 12))}
    assert len(added) == 5 and not added & set(plain.uids)
    for split in ("random", "ood"):
        for part in ("val", "test"):
            assert sorted(more.splits[split][part]) == sorted(plain.splits[split][part])
        assert set(more.splits[split]["train"]) == set(plain.splits[split]["train"]) | added
    assert set(more.part("both", "train")) == set(plain.part("both", "train")) | added
    assert len(more.uids) == 17 and more.emb["full"].shape == (17, 8)
    with pytest.raises(InputError, match="profiles.train_only_users"):   # nothing comes after all 20 users
        corpus(train_only_users={"news": 5})


def test_earlier_cuts_keep_a_profile_at_least_as_long_as_the_queries():
    from p2p_edge.train.profiles import earlier_cuts

    u = {"user_id": "x", "history": [{"id": str(i)} for i in range(10)]}
    assert [len(c["history"]) for c in earlier_cuts(u, 2, 5)] == [8, 6, 4]  # profile 2 left at the last cut
    assert [len(c["history"]) for c in earlier_cuts(u, 3, 5)] == [7]         # 4 - 3 < 3: no second cut
    assert earlier_cuts(u, 2, 0) == [] and earlier_cuts({"user_id": "y", "history": [{"id": "0"}]}, 2, 3) == []
    assert all(c["user_id"] == "x" for c in earlier_cuts(u, 2, 5))
