"""How much can a model gain from a user's profile on a classification task, and can these test users show it?

A transparent non-LLM probe, so the hypernet's own-vs-shuffled-profile check has a yardstick:
  score(c) = log p(c | query text) + beta * (log p_user(c) - log p_train(c))
- p(c | query text): softmax regression on sentence-encoder embeddings of the query prompt, fit on TRAIN users'
  items (their profile items and reserved queries), never on the users it is scored on;
- p_user(c): the user's label counts over their PROFILE items, smoothed towards p_train with strength alpha;
- (beta, alpha): chosen on validation users. beta = 0 is the text-only model, which no profile can move.
The probe is scored like P2P in the reports: each split's test users with their own profile and with the same
shuffled donors (answer.derangement, seed 1), paired 95% bootstrap CI over users of own minus shuffled.

Power: the same probe cross-fitted over ALL users of the dataset (k folds of users; each fold scored by a model
fit on the other folds) estimates the true own-minus-shuffled gain with many users; resampling n-user panels from
those users gives the chance that a model this profile-aware shows a CI above 0 with n test users.

    python -m bench.profile_signal --config configs/train_default.toml --task news_category \
        --out bench/results/profile_signal
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.panels import load_answers
from p2p_edge.errors import InputError
from p2p_edge.eval.answer import derangement
from p2p_edge.eval.stats import detectable, paired_diff, to_json, user_metric_table
from p2p_edge.fileio import atomic_write_text

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
ALPHAS = (0.5, 2.0, 8.0)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_cls: int, l2: float = 1e-3) -> np.ndarray:
    """Multinomial logistic regression (bias included) by L-BFGS; returns W of shape (dim + 1, n_cls)."""
    from scipy.optimize import minimize

    xb = np.hstack([x, np.ones((len(x), 1), x.dtype)]).astype(np.float64)
    onehot = np.eye(n_cls)[y]

    def f(w):
        W = w.reshape(xb.shape[1], n_cls)
        z = xb @ W
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -(onehot * logp).sum() / len(xb) + l2 * (W[:-1] ** 2).sum()
        grad = xb.T @ (np.exp(logp) - onehot) / len(xb)
        grad[:-1] += 2 * l2 * W[:-1]
        return loss, grad.ravel()

    res = minimize(f, np.zeros(xb.shape[1] * n_cls), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(xb.shape[1], n_cls)


def log_softmax_scores(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = np.hstack([x, np.ones((len(x), 1), x.dtype)]) @ W
    z -= z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


class Probe:
    """Everything the probe needs per user: query embeddings + targets, and profile label counts."""

    def __init__(self, corpus, task_name: str, encoder):
        task = corpus.tasks[task_name]
        self.task, self.labels = task, list(task.label_space)
        self.cls = {c: i for i, c in enumerate(self.labels)}
        uids = [u for u in corpus.uids if any(ex.task == task_name for ex in corpus.examples[u])]
        texts, owner, kind, y = [], [], [], []
        self.counts = {}
        for u in uids:
            cnt = np.zeros(len(self.labels))
            for it in corpus.profiles[u]["items"]:
                if task.qualifies(it):
                    t = self.cls[task.target(it)]
                    cnt[t] += 1
                    texts.append(task.render(it)), owner.append(u), kind.append("profile"), y.append(t)
            self.counts[u] = cnt
            for ex in corpus.examples[u]:
                if ex.task == task_name:
                    texts.append(ex.prompt), owner.append(u), kind.append("query"), y.append(self.cls[ex.target])
        self.uids = uids
        self.x = encoder.encode(texts)
        self.owner, self.kind, self.y = np.array(owner), np.array(kind), np.array(y)

    def fit(self, train_uids) -> tuple[np.ndarray, np.ndarray]:
        """(text model W, train label distribution) from the given users' items."""
        m = np.isin(self.owner, list(train_uids))
        W = fit_softmax(self.x[m], self.y[m], len(self.labels))
        prior = np.bincount(self.y[m], minlength=len(self.labels)) + 1.0
        return W, prior / prior.sum()

    def answers(self, W, p_train, uids, beta: float, alpha: float, donor: dict | None = None) -> dict:
        """uid -> [(task, predicted label, target)] for each user's queries, using the profile of donor[uid]
        (default: the user's own)."""
        out = {}
        for u in uids:
            q = (self.owner == u) & (self.kind == "query")
            cnt = self.counts[(donor or {}).get(u, u)]
            p_user = (cnt + alpha * p_train) / (cnt.sum() + alpha)
            s = log_softmax_scores(W, self.x[q]) + beta * (np.log(p_user) - np.log(p_train))
            out[u] = [(self.task.name, self.labels[int(p)], self.labels[int(t)])
                      for p, t in zip(s.argmax(1), self.y[q])]
        return out

    def choose(self, W, p_train, val_uids) -> tuple[float, float]:
        """(beta, alpha) with the best pooled-within-user accuracy on validation users (ties: smaller beta)."""
        def acc(ans):
            return np.mean([np.mean([p == t for _, p, t in rows]) for rows in ans.values() if rows])
        grid = [(b, a) for b in BETAS for a in ALPHAS]
        return max(grid, key=lambda ba: (round(acc(self.answers(W, p_train, val_uids, *ba)), 6), -ba[0]))


