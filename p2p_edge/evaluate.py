"""Quality evaluation on held-out users, through the product path: llama.cpp + GGUF adapters (no torch).

Every method answers the same queries of the same users with the same greedy decoding; metrics are averaged
per user first and confidence intervals resample USERS (paired for differences between methods).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics as M
from .adapter import write_adapter

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
    from .profile import profile_text

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
    from .train.data import PRIOR_RULES, user_prior_prediction

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


# ----------------------------------------------------------------------------------------- aggregation
def _task_stat(task, pairs: list[tuple[str | None, str]]) -> dict[str, float]:
    preds, targs = [p for p, _ in pairs], [t for _, t in pairs]
    return task.score(preds, targs) if pairs else {}


def user_metric_table(answers: dict[str, dict], tasks: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """method -> task -> metric -> (value, lo, hi): examples pooled within users, users resampled."""
    out = {}
    for method, by_user in answers.items():
        out[method] = {}
        for name, task in tasks.items():
            per_user = [[(p, t) for (tn, p, t) in rows if tn == name] for rows in by_user.values()]
            per_user = [x for x in per_user if x]
            if not per_user:
                continue

            def stat(idx, per_user=per_user, task=task):
                return _task_stat(task, [pt for i in idx for pt in per_user[i]])

            res = M.bootstrap_stat(len(per_user), stat, n=n_boot, seed=seed)
            res["n_users"] = (len(per_user), len(per_user), len(per_user))
            res["n_examples"] = (sum(map(len, per_user)),) * 3
            out[method][name] = res
    return out


def paired_diff(answers: dict, a: str, b: str, tasks: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """task -> metric -> (a - b, lo, hi), resampling the users both methods answered."""
    out = {}
    users = sorted(set(answers[a]) & set(answers[b]))
    for name, task in tasks.items():
        pa = [[(p, t) for (tn, p, t) in answers[a][u] if tn == name] for u in users]
        pb = [[(p, t) for (tn, p, t) in answers[b][u] if tn == name] for u in users]
        keep = [i for i in range(len(users)) if pa[i]]
        if not keep:
            continue

        def stat(idx, pa=pa, pb=pb, keep=keep, task=task):
            sa = _task_stat(task, [pt for i in idx for pt in pa[keep[i]]])
            sb = _task_stat(task, [pt for i in idx for pt in pb[keep[i]]])
            return {m: sa[m] - sb[m] for m in sa if m in sb}

        out[name] = M.bootstrap_stat(len(keep), stat, n=n_boot, seed=seed)
    return out


def answer_changes(answers: dict, a: str, b: str, tasks: dict) -> dict:
    """task -> how often method `b`'s answer differs from `a`'s on the same query ({"changed", "n"}), and for
    rating / classification tasks how many of the changed answers each got right ({"a_right", "b_right"}).
    With b = the shuffled-profile control this is the profile's direct influence: a profile that changes few
    answers cannot personalise much, whatever the accuracy CIs say."""
    out: dict[str, dict] = {}
    for u in sorted(set(answers[a]) & set(answers[b])):
        if len(answers[a][u]) != len(answers[b][u]):
            raise ValueError(f"{u}: {a} and {b} answered different numbers of queries")
        for (ta, pa, ga), (tb, pb, gb) in zip(answers[a][u], answers[b][u]):
            if ta != tb or ga != gb:
                raise ValueError(f"{u}: {a} and {b} answers are not for the same queries")
            if ta not in tasks:
                continue
            d = out.setdefault(ta, {"n": 0, "changed": 0, "a_right": 0, "b_right": 0})
            d["n"] += 1
            if pa != pb:
                d["changed"] += 1
                d["a_right"] += pa is not None and pa == ga  # answers are parsed already: right = exact match
                d["b_right"] += pb is not None and pb == gb
    for task, d in out.items():
        d["changed_fraction"] = round(d["changed"] / d["n"], 4)
        if tasks[task].kind == "generation":  # exact match says nothing about free text
            del d["a_right"], d["b_right"]
    return out


def answer_changes_cells(d: dict) -> tuple[str, str]:
    """One answer_changes entry as two report cells: "changed of n (pct%)" and "own right / shuffled right"."""
    right = f"{d['a_right']} / {d['b_right']}" if "a_right" in d else "–"
    return f"{d['changed']} of {d['n']} ({100 * d['changed_fraction']:.0f}%)", right


def to_json(table: dict) -> dict:
    """(value, lo, hi) tuples -> {"metric": value, "ci": [lo, hi]} as in quality.json."""
    res = {}
    for method, tasks in table.items():
        res[method] = {}
        for task, mets in tasks.items():
            d = {}
            for m, v in mets.items():
                if m in ("n_users", "n_examples"):
                    d[m] = int(v[0])
                else:
                    d[m] = round(float(v[0]), 4)
                    d[f"{m}_ci"] = [round(float(v[1]), 4), round(float(v[2]), 4)]
            res[method][task] = d
    return res


# ----------------------------------------------------------------------------------------- verdicts
def verdict(diff: dict, metric: str) -> str | None:
    """A paired P2P-minus-other difference (to_json form) on `metric`: "better", "worse", or "tie" when its
    95% CI contains 0; None when the metric was not scored. Lower mae/rmse is better."""
    if metric not in diff:
        return None
    lo, hi = diff[f"{metric}_ci"]
    if lo <= 0 <= hi:
        return "tie"
    return "better" if (lo > 0) != (metric in M.LOWER_IS_BETTER) else "worse"


VERDICT_WORDS = {"better": "**P2P better**", "worse": "P2P worse", "tie": "tie (CI crosses 0)", None: "–"}


def detectable(ci: list[float]) -> float:
    """The smallest true difference that these users would show as a CI clear of 0 in 80% of reruns (normal
    approximation from the 95% CI's width: (1.96 + 0.84) standard errors). A tie with |diff| far below it says
    the comparison had too few users to tell, not that the two methods are equal."""
    return round((ci[1] - ci[0]) / 2 / 1.96 * (1.96 + 0.84), 4)


def checks(paired_diffs: dict, primary: dict[str, str]) -> dict:
    """comparison -> task -> {metric, diff, ci, verdict, detectable} on each task's primary metric: what a card
    states."""
    out = {}
    for comp, by_task in paired_diffs.items():
        for task, d in by_task.items():
            m = primary.get(task)
            v = verdict(d, m) if m else None
            if v is not None:
                out.setdefault(comp, {})[task] = {"metric": m, "diff": d[m], "ci": d[f"{m}_ci"], "verdict": v,
                                                  "detectable": detectable(d[f"{m}_ci"])}
    return out
