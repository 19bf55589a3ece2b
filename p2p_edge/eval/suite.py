"""The one evaluation: every method answers the same held-out users' queries, then each split is scored with its
controls, paired differences and answer changes. bench.quality, the report and checkpoint selection all call it.

    results = evaluate(llm, corpus, users_of, methods, hypernet=..., emb=..., compare=...)
    results[split] -> SplitScore(answers, table, diffs, changes)

Answers that do not depend on the split (a method's answers for a user) are computed once for the union of the
splits' users; what depends on who else is in the split is computed per split: the shuffled-profile control (donors
among the split's users) and the user prior (its rule picked on the split's validation users). Splits with the same
users (k-fold runs give both splits one fold's users) are scored once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from p2p_edge.eval.answer import run_adapter_method, score_split
from p2p_edge.eval.stats import answer_changes, user_metric_table

SPLITS = ("random", "ood")


@dataclass
class Method:
    """How one method answers: an adapter per user (`adapter_for(uid, tmp) -> path | None`), optionally its own
    prompt (`prompt_for(uid, example)`), on all the evaluated users or only on `users` (e.g. OPPU's subset)."""

    name: str
    adapter_for: Callable
    prompt_for: Callable | None = None
    users: list[str] | None = None


@dataclass
class SplitScore:
    answers: dict            # method -> uid -> [(task, answer, target)]
    table: dict              # method -> task -> metrics (users resampled for CIs)
    diffs: dict              # "p2p-METHOD" -> task -> paired difference over users
    changes: dict = field(default_factory=dict)   # task -> how many answers the profile itself moves


def validation_users(corpus) -> dict[str, list[str]]:
    """split -> its validation users that are no test user of either split (choosing never sees a test user)."""
    every_test = set(corpus.splits["random"]["test"]) | set(corpus.splits["ood"]["test"])
    return {s: [u for u in corpus.splits[s]["val"] if u not in every_test] for s in SPLITS}


def held_out_users(corpus, part: str) -> dict[str, list[str]]:
    """split -> the users a reading scores: "test" = each split's test users; "val" = validation users (never a test
    user of either split: a random-split val user may be an OOD test user)."""
    if part == "val":
        return validation_users(corpus)
    return {s: list(corpus.splits[s]["test"]) for s in SPLITS}


def union(users_of: dict[str, list[str]]) -> list[str]:
    """Both splits' users, sorted: the split-independent answers are computed once for them."""
    return sorted(set().union(*users_of.values()))


def answer_methods(llm, corpus, uids: list[str], methods: list[Method], *, known: dict | None = None,
                   log=lambda m: None) -> tuple[dict, dict]:
    """method -> uid -> rows for `uids` (a method's `users` restricts it), taking any method in `known` (e.g. an
    earlier report's answers) as it is; -> (answers, seconds per method answered here)."""
    answers, seconds = dict(known or {}), {}
    for m in methods:
        if m.name in answers:
            log(f"{m.name} reused")
            continue
        who = uids if m.users is None else [u for u in uids if u in set(m.users)]
        t = time.perf_counter()
        answers[m.name] = run_adapter_method(llm, corpus, who, m.adapter_for, prompt_for=m.prompt_for)
        seconds[m.name] = round(time.perf_counter() - t, 1)
        log(f"{m.name} answered {len(who)} users in {seconds[m.name]:.0f} s")
    return answers, seconds


def evaluate(llm, corpus, users_of: dict[str, list[str]], methods: list[Method], *, hypernet, emb: np.ndarray,
             compare: tuple[str, ...], controls: bool = True, known: dict | None = None,
             known_by_split: dict[str, dict] | None = None, log=lambda m: None) -> tuple[dict[str, SplitScore], dict]:
    """-> ({split: SplitScore}, seconds per method). `controls=False` scores only the given methods (no shuffled
    profile, no prior: checkpoint selection on validation users). `known`: split-independent answers to reuse;
    `known_by_split`: per split, answers of the split-dependent controls to reuse (the shuffled profile)."""
    index = corpus.index()
    answers, seconds = answer_methods(llm, corpus, union(users_of), methods, known=known, log=log)
    out: dict[str, SplitScore] = {}
    scored: dict[tuple, SplitScore] = {}
    for split, uids in users_of.items():
        val_uids = corpus.splits[split]["val"]
        key = (tuple(uids), tuple(val_uids))
        if key not in scored:
            if controls:
                ans, table, diffs = score_split(llm, corpus, uids, answers, hypernet, emb, index,
                                                train_uids=corpus.part("both", "train"), val_uids=val_uids,
                                                compare=compare, known=(known_by_split or {}).get(split))
                changes = (answer_changes(ans, "p2p", "p2p_shuffled", corpus.tasks)
                           if "p2p" in ans and "p2p_shuffled" in ans else {})
            else:
                ans = {m: {u: a[u] for u in uids if u in a} for m, a in answers.items()}
                table, diffs, changes = user_metric_table(ans, corpus.tasks), {}, {}
            scored[key] = SplitScore(ans, table, diffs, changes)
            log(f"{split} split scored ({len(uids)} users)")
        out[split] = scored[key]
    return out, seconds