def read_out_counts(probe: Probe, vecs: dict[str, np.ndarray], train_uids, lam: float = 0.1,
                    n: float = 20.0) -> dict[str, np.ndarray]:
    """What the hypernet's input vector holds of each user's label mix: a ridge read-out of the (smoothed) log
    label distribution from the profile vector, fit on train users, returned as n pseudo-counts per user."""
    uids = probe.uids
    C = np.array([probe.counts[u] for u in uids])
    target = np.log((C + 0.5) / (C.sum(1, keepdims=True) + 0.5 * C.shape[1]))
    X = np.hstack([np.array([vecs[u] for u in uids], np.float64), np.ones((len(uids), 1))])
    tr = np.isin(uids, list(train_uids))
    A = np.linalg.solve(X[tr].T @ X[tr] + lam * np.eye(X.shape[1]), X[tr].T @ target[tr])
    P = np.exp(X @ A)
    P /= P.sum(1, keepdims=True)
    return {u: n * P[i] for i, u in enumerate(uids)}


def per_user_correct(ans: dict) -> dict[str, np.ndarray]:
    return {u: np.array([p == t for _, p, t in rows], float) for u, rows in ans.items() if rows}


def panel_power(own: dict, shuf: dict, n: int, panels: int = 400, n_boot: int = 400, seed: int = 0) -> float:
    """Share of random n-user panels whose paired bootstrap 95% CI (own minus shuffled accuracy, queries pooled
    within users as in the reports) lies above 0."""
    rng = np.random.default_rng(seed)
    users = sorted(own)
    hits = 0
    for _ in range(panels):
        pick = rng.choice(len(users), size=n, replace=False)
        a = [own[users[i]] for i in pick]
        b = [shuf[users[i]] for i in pick]
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            boots.append(np.concatenate([a[i] for i in idx]).mean() - np.concatenate([b[i] for i in idx]).mean())
        hits += np.percentile(boots, 2.5) > 0
    return hits / panels


