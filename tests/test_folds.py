"""p2p_edge.lab.folds: k-fold user splits and the relocated recipe that trains on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_edge.train.config import load_config
from p2p_edge.eval.splits import load_splits
from p2p_edge.lab.folds import dump_toml, fold_splits, main, relocated_config

ROOT = Path(__file__).resolve().parents[1]


@settings(max_examples=30, deadline=None)
@given(n_news=st.integers(5, 60), n_other=st.integers(0, 30), folds=st.integers(2, 6))
def test_every_user_is_a_test_user_of_exactly_one_fold(n_news, n_other, folds):
    users = {"news": [f"news/u{i}" for i in range(n_news)], "shop": [f"shop/u{i}" for i in range(n_other)]}
    seen: list[str] = []
    for k in range(folds):
        p = fold_splits(users, {"news"}, folds, k)
        assert not (set(p["test"]) & set(p["train"])) and not (set(p["test"]) & set(p["val"]))
        assert not (set(p["train"]) & set(p["val"]))
        assert sorted(p["train"] + p["val"] + p["test"]) == sorted(users["news"] + users["shop"])
        assert all(u.startswith("news/") for u in p["test"])  # other datasets only train
        seen += p["test"]
    assert sorted(seen) == sorted(users["news"])


def test_folds_are_seeded_and_need_a_valid_index():
    users = {"news": [f"news/u{i}" for i in range(20)]}
    assert fold_splits(users, {"news"}, 5, 1) == fold_splits(users, {"news"}, 5, 1)
    assert fold_splits(users, {"news"}, 5, 1, seed=1) != fold_splits(users, {"news"}, 5, 1)
    with pytest.raises(ValueError):
        fold_splits(users, {"news"}, 5, 5)


def test_the_relocated_recipe_means_the_same_from_another_directory(tmp_path):
    src = ROOT / "configs" / "train_default.toml"
    data = relocated_config(src, out_dir=str(tmp_path / "p2p"), **{"train.threads": 2})
    (tmp_path / "c.toml").write_text(dump_toml(data))
    a, b = load_config(src), load_config(tmp_path / "c.toml")
    assert b.resolve(b.tasks_config) == a.resolve(a.tasks_config)
    assert b.resolve(b.profiles.summaries_dir) == a.resolve(a.profiles.summaries_dir)
    assert b.resolve(b.splits_file) == a.resolve(a.splits_file)
    assert b.out_dir == str(tmp_path / "p2p") and b.train.threads == 2
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        for k in ("source", "tasks_config", "splits_file", "out_dir"):
            d.pop(k)
        d["profiles"].pop("summaries_dir")
        d["train"].pop("threads")
    assert da == db  # every other knob unchanged


def test_an_overlay_recipe_keeps_its_base_and_its_own_paths_from_another_directory(tmp_path):
    # the chat recipes are overlays (extends = "train_chat.toml") with paths of their own (preserve_replies)
    src = ROOT / "configs" / "train_chat_kl.toml"
    data = relocated_config(src, out_dir=str(tmp_path / "p2p"), **{"train.threads": 1})
    (tmp_path / "c.toml").write_text(dump_toml(data))
    a, b = load_config(src), load_config(tmp_path / "c.toml")
    assert b.resolve(b.train.preserve_replies) == a.resolve(a.train.preserve_replies)
    assert b.resolve(b.train.preserve_replies).is_file()
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        for k in ("source", "tasks_config", "splits_file", "out_dir"):
            d.pop(k)
        d["profiles"].pop("summaries_dir")
        for k in ("threads", "preserve_replies"):
            d["train"].pop(k)
    assert da == db and b.train.threads == 1  # the base's knobs (tasks, preservation, steps) came along


def test_cli_writes_a_fold_that_loads(tmp_path, capsys):
    out = tmp_path / "fold1"
    assert main(["--config", str(ROOT / "configs" / "train_default.toml"), "--datasets", "huffpost_news",
                 "--fold", "1", "--mt-lora", "--out", str(out)]) == 0
    sp = load_splits(out / "splits.json")
    assert sp["random"] == sp["ood"] and sp["random"]["test"]
    assert all(u.startswith("huffpost_news/") for u in sp["random"]["test"])
    assert json.loads((out / "splits.json").read_text())["meta"]["fold"] == 1
    assert load_config(out / "config_mt_lora.toml").train.method == "mt_lora"
    assert load_config(out / "config.toml").splits_file == str(out / "splits.json")
    assert "p2p-edge train --config" in capsys.readouterr().out


def test_cli_names_an_unknown_dataset(tmp_path, capsys):
    assert main(["--config", str(ROOT / "configs" / "train_default.toml"), "--datasets", "nope",
                 "--fold", "0", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err
    assert not (tmp_path / "f").exists()


def test_a_controls_own_recipe_folds_to_the_same_users(tmp_path, capsys):
    args = ["--datasets", "huffpost_news", "--fold", "2"]
    assert main(["--config", str(ROOT / "configs" / "train_default.toml"), *args, "--out", str(tmp_path / "p")]) == 0
    assert main(["--config", str(ROOT / "configs" / "train_mt_lora.toml"), *args, "--out", str(tmp_path / "m")]) == 0
    assert load_splits(tmp_path / "p" / "splits.json") == load_splits(tmp_path / "m" / "splits.json")
    cfg = load_config(tmp_path / "m" / "config.toml")
    assert cfg.train.method == "mt_lora" and cfg.out_dir == str(tmp_path / "m" / "mt_lora")
    assert "--reuse FOLD/report" in capsys.readouterr().out  # scored next to the fold's hypernet, not as one
    assert main(["--config", str(ROOT / "configs" / "train_mt_lora.toml"), *args, "--mt-lora",
                 "--out", str(tmp_path / "x")]) == 2
    assert "already is 'mt_lora'" in capsys.readouterr().err and not (tmp_path / "x").exists()
