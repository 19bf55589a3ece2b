"""The benchmark's users: the held-out test users of the hypernet's training splits, with their profiles.

The config (tasks, profile protocol, splits file) is the training config of the hypernet under test, so the
benchmark answers exactly the queries its training never saw. Missing LLM summaries are generated for the users
the benchmark answers for (resumable cache, the client's own summariser); other users only feed labels and priors.
"""

from __future__ import annotations

import sys
from pathlib import Path

from p2p_edge.errors import P2PError
from p2p_edge.train.config import Config, dataset_name, load_config
from p2p_edge.eval.splits import load_splits
from p2p_edge.train.profiles import build_summaries, load_summaries, profile_items, read_user_file, subsample_users

SPLITS = ("random", "ood")


def held_out_users(cfg: Config, per_split_dataset: int = 0) -> dict[str, list[str]]:
    """{split: test uids}; with per_split_dataset > 0, a deterministic subsample of that many per dataset."""
    if not cfg.splits_file:
        raise P2PError(f"{cfg.source}: the benchmark needs the hypernet's splits (set splits_file)")
    splits = load_splits(cfg.resolve(cfg.splits_file))
    out = {}
    for s in SPLITS:
        by_ds: dict[str, list[str]] = {}
        for uid in splits[s]["test"]:
            by_ds.setdefault(uid.split("/", 1)[0], []).append(uid)
        out[s] = sorted(u for ds in by_ds.values() for u in subsample_users(ds, per_split_dataset, seed=1))
    return out


def dataset_paths(cfg: Config) -> dict[str, Path]:
    from p2p_edge.eval.task_config import load_config as load_task_config

    tcfg = load_task_config(cfg.resolve(cfg.tasks_config))
    names = cfg.tasks or list(tcfg.tasks)
    return {dataset_name(Path(tcfg.tasks[n].dataset)): Path(tcfg.tasks[n].dataset) for n in names}


def ensure_summaries(cfg: Config, uids: list[str], threads: int | None = None, log=print) -> int:
    """Generate the cached LLM summaries these users lack; returns how many were generated."""
    want: dict[str, set[str]] = {}
    for uid in uids:
        ds, user = uid.split("/", 1)
        want.setdefault(ds, set()).add(user)
    made = 0
    for ds, path in dataset_paths(cfg).items():
        if ds not in want:
            continue
        q = cfg.query_items_for(path)
        cache = cfg.resolve(cfg.profiles.summaries_dir) / f"{ds}.summaries.jsonl"
        have = load_summaries(cache)
        missing = {u["user_id"] for u in read_user_file(path)
                   if u["user_id"] in want[ds] and (u["user_id"], len(profile_items(u, q))) not in have}
        if missing:
            log(f"{ds}: generating {len(missing)} missing profile summaries (cached in {cache})")
            made += build_summaries(path, q, cache, threads=threads, user_ids=missing)
    return made


def load_eval_corpus(config_path: Path, *, per_split_dataset: int = 0, threads: int = 2, log=print):
    """(cfg, corpus, {split: test uids}) with summaries for every test user answered."""
    from p2p_edge.encoder import Encoder
    from p2p_edge.train.dataset import load_corpus

    cfg = load_config(config_path)
    tests = held_out_users(cfg, per_split_dataset)
    needed = sorted(set(tests["random"]) | set(tests["ood"]))
    ensure_summaries(cfg, needed, threads, log)
    corpus = load_corpus(cfg, Encoder(threads=threads), max_users=cfg.profiles.max_users, require_summaries=False)
    known = set(corpus.uids)
    lost = [u for u in needed if u not in known or corpus.profiles[u]["summary"] is None]
    if lost:
        raise P2PError(f"{len(lost)} test users have no profile (first: {lost[0]}); is the data the one the splits were made on?")
    return cfg, corpus, tests


if __name__ == "__main__":  # prepare the summaries only: python -m bench.corpus CONFIG
    c = load_config(Path(sys.argv[1]))
    t = held_out_users(c)
    print(ensure_summaries(c, sorted(set(t["random"]) | set(t["ood"]))), "summaries generated")