def main(argv=None) -> int:
    from p2p_edge.encoder import Encoder
    from p2p_edge.train.config import load_config
    from p2p_edge.train.dataset import load_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the hypernet's training config (users, profiles)")
    ap.add_argument("--task", required=True, help="a classification task of the config")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--answers", type=Path, help="a training report's directory (answers_SPLIT.json): adds its "
                    "P2P answers, paired against the probe on the same users")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = load_config(args.config)
    if args.task not in (cfg.tasks or [args.task]):
        ap.error(f"task {args.task!r} is not in {args.config}'s tasks")
    try:   # read the P2P answers first: a wrong path should fail before minutes of encoding
        p2p_answers = {s: load_answers(args.answers, s, args.task)["p2p"] for s in ("random", "ood")} if args.answers else {}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.tasks = [args.task]
    encoder = Encoder(threads=args.threads)
    corpus = load_corpus(cfg, encoder, max_users=cfg.profiles.max_users)
    if corpus.tasks[args.task].kind != "classification":
        ap.error(f"task {args.task!r} is {corpus.tasks[args.task].kind}, not classification")
    probe = Probe(corpus, args.task, encoder)
    tasks = {args.task: corpus.tasks[args.task]}
    have = set(probe.uids)
    train_uids = [u for u in corpus.part("both", "train") if u in have]
    W, p_train = probe.fit(train_uids)
    index = corpus.index()
    vector_probe = copy.copy(probe)   # the same probe, reading the user's label mix from the hypernet's input vector
    vector_probe.counts = read_out_counts(probe, {u: corpus.emb["full"][index[u]] for u in probe.uids}, train_uids)
    result = {"config": str(args.config), "task": args.task, "labels": probe.labels, "splits": {},
              "answers": str(args.answers) if args.answers else None, "habits_weight": cfg.profiles.habits_weight}
    for split in ("random", "ood"):
        val = [u for u in corpus.splits[split]["val"] if u in have]
        test = [u for u in corpus.splits[split]["test"] if u in have]
        donor = derangement(test, seed=1)
        beta, alpha = probe.choose(W, p_train, val)
        vb, va = vector_probe.choose(W, p_train, val)
        ans = {"text_only": probe.answers(W, p_train, test, 0.0, alpha),
               "probe": probe.answers(W, p_train, test, beta, alpha),
               "probe_shuffled": probe.answers(W, p_train, test, beta, alpha, donor=donor),
               "vector_probe": vector_probe.answers(W, p_train, test, vb, va),
               "vector_probe_shuffled": vector_probe.answers(W, p_train, test, vb, va, donor=donor)}
        pairs = [("probe", "probe_shuffled"), ("probe", "text_only"), ("vector_probe", "vector_probe_shuffled")]
        if args.answers:
            rep = p2p_answers[split]
            ans["p2p"] = {u: [r for r in rep[u] if r[0] == args.task] for u in test if u in rep}
            pairs.append(("p2p", "probe"))
        table = to_json(user_metric_table(ans, tasks))
        diff = to_json({f"{a}-{b}": paired_diff(ans, a, b, tasks) for a, b in pairs})
        for d in diff.values():
            d[args.task]["accuracy_detectable"] = detectable(d[args.task]["accuracy_ci"])
        result["splits"][split] = {"beta": beta, "alpha": alpha, "vector_beta": vb, "n_users": len(test), "methods": table,
                                   "paired_diffs": diff}

    # cross-fitted over all users: the gain with many users, and the power of n-user panels
    rng = np.random.default_rng(0)
    order = list(rng.permutation(probe.uids))
    folds = [order[i::args.folds] for i in range(args.folds)]
    own, shuf, chosen = {}, {}, []
    for k, fold in enumerate(folds):
        rest = [u for j, f in enumerate(folds) if j != k for u in f]
        inner_val = rest[: len(rest) // 5]
        Wk, pk = probe.fit(rest[len(rest) // 5:])
        beta, alpha = probe.choose(Wk, pk, inner_val)
        Wk, pk = probe.fit(rest)
        chosen.append([beta, alpha])
        own.update(probe.answers(Wk, pk, fold, beta, alpha))
        shuf.update(probe.answers(Wk, pk, fold, beta, alpha, donor=derangement(fold, seed=1)))
    cf = {"own": own, "shuffled": shuf}
    diff = to_json({"own-shuffled": paired_diff(cf, "own", "shuffled", tasks)})["own-shuffled"][args.task]
    oc, sc = per_user_correct(own), per_user_correct(shuf)
    sizes = sorted({result["splits"][s]["n_users"] for s in ("random", "ood")} | {30, 60})
    result["cross_fit"] = {"folds": args.folds, "n_users": len(oc), "beta_alpha_per_fold": chosen,
                           "own_minus_shuffled": diff,
                           "power_by_panel_size": {str(n): panel_power(oc, sc, n) for n in sizes if n <= len(oc)}}
    result["wall_s"] = round(time.time() - t0, 1)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), render(result, args))
    print(render(result, args))
    return 0


def _ci(d: dict, m: str = "accuracy") -> str:
    lo, hi = d[f"{m}_ci"]
    return f"{d[m]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def render(r: dict, args) -> str:
    t = r["task"]
    extra = f" --answers {args.answers}" if args.answers else ""
    lines = [f"<!-- generated by: python -m bench.profile_signal --config {args.config} --task {t} --out {args.out}{extra} "
             f"(wall {r['wall_s']:.0f} s) -->",
             f"# How much the profile can tell on {t}: a non-LLM probe",
             "",
             "Probe = text classifier on the query (sentence-encoder embedding, softmax regression fit on train users) "
             "plus the user's label distribution over profile items, weighted by beta (chosen on validation users). "
             "Scored on the same test users and shuffled donors as the hypernet's reports.",
             "",
             "| split | users | beta | text only | probe | probe, shuffled profile | probe minus shuffled [95% CI] | detectable |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s, d in r["splits"].items():
        m = d["methods"]
        acc = {k: m[k][t]["accuracy"] for k in m}
        g = d["paired_diffs"]["probe-probe_shuffled"][t]
        lines.append(f"| {s} | {d['n_users']} | {d['beta']} | {acc['text_only']:.3f} | {acc['probe']:.3f} | "
                     f"{acc['probe_shuffled']:.3f} | {_ci(g)} | {g['accuracy_detectable']:.3f} |")
    lines += ["", "The same probe reading the user's label mix from the hypernet's input vector instead of the counts "
              f"(a ridge read-out fit on train users; profile vectors with habits_weight = {r.get('habits_weight', 0.0)}): "
              "how much of this prior a linear read-out of the vectors the hypernet sees keeps.", "",
              "| split | vector probe | shuffled profile | own minus shuffled [95% CI] | detectable |", "|---|---:|---:|---:|---:|"]
    for s, d in r["splits"].items():
        m, g = d["methods"], d["paired_diffs"]["vector_probe-vector_probe_shuffled"][t]
        lines.append(f"| {s} | {m['vector_probe'][t]['accuracy']:.3f} | {m['vector_probe_shuffled'][t]['accuracy']:.3f} | "
                     f"{_ci(g)} | {g['accuracy_detectable']:.3f} |")
    if any("p2p-probe" in d["paired_diffs"] for d in r["splits"].values()):
        lines += ["", f"P2P's answers from `{r['answers']}` on the same queries:", "",
                  "| split | P2P | probe | P2P minus probe [95% CI] |", "|---|---:|---:|---:|"]
        for s, d in r["splits"].items():
            m = d["methods"]
            lines.append(f"| {s} | {m['p2p'][t]['accuracy']:.3f} | {m['probe'][t]['accuracy']:.3f} | "
                         f"{_ci(d['paired_diffs']['p2p-probe'][t])} |")
    cf = r["cross_fit"]
    lines += ["",
              f"Cross-fitted over all {cf['n_users']} users ({cf['folds']} folds of users; each scored by a probe fit "
              f"on the others): own minus shuffled profile {_ci(cf['own_minus_shuffled'])}.",
              "",
              "Chance that an n-user test panel drawn from these users shows this probe's own-minus-shuffled CI above 0 "
              "(the hypernet's bar): " + ", ".join(f"n={n}: {p:.0%}" for n, p in cf["power_by_panel_size"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
