"""Users, profiles, splits and (prompt, target) examples for training and evaluation.

Protocol (one profile per user, so one LLM summary per user):
- each user's last `query_items` items (at most half the history) are reserved as queries; the profile
  (summary + top-k retrieval) is built from the items before them only, so no target is in its own profile;
- TRAIN users: every reserved item that qualifies for a task is a training example;
- VAL / TEST users: every reserved item that qualifies is scored; metrics are averaged per user first, and
  confidence intervals resample users.
Users are split per dataset (random, or OOD = whole k-means clusters of profile embeddings held out), so every
dataset's tasks have held-out users in both splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, P2PError
from ..lexical import lexical_vector
from p2p_edge.eval.task import Task
from p2p_edge.eval.task_config import load_config as load_task_config
from .config import Config, dataset_name
from p2p_edge.eval.corpus import read_users, resolve_task_labels
from p2p_edge.eval.splits import SPLIT_PARTS, load_splits, ood_split, random_split
from .profiles import (VARIANTS, earlier_cuts, embed_profiles, load_summaries, n_query_items, profile_items,
                       subsample_users)


@dataclass
class Example:
    uid: str          # "<dataset>/<user_id>"
    task: str
    prompt: str
    target: str
    item: dict


@dataclass
class Corpus:
    uids: list[str]
    emb: dict[str, np.ndarray]            # variant -> (n_users, dim), rows aligned with uids
    profiles: dict[str, dict]             # uid -> {"summary", "items"} (profile items)
    examples: dict[str, list[Example]]    # uid -> reserved-query examples (all tasks)
    tasks: dict[str, Task]
    splits: dict[str, dict[str, list[str]]]   # {"random"|"ood": {"train"|"val"|"test": [uid]}}
    # earlier cuts of train users ("<dataset>/<user_id>@<profile length>"): training only, never in `splits`
    extra_train: list[str] = field(default_factory=list)

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.uids)}

    def part(self, split: str, part: str) -> list[str]:
        """Users of one part (see split_part); the earlier cuts of train users also train."""
        return split_part(self.splits, split, part) + (self.extra_train if part == "train" else [])


def split_part(splits: dict[str, dict[str, list[str]]], split: str, part: str) -> list[str]:
    """Users of one part of a splits file's splits; split "both" = train users of both splits, val users of either
    (never a test user). A KeyError names an unknown split or part."""
    if split != "both":
        return list(splits[split][part])
    r, o = splits["random"], splits["ood"]
    test = set(r["test"]) | set(o["test"])
    if part == "train":
        return sorted(set(r["train"]) & set(o["train"]))
    if part == "val":
        return sorted((set(r["val"]) | set(o["val"])) - test)
    return sorted(test)


def load_corpus(cfg: Config, encoder, *, max_users: dict | None = None, require_summaries: bool = True) -> Corpus:
    tcfg = load_task_config(cfg.resolve(cfg.tasks_config))
    names = cfg.tasks or list(tcfg.tasks)
    tasks = {n: tcfg.tasks[n] for n in names}
    by_dataset: dict[Path, list[Task]] = {}
    for t in tasks.values():
        by_dataset.setdefault(Path(t.dataset), []).append(t)

    uids, emb_parts, profiles, examples, extra_train = [], {v: [] for v in VARIANTS}, {}, {}, []
    splits = {"random": {"train": [], "val": [], "test": []}, "ood": {"train": [], "val": [], "test": []}}
    resolved: dict[str, Task] = {}
    # a splits file (e.g. another run's splits.json) fixes the users of every part, so runs compare on the same users
    fixed = load_splits(cfg.resolve(cfg.splits_file)) if cfg.splits_file else None
    for ds_path, ds_tasks in by_dataset.items():
        ds = dataset_name(ds_path)
        q = cfg.query_items_for(ds_path)
        users = list(read_users(ds_path))
        summaries = load_summaries(cfg.resolve(cfg.profiles.summaries_dir) / f"{ds}.summaries.jsonl")
        limit = (max_users or {}).get(ds, 0)
        all_ids = [u["user_id"] for u in users]
        keep = set(subsample_users(all_ids, limit))
        n_more = int(cfg.profiles.train_only_users.get(ds, 0))
        if n_more and not 0 < limit < len(all_ids):
            raise InputError(cfg.source, f"{ds}: train-only users come after a max_users subsample of fewer than its "
                             f"{len(all_ids)} users; set profiles.max_users.{ds}", field="profiles.train_only_users")
        more = set(subsample_users(all_ids, limit + n_more)) - keep if n_more else set()
        users = [u for u in users if u["user_id"] in keep | more]
        missing = [u["user_id"] for u in users if (u["user_id"], len(profile_items(u, q))) not in summaries]
        if missing and require_summaries:
            raise P2PError(f"{ds}: {len(missing)} users have no cached summary (first: {missing[0]}); "
                           "run `python -m p2p_edge.train.profiles summaries` first")
        # require_summaries=False keeps them with a summary-less profile (evaluation needs summaries only for the
        # users it answers for; the others still count for labels and priors)
        embs = embed_profiles(encoder, users, q, summaries, top_k=cfg.profiles.top_k,
                              habits_weight=cfg.profiles.habits_weight)
        rows = [i for i, u in enumerate(users) if u["user_id"] not in more]   # the splits: max_users' users alone
        ids = [users[i]["user_id"] for i in rows]
        # splits per dataset; OOD clusters on the full-profile embeddings
        # a splits file fixes the users of the datasets it knows; a dataset it has never seen (added to the
        # recipe later) gets its seeded splits computed here, and the run's own splits.json records them
        if fixed and any(u.startswith(ds + "/") for part in fixed["random"].values() for u in part):
            rnd, ood = ({p: [u.split("/", 1)[1] for u in fixed[n][p] if u.startswith(ds + "/")] for p in SPLIT_PARTS}
                        for n in ("random", "ood"))
        else:
            rnd = random_split(ids, tcfg.splits)
            ood, _, _ = ood_split(ids, embs["full"][rows], tcfg.splits)
        for sp in (rnd, ood):
            sp["train"] = list(sp["train"]) + sorted(more)
        for name, sp in (("random", rnd), ("ood", ood)):
            for part in ("train", "val", "test"):
                splits[name][part] += [f"{ds}/{u}" for u in sp[part]]
        # labels (auto top-k) decided from users that are TRAIN users in both splits
        train_ids = set(rnd["train"]) & set(ood["train"])
        for t in ds_tasks:
            resolved[t.name] = resolve_task_labels(t, users, train_ids) if t.kind == "classification" else t
        n_cuts = int(cfg.profiles.extra_cuts.get(ds, 0))
        cuts = [c for u in users if u["user_id"] in train_ids for c in earlier_cuts(u, q, n_cuts)]
        with_summary = [c for c in cuts if (c["user_id"], len(profile_items(c, q))) in summaries]
        if len(with_summary) < len(cuts) and require_summaries:
            first = next(c["user_id"] for c in cuts if c not in with_summary)
            raise P2PError(f"{ds}: {len(cuts) - len(with_summary)} extra cuts have no cached summary (first: {first}); "
                           f"run `python -m p2p_edge.train.profiles summaries --extra-cuts {n_cuts}` first")
        cuts = with_summary
        if cuts:
            cut_embs = embed_profiles(encoder, cuts, q, summaries, top_k=cfg.profiles.top_k,
                                      habits_weight=cfg.profiles.habits_weight)
            embs = {v: np.concatenate([embs[v], cut_embs[v]]) for v in embs}
        for n, u in enumerate(users + cuts):
            items = profile_items(u, q)
            uid = f"{ds}/{u['user_id']}" + (f"@{len(items)}" if n >= len(users) else "")
            uids.append(uid)
            if n >= len(users):
                extra_train.append(uid)
            profiles[uid] = {"summary": summaries.get((u["user_id"], len(items))), "items": items}
            reserved = u["history"][len(u["history"]) - n_query_items(u, q):]
            examples[uid] = [Example(uid, t.name, resolved[t.name].render(it), resolved[t.name].target(it), it)
                             for it in reserved for t in ds_tasks if resolved[t.name].qualifies(it)]
        for v in VARIANTS:
            emb_parts[v].append(embs[v])
    emb = {v: np.concatenate(p).astype(np.float32) for v, p in emb_parts.items()}
    return Corpus(uids, emb, profiles, examples, resolved, splits, extra_train)


def profile_inputs(cfg: Config, corpus: Corpus, tok, model) -> tuple[np.ndarray, int]:
    """The hypernet's input per corpus user (rows aligned with corpus.uids) and the width of its lexical part: the
    profile embedding, and with profiles.lexical the lexical vector of the user's profile items (p2p_edge/lexical.py)
    from the base model's tokenizer and input embeddings appended (0 without)."""
    emb = corpus.emb[cfg.profiles.variant]
    if not cfg.profiles.lexical:
        return emb, 0
    table = model.get_input_embeddings().weight.detach().float().numpy()
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    lex = np.stack([lexical_vector(cfg.profiles.lexical, corpus.profiles[u]["items"], tokenize, table)
                    for u in corpus.uids])
    return np.concatenate([emb, lex], axis=1).astype(np.float32), lex.shape[1]
