"""Every committed training recipe loads, and an experiment is a short overlay of a base recipe."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from p2p_edge.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("train_*.toml"))
EXPERIMENTS = sorted((CONFIGS / "experiments").glob("*.toml"))


def test_there_are_recipes_and_experiments():
    assert {p.name for p in RECIPES} >= {"train_default.toml", "train_mt_lora.toml"} and len(EXPERIMENTS) >= 5


@pytest.mark.parametrize("path", RECIPES + EXPERIMENTS, ids=lambda p: p.name)
def test_recipe_loads_and_its_paths_exist(path):
    cfg = load_config(path)
    assert cfg.resolve(cfg.tasks_config).is_file()
    if cfg.profiles.summaries_dir:
        assert cfg.resolve(cfg.profiles.summaries_dir).is_dir()
    if cfg.train.preserve_replies:
        assert cfg.resolve(cfg.train.preserve_replies).is_file()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_is_a_short_overlay(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 20, f"{path.name}: an experiment holds only what differs from its base"
    assert tomllib.loads(text).get("extends"), f"{path.name}: must extend a base recipe"
