"""Task metrics and user-level bootstrap confidence intervals (numpy only, no torch).

Conventions
-----------
- Predictions are already parsed into the task's answer space (see ``Task.parse``); ``None`` means the model's
  answer could not be parsed.
- Ratings: an unparseable prediction (``None``) counts as the WORST possible error for its target on the task's
  scale, i.e. ``max(target - lo, hi - target)`` (for 1..5: 4 for a target of 1 or 5, 2 for a target of 3).
  So a model cannot improve MAE/RMSE by refusing to answer.
- Accuracy / macro-F1: ``None`` is simply wrong (it is never equal to a target).
- ROUGE: ``rouge1`` (ROUGE-N, n=1) and ``rougeL`` (LCS-based, sentence level) F-measures following
  C.-Y. Lin, "ROUGE: A Package for Automatic Evaluation of Summaries" (2004), computed as Google's
  ``rouge-score`` package does by default without stemming: P = overlap / |pred|, R = overlap / |ref|,
  F = 2PR / (P + R); F = 0 when either side has no tokens. Tokenisation: lower-case, tokens are ``\\w+`` runs.
  (rouge-score keeps only ``[a-z0-9]+`` runs; the two agree on ASCII text without underscores, ours also keeps
  non-ASCII letters, which rouge-score drops.)
- Bootstrap: percentile intervals over resampled users (with replacement). Give one value per user (the mean of
  the user's examples when they have several).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np

__all__ = [
    "mae", "rmse", "rating_errors", "accuracy", "macro_f1",
    "tokenize", "rouge_n", "rouge_l", "rouge1", "rougeL", "mean_rouge1", "mean_rougeL",
    "bootstrap_ci", "paired_bootstrap_ci", "bootstrap_stat", "LOWER_IS_BETTER",
]

# the error metrics: a lower value is better (every other metric here is a score: higher is better)
LOWER_IS_BETTER = ("mae", "rmse")

# ---------------------------------------------------------------------------------------------- ratings


def rating_errors(preds: Sequence[float | None], targets: Sequence[float], lo: float, hi: float) -> np.ndarray:
    """Absolute error per example; ``None`` (unparseable) gets the worst error for that target on [lo, hi]."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    out = np.empty(len(targets), dtype=np.float64)
    for i, (p, t) in enumerate(zip(preds, targets)):
        t = float(t)
        out[i] = max(t - lo, hi - t) if p is None else abs(float(p) - t)
    return out


def mae(preds: Sequence[float | None], targets: Sequence[float], lo: float = 1, hi: float = 5) -> float:
    """Mean absolute error; ``None`` predictions count as the worst error on the [lo, hi] scale."""
    e = rating_errors(preds, targets, lo, hi)
    return float(e.mean()) if e.size else float("nan")


def rmse(preds: Sequence[float | None], targets: Sequence[float], lo: float = 1, hi: float = 5) -> float:
    """Root mean squared error; ``None`` predictions count as the worst error on the [lo, hi] scale."""
    e = rating_errors(preds, targets, lo, hi)
    return float(np.sqrt((e**2).mean())) if e.size else float("nan")


# ------------------------------------------------------------------------------------------ classification


