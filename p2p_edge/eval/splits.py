"""User splits: which users train, which choose (val) and which judge (test).

"random": a seeded shuffle (or a stable hash) of user ids; "ood": whole k-means clusters of users' profile
embeddings held out as test. Splits are saved as JSON (format ``p2p-edge-splits/1``) and validated on load: every
user in exactly one part.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from p2p_edge.errors import InputError
from p2p_edge.eval.task import SplitConfig
from p2p_edge.fileio import atomic_write_text

__all__ = ["SPLIT_PARTS", "random_split", "ood_split", "kmeans", "check_splits", "save_splits", "load_splits"]

SPLIT_PARTS = ("train", "val", "test")
SPLITS_FORMAT = "p2p-edge-splits/1"


def _n_of(n: int, frac: float) -> int:
    return int(math.floor(n * frac + 0.5))


def _unique_sorted(user_ids: Sequence[str]) -> list[str]:
    ids = list(user_ids)
    if len(set(ids)) != len(ids):
        dup = next(u for u, c in Counter(ids).items() if c > 1)
        raise ValueError(f"duplicate user id {dup!r}")
    return sorted(ids)


def _hash01(seed: int, uid: str) -> float:
    return int(hashlib.sha1(f"{seed}\0{uid}".encode()).hexdigest(), 16) / 16**40


def random_split(user_ids: Sequence[str], cfg: SplitConfig) -> dict[str, list[str]]:
    """Users into train/val/test. "shuffle": a seeded permutation of the sorted ids, exactly
    round(n * fraction) val and test users. "hash": sha1(seed, user_id) -> [0, 1), test below test_fraction, val
    below test_fraction + val_fraction (a user keeps its part when users are added; counts vary)."""
    ids = _unique_sorted(user_ids)
    if cfg.method == "hash":
        parts: dict[str, list[str]] = {p: [] for p in SPLIT_PARTS}
        for u in ids:
            h = _hash01(cfg.seed, u)
            parts["test" if h < cfg.test_fraction else "val" if h < cfg.test_fraction + cfg.val_fraction
                  else "train"].append(u)
        return parts
    rng = np.random.default_rng(cfg.seed)
    perm = [ids[i] for i in rng.permutation(len(ids))]
    n_test, n_val = _n_of(len(ids), cfg.test_fraction), _n_of(len(ids), cfg.val_fraction)
    return {"train": sorted(perm[n_test + n_val:]), "val": sorted(perm[n_test:n_test + n_val]),
            "test": sorted(perm[:n_test])}


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centers = [x[rng.integers(n)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        tot = d2.sum()
        i = rng.choice(n, p=d2 / tot) if tot > 0 else rng.integers(n)
        centers.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.array(centers)


def _assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
    lab = d.argmin(1)
    return lab, np.maximum(d[np.arange(len(x)), lab], 0)


def kmeans(x, k: int, seed: int = 0, n_init: int = 4, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded k-means (k-means++ init, Lloyd iterations, best of ``n_init`` by inertia) -> (labels, centers,
    inertia). An emptied cluster is re-seeded with the point farthest from its center."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError("embeddings must be a finite 2-D array")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} clusters need at least k points, got {n}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        c = _kmeans_pp_init(x, k, rng)
        lab = None
        for _ in range(max_iter):
            new, d2 = _assign(x, c)
            for j in range(k):
                members = new == j
                if members.any():
                    c[j] = x[members].mean(0)
                else:
                    far = int(d2.argmax())
                    c[j], new[far], d2[far] = x[far], j, 0.0
            if lab is not None and np.array_equal(new, lab):
                break
            lab = new
        lab, d2 = _assign(x, c)
        inertia = float(d2.sum())
        if best is None or inertia < best[2] - 1e-12:
            best = (lab, c.copy(), inertia)
    return best


def ood_split(user_ids: Sequence[str], embeddings, cfg: SplitConfig) -> tuple[dict[str, list[str]], np.ndarray, list[int]]:
    """Cluster users by their profile embeddings (rows aligned with ``user_ids``); hold out
    ``cfg.ood.n_test_clusters`` whole clusters, picked with ``cfg.seed``, as TEST; the other users are split into
    val (round(n * val_fraction) users, seeded) and train. -> (split, cluster label per user, test clusters)."""
    ids = list(user_ids)
    _unique_sorted(ids)
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(ids):
        raise ValueError(f"embeddings must be a matrix with one row per user ({len(ids)}), got shape {x.shape}")
    o = cfg.ood
    if o.normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1)
    labels, _, _ = kmeans(x, o.k, seed=cfg.seed, n_init=o.n_init, max_iter=o.max_iter)
    rng = np.random.default_rng(cfg.seed)
    test_clusters = sorted(int(c) for c in rng.choice(o.k, size=o.n_test_clusters, replace=False))
    test = sorted(u for u, c in zip(ids, labels) if c in test_clusters)
    rest = sorted(u for u, c in zip(ids, labels) if c not in test_clusters)
    n_val = min(_n_of(len(ids), cfg.val_fraction), len(rest))
    perm = [rest[i] for i in rng.permutation(len(rest))]
    split = {"train": sorted(perm[n_val:]), "val": sorted(perm[:n_val]), "test": test}
    return split, labels, test_clusters


def check_splits(splits: dict[str, dict[str, list[str]]], path=None) -> None:
    """Raise (InputError with a path, else ValueError) unless every split has only train/val/test parts of
    unique string ids and no user is in two parts."""

    def fail(msg, fld=None):
        if path is not None:
            raise InputError(path, msg, field=fld)
        raise ValueError(f"{fld}: {msg}" if fld else msg)

    if not isinstance(splits, dict):
        fail("splits must be an object")
    for name, parts in splits.items():
        if not isinstance(parts, dict):
            fail("must be an object with train/val/test lists", name)
        extra = set(parts) - set(SPLIT_PARTS)
        if extra:
            fail(f"unknown part {sorted(extra)[0]!r}", name)
        owner: dict[str, str] = {}
        for part, ids in parts.items():
            if not isinstance(ids, list) or not all(isinstance(u, str) for u in ids):
                fail("must be a list of user id strings", f"{name}.{part}")
            for u in ids:
                if u in owner:
                    fail(f"user {u!r} is in both {owner[u]} and {part}", f"{name}.{part}")
                owner[u] = part


def save_splits(path: str | os.PathLike, splits: dict[str, dict[str, list[str]]], meta: dict | None = None) -> Path:
    """Write splits (and optional JSON-able ``meta``, e.g. the config and held-out clusters) atomically."""
    check_splits(splits)
    doc = {"format": SPLITS_FORMAT, "splits": {k: {p: sorted(v.get(p, [])) for p in SPLIT_PARTS}
                                              for k, v in splits.items()}}
    if meta:
        doc["meta"] = meta
    return atomic_write_text(Path(path), json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_splits(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """Read and validate a file written by ``save_splits``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "splits file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"invalid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT:
        raise InputError(path, f"not a splits file (expected format {SPLITS_FORMAT!r})", field="format")
    splits = doc.get("splits")
    check_splits(splits, path=path)
    return {k: {p: list(v.get(p, [])) for p in SPLIT_PARTS} for k, v in splits.items()}
