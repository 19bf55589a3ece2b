"""Scoring answers: metrics averaged per user first, confidence intervals that resample USERS (paired for a
difference between two methods), answer changes, and the verdict words the reports print."""

from __future__ import annotations


from p2p_edge.eval import metrics as M

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