def accuracy(preds: Sequence[Hashable | None], targets: Sequence[Hashable]) -> float:
    """Fraction of exact matches (``None`` is always wrong)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    if not targets:
        return float("nan")
    return float(np.mean([p is not None and p == t for p, t in zip(preds, targets)]))


def macro_f1(preds: Sequence[str | None], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the label set.

    Labels of the set that occur neither in the targets nor in the predictions (F1 = 0/0) are left out of the
    mean, as scikit-learn does when no ``labels=`` are passed; this keeps small test sets from being scored
    on classes they do not contain. A ``None`` or out-of-set prediction is a false negative for its target's
    label and a false positive for no label. Targets outside the label set raise ``ValueError``.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    label_set = list(dict.fromkeys(labels))
    known = set(label_set)
    bad = [t for t in targets if t not in known]
    if bad:
        raise ValueError(f"target {bad[0]!r} is not in the label set")
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for p, t in zip(preds, targets):
        if p == t:
            tp[t] += 1
        else:
            fn[t] += 1
            if p in known:
                fp[p] += 1
    f1s = []
    for lab in label_set:
        denom = 2 * tp[lab] + fp[lab] + fn[lab]
        if denom == 0:
            continue
        f1s.append(2 * tp[lab] / denom)
    return float(np.mean(f1s)) if f1s else float("nan")


# -------------------------------------------------------------------------------------------------- ROUGE

_TOKEN = re.compile(r"\w+")


def tokenize(text: str | None) -> list[str]:
    """Lower-cased ``\\w+`` tokens (no stemming, no stop-word removal)."""
    return _TOKEN.findall(text.lower()) if text else []


def _f(overlap: float, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0 or overlap == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(pred: str | None, ref: str | None, n: int = 1) -> float:
    """ROUGE-N F-measure: clipped n-gram overlap (Lin 2004; rouge-score default, no stemming)."""
    tp, tr = tokenize(pred), tokenize(ref)
    gp = Counter(tuple(tp[i:i + n]) for i in range(len(tp) - n + 1))
    gr = Counter(tuple(tr[i:i + n]) for i in range(len(tr) - n + 1))
    overlap = sum((gp & gr).values())
    return _f(overlap, sum(gp.values()), sum(gr.values()))


def _lcs_len(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str | None, ref: str | None) -> float:
    """Sentence-level ROUGE-L F-measure from the longest common subsequence (Lin 2004; rouge-score ``rougeL``)."""
    tp, tr = tokenize(pred), tokenize(ref)
    return _f(_lcs_len(tp, tr), len(tp), len(tr))


def rouge1(pred: str | None, ref: str | None) -> float:
    return rouge_n(pred, ref, 1)


def rougeL(pred: str | None, ref: str | None) -> float:  # noqa: N802 (the metric's usual name)
    return rouge_l(pred, ref)


def mean_rouge1(preds: Sequence[str | None], refs: Sequence[str]) -> float:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} targets")
    return float(np.mean([rouge1(p, r) for p, r in zip(preds, refs)])) if refs else float("nan")


def mean_rougeL(preds: Sequence[str | None], refs: Sequence[str]) -> float:  # noqa: N802
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} targets")
    return float(np.mean([rougeL(p, r) for p, r in zip(preds, refs)])) if refs else float("nan")


# ---------------------------------------------------------------------------------------------- bootstrap


def _values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _check_boot(n: int, alpha: float) -> None:
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")


def _resample_means(v: np.ndarray, n: int, seed: int, chunk: int = 1 << 22) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = v.size
    rows = max(1, chunk // m)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        idx = rng.integers(0, m, size=(e - s, m))
        out[s:e] = v[idx].mean(axis=1)
    return out


def bootstrap_ci(values, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and a percentile bootstrap (1 - alpha) interval, resampling the
    entries of ``values`` (one per user) with replacement ``n`` times."""
    v = _values(values)
    _check_boot(n, alpha)
    boots = _resample_means(v, n, seed)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_bootstrap_ci(a, b, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a - b), lo, hi) for two systems scored on the same users (``a[i]``, ``b[i]`` belong to user i):
    users are resampled with replacement and both systems keep their pairing. An interval excluding 0 means
    the difference is significant at level alpha."""
    va, vb = _values(a, "a"), _values(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"a and b must be aligned per user: {va.size} vs {vb.size} values")
    return bootstrap_ci(va - vb, n=n, seed=seed, alpha=alpha)


def bootstrap_stat(
    n_items: int,
    stat: Callable[[np.ndarray], float | dict[str, float]],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float, float]]:
    """Percentile bootstrap for a statistic that is not a mean (macro-F1, RMSE): ``stat(idx)`` scores the
    items at indices ``idx`` (a resample of ``range(n_items)``) and returns a float or a dict of floats.
    Returns {name: (point estimate on all items, lo, hi)}; a float statistic is named "value".
    Resamples where a statistic is NaN (e.g. no label present) are ignored for that statistic."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    _check_boot(n, alpha)

    def as_dict(x):
        return x if isinstance(x, dict) else {"value": float(x)}

    point = as_dict(stat(np.arange(n_items)))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n):
        res = as_dict(stat(rng.integers(0, n_items, size=n_items)))
        for k in samples:
            samples[k].append(float(res[k]))
    out = {}
    for k, vals in samples.items():
        arr = np.asarray(vals)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
        else:
            lo = hi = math.nan
        out[k] = (float(point[k]), float(lo), float(hi))
    return out
