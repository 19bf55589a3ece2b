"""Answering held-out users' queries through the product path: llama.cpp + GGUF adapters (no torch).

Every method answers the same queries of the same users with the same greedy decoding; the controls (shuffled
profile, null profile, user prior) are built here beside the method they control for.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from p2p_edge.eval import metrics as M
from p2p_edge.eval.stats import paired_diff, user_metric_table
from p2p_edge.gguf import write_adapter

ANSWER_TOKENS = {"rating": 4, "classification": 10, "generation": 28}


def answer(llm, task, prompt: str) -> str | None:
    raw = llm.complete([{"role": "user", "content": prompt}], max_tokens=ANSWER_TOKENS[task.kind])
    return task.parse(raw)


def run_adapter_method(llm, corpus, uids: list[str], adapter_for: Callable[[str, Path], Path | None],
                       prompt_for: Callable | None = None, progress: Callable | None = None) -> dict:
    """Answer every reserved query of each user with that user's adapter (None = base model)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="p2p-eval-") as tmp:
        for n, uid in enumerate(uids):
            path = adapter_for(uid, Path(tmp))
            ad = llm.load_adapter(path) if path is not None else None
            llm.use(ad)
            rows = []
            for ex in corpus.examples[uid]:
                task = corpus.tasks[ex.task]
                prompt = prompt_for(uid, ex) if prompt_for else ex.prompt
                rows.append((ex.task, answer(llm, task, prompt), ex.target))
            out[uid] = rows
            if ad is not None:
                llm.free(ad)
            if progress:
                progress(n + 1, len(uids))
    return out


def hypernet_adapters(hypernet, base, emb: np.ndarray, index: dict[str, int], *, donor: dict[str, str] | None = None):
    """adapter_for(uid) that writes the hypernet's LoRA for uid's profile (or for its donor's, for the
    shuffled-profile control)."""
    def adapter_for(uid: str, tmp: Path) -> Path:
        src = donor[uid] if donor else uid
        lora = hypernet.generate(emb[index[src]])
        return write_adapter(tmp / "a.gguf", lora, base, dtype="f16")

    return adapter_for


def null_profile_embedding(encoder) -> np.ndarray:
    """The null-profile control's input: the client's profile vector for a user with no history (no summary, items
    or habits). A wrong profile hurting (shuffled) is not the same as the right one helping; this neutral one tells."""
    from p2p_edge.profile import profile_text

    return encoder.encode([profile_text(None, [], None)])[0]


def limit_queries(corpus, uids: list[str], per_user_task: int, kinds: tuple[str, ...] = ("generation",)) -> None:
    """Keep each eval user's most recent `per_user_task` queries of every task whose kind is in `kinds` (the
    expensive free-text answers; bounds CPU time). Tasks of other kinds (ratings, classes: answers of a few tokens)
    keep all reserved queries, so their per-user scores rest on every query the protocol reserves."""
    if per_user_task <= 0:
        return
    for u in uids:
        kept, seen = [], {}
        for ex in reversed(corpus.examples[u]):
            if corpus.tasks[ex.task].kind not in kinds:
                kept.append(ex)
                continue
            seen[ex.task] = seen.get(ex.task, 0) + 1
            if seen[ex.task] <= per_user_task:
                kept.append(ex)
        corpus.examples[u] = kept[::-1]


def derangement(uids: list[str], seed: int = 0) -> dict[str, str]:
    """Each user gets another user's profile (no fixed points): the shuffled-profile control. Donors come from
    the same dataset (uid prefix "<dataset>/"), so the control is an in-domain profile of someone else, not an
    off-domain one that is trivially wrong; a dataset with a single user takes its donor from the others."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for u in uids:
        groups.setdefault(u.split("/", 1)[0] if "/" in u else "", []).append(u)
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) == 1:
            others = [u for u in uids if u != members[0]]
            out[members[0]] = rng.choice(others) if others else members[0]  # one user in all: nobody to swap with
            continue
        perm = members[:]
        while any(a == b for a, b in zip(members, perm)):
            rng.shuffle(perm)
        out.update(zip(members, perm))
    return out


def prior_answers(corpus, uids: list[str], train_uids: list[str], val_uids: list[str]) -> dict:
    """The best non-LLM user-prior rule per task, chosen on validation users (never on test users)."""
    from p2p_edge.eval.priors import PRIOR_RULES, user_prior_prediction

    out = {u: [] for u in uids}
    for name, task in corpus.tasks.items():
        train_t = [ex.target for u in train_uids for ex in corpus.examples[u] if ex.task == name]
        if not train_t:
            continue
        majority = max(set(train_t), key=train_t.count) if task.kind != "generation" else ""
        rules = PRIOR_RULES.get(task.kind, ())
        if not rules:
            continue

        def score(rule, users):
            rows = {u: [(name, user_prior_prediction(task, corpus.profiles[u]["items"], majority, rule), ex.target)
                        for ex in corpus.examples[u] if ex.task == name] for u in users}
            return rows, user_metric_table({"x": rows}, corpus.tasks)["x"].get(name, {})

        primary = task.primary_metric
        lower_better = primary in M.LOWER_IS_BETTER
        best = None
        for rule in rules:
            _, table = score(rule, val_uids)
            v = table.get(primary, (np.nan,))[0]
            if best is None or (v < best[1] if lower_better else v > best[1]):
                best = (rule, v)
        rows, _ = score(best[0], uids)
        for u, r in rows.items():
            out[u].extend(r)
    return out


def score_split(llm, corpus, uids: list[str], shared: dict[str, dict], hypernet, emb: np.ndarray,
                index: dict[str, int], *, train_uids: list[str], val_uids: list[str], compare,
                known: dict[str, dict] | None = None) -> tuple[dict, dict, dict]:
    """One split's test users: the split-independent answers in `shared` (method -> uid -> rows) restricted to
    `uids`, plus what depends on who else is in the split: the shuffled-profile control (donors among `uids`) and
    the user prior (rule picked on `val_uids`). The shuffled control is taken from `known` (an earlier run's answers
    for this split's users) when it is there; the prior (no LLM) is always recomputed. -> (answers, metric table, paired p2p-minus-`compare` diffs)."""
    ans = {m: {u: a[u] for u in uids if u in a} for m, a in shared.items()}
    known = known or {}
    ans["p2p_shuffled"] = known.get("p2p_shuffled") or run_adapter_method(
        llm, corpus, uids, hypernet_adapters(hypernet, llm.spec, emb, index, donor=derangement(uids, seed=1)))
    ans["prior"] = prior_answers(corpus, uids, train_uids, val_uids)
    table = user_metric_table(ans, corpus.tasks)
    diffs = {f"p2p-{b}": paired_diff(ans, "p2p", b, corpus.tasks) for b in compare if b in ans and b != "p2p"}
    return ans, table, diffs
