"""Per-user data: reading, LaMP-style (query, profile) examples, user splits, user-prior baselines.

Standard library + numpy only (no torch), so the bench and the client can use it too.

Protocol (per user, per task; settings in ``Task.protocol``, from ``configs/tasks.toml``)
---------------------------------------------------------------------------------------
The user's items that qualify for the task (``Task.qualifies``) are q_1..q_m in history (= time) order.
q_m is the "test" query, q_(m-1) the "dev" query; for TRAIN users up to ``train_queries_per_user`` of
q_(m-2), q_(m-3), ... (most recent first) are "extra" training queries. The profile of a query is the user's items
(any items, qualifying or not) strictly BEFORE it in time: never the query itself, nothing after it, and with
``same_time_in_profile = false`` nothing with the same ``time`` value either (``time`` has day resolution and the
order within a day is unknown). Items with ``time = null`` fall back to history order. A query with fewer than
``min_profile_items`` profile items is dropped.

Which examples each split gets (``build_examples``): TRAIN users give their queries of ``train_roles``; VAL and
TEST users give their queries of ``eval_roles`` (default: the test query only, i.e. one example per user).

Shared items across users (``Task.global_item_ids = true``, HuffPost: a co-authored article is in each co-author's
history with the same ``id``): any TRAIN example whose query ``id`` is the query of a VAL or TEST user's example is
dropped, so no held-out target is ever a training target. (Such an article may still sit in a train user's
*profile*; profiles are inputs, not targets, and are left alone.) For Amazon, ``id`` is the product, not the review,
so this must stay off there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_text
from ..tasks import SplitConfig, Task, has_value

__all__ = [
    "Example", "read_users", "user_examples", "build_examples", "held_out_query_ids", "resolve_task_labels",
    "make_splits", "random_split", "ood_split", "kmeans", "check_splits", "save_splits", "load_splits",
    "majority_target", "user_prior_prediction", "PRIOR_RULES", "SPLIT_PARTS",
]

SPLIT_PARTS = ("train", "val", "test")
SPLITS_FORMAT = "p2p-edge-splits/1"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}")


# ------------------------------------------------------------------------------------------------ reading


def _open_bytes(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _check_user(obj, path: Path, line: int) -> dict:
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object per line, got {type(obj).__name__}", line=line)
    uid = obj.get("user_id")
    if not isinstance(uid, str) or not uid.strip():
        raise InputError(path, "must be a non-empty string", line=line, field="user_id")
    hist = obj.get("history")
    if not isinstance(hist, list):
        raise InputError(path, f"user {uid}: must be a list of items", line=line, field="history")
    last_time = None
    for i, it in enumerate(hist):
        where = f"history[{i}]"
        if not isinstance(it, dict):
            raise InputError(path, f"user {uid}: item must be an object", line=line, field=where)
        if not isinstance(it.get("id"), str) or not it["id"]:
            raise InputError(path, f"user {uid}: must be a non-empty string", line=line, field=f"{where}.id")
        if not isinstance(it.get("text"), str):
            raise InputError(path, f"user {uid}: must be a string", line=line, field=f"{where}.text")
        if "time" not in it:
            raise InputError(path, f"user {uid}: missing (use null when unknown)", line=line, field=f"{where}.time")
        t = it["time"]
        if t is not None:
            if not isinstance(t, str) or not _TIME.match(t):
                raise InputError(path, f"user {uid}: must be 'YYYY-MM-DD...' or null, got {t!r}", line=line,
                                 field=f"{where}.time")
            if last_time is not None and t < last_time:
                raise InputError(path, f"user {uid}: history is not sorted by time ({t} after {last_time})",
                                 line=line, field=f"{where}.time")
            last_time = t
    return obj


def read_users(path: str | os.PathLike) -> Iterator[dict]:
    """Yield ``{"user_id", "history": [item, ...]}`` dicts from a .jsonl or .jsonl.gz file (gzip detected by its
    magic bytes), validating each line (1-based line numbers in errors): a JSON object with a non-empty string
    ``user_id``, ``history`` a list of items with string ``id`` and ``text`` and ``time`` "YYYY-MM-DD..." or null,
    non-decreasing in time; user ids unique. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    seen: set[str] = set()
    line = 0
    try:
        with _open_bytes(path) as f:
            for line, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(path, f"not UTF-8: {e.reason} at byte {e.start}", line=line) from None
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=line) from None
                user = _check_user(obj, path, line)
                if user["user_id"] in seen:
                    raise InputError(path, f"duplicate user {user['user_id']!r}", line=line, field="user_id")
                seen.add(user["user_id"])
                yield user
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(path, f"corrupt gzip data: {e}", line=line + 1) from None


# ------------------------------------------------------------------------------------------------ examples


@dataclass(frozen=True)
class Example:
    """One query of one user for one task. ``profile_items`` are the user's items strictly before the query in
    time (see the module docstring); ``role`` is "test", "dev" or "extra"; ``split`` is the user's split part."""

    user_id: str
    task: str
    query_item: dict = field(repr=False)
    target: str
    profile_items: list[dict] = field(repr=False)
    role: str = "test"
    split: str = ""


def _profile_end(history: list[dict], pos: int, same_time_ok: bool) -> int:
    """Index e such that history[:e] is the profile of the query at ``pos``."""
    qt = history[pos].get("time")
    if same_time_ok or qt is None:
        return pos
    e = pos
    while e > 0:
        t = history[e - 1].get("time")
        if t is not None and t >= qt:
            e -= 1
        else:
            break
    return e


def user_examples(user: dict, task: Task, train_user: bool = False, split: str = "") -> list[Example]:
    """The user's examples for ``task``, newest first: test, dev and (when ``train_user``) up to
    ``task.protocol.train_queries_per_user`` extra queries. Queries with too small a profile are dropped."""
    task.require_labels()
    hist = user["history"]
    p = task.protocol
    positions = [i for i, it in enumerate(hist) if task.qualifies(it)]
    roles = ["test", "dev"] + ["extra"] * (p.train_queries_per_user if train_user else 0)
    out = []
    for role, pos in zip(roles, reversed(positions)):
        end = _profile_end(hist, pos, p.same_time_in_profile)
        if end < p.min_profile_items:
            continue
        out.append(Example(user["user_id"], task.name, hist[pos], task.target(hist[pos]), hist[:end], role, split))
    return out


def held_out_query_ids(examples: dict[str, list[Example]]) -> set[str]:
    """Query item ids of the VAL and TEST examples."""
    return {ex.query_item["id"] for part in ("val", "test") for ex in examples.get(part, [])}


def build_examples(users: Iterable[dict], task: Task, split: dict[str, list[str]]) -> dict[str, list[Example]]:
    """{"train", "val", "test"} -> examples for one split kind (e.g. ``splits["random"]``). TRAIN users give their
    ``train_roles`` queries, VAL/TEST users their ``eval_roles`` queries; users in no part are ignored. With
    ``task.global_item_ids``, train examples whose query id is a val/test query id are dropped."""
    check_splits({"split": split})
    part_of = {u: part for part in SPLIT_PARTS for u in split.get(part, [])}
    out: dict[str, list[Example]] = {part: [] for part in SPLIT_PARTS}
    for user in users:
        part = part_of.get(user["user_id"])
        if part is None:
            continue
        roles = task.protocol.train_roles if part == "train" else task.protocol.eval_roles
        exs = user_examples(user, task, train_user=part == "train" and "extra" in roles, split=part)
        out[part].extend(ex for ex in exs if ex.role in roles)
    if task.global_item_ids:
        held = held_out_query_ids(out)
        out["train"] = [ex for ex in out["train"] if ex.query_item["id"] not in held]
    return out


def resolve_task_labels(task: Task, users: Iterable[dict], train_user_ids: Iterable[str]) -> Task:
    """``task`` with auto_top_k labels resolved from the history items of TRAIN users only."""
    train = set(train_user_ids)
    return task.resolve_labels(it for u in users if u["user_id"] in train for it in u["history"])


# ------------------------------------------------------------------------------------------------ splits


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


def make_splits(user_ids: Sequence[str], cfg: SplitConfig, embeddings=None) -> dict[str, dict[str, list[str]]]:
    """{"random": {...}} and, when ``embeddings`` (one row per user id, same order) are given, {"ood": {...}};
    each maps "train"/"val"/"test" to sorted user ids. Every user is in exactly one part of each split."""
    splits = {"random": random_split(user_ids, cfg)}
    if embeddings is not None:
        splits["ood"] = ood_split(user_ids, embeddings, cfg)[0]
    check_splits(splits)
    return splits


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


# ------------------------------------------------------------------------------------------------ priors

PRIOR_RULES = {
    "rating": ("majority", "user_mode", "user_mean"),
    "classification": ("majority", "user_mode"),
    "generation": (),
}


def majority_target(task: Task, examples: Iterable[Example]) -> str:
    """The most frequent target over (training) examples; ties go to the alphabetically first."""
    c = Counter(ex.target for ex in examples)
    if not c:
        raise ValueError(f"task {task.name}: no examples to take a majority from")
    return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def user_prior_prediction(task: Task, profile_items: Sequence[dict], train_majority: str,
                          rule: str = "user_mode") -> str:
    """A non-LLM baseline answer from the user's profile alone.

    rules: "majority" -> ``train_majority`` (the majority target over training users); "user_mode" -> the user's
    most frequent target among profile items that carry it (ties: the most recent of the tied); "user_mean"
    (ratings) -> the user's mean profile rating, rounded half up. With no usable profile item every rule falls
    back to ``train_majority``. The bench picks the best rule on validation users.
    """
    allowed = PRIOR_RULES.get(task.kind, ())
    if rule not in allowed:
        raise ValueError(f"task {task.name} ({task.kind}): rule must be one of {allowed}, got {rule!r}")
    if rule == "majority":
        return train_majority
    vals = []
    for it in profile_items:
        if has_value(it, task.target_field):
            try:
                vals.append(task.target(it))
            except ValueError:
                continue
    if not vals:
        return train_majority
    if rule == "user_mean":
        return str(int(math.floor(float(np.mean([float(v) for v in vals])) + 0.5)))
    counts = Counter(vals)
    top = max(counts.values())
    last_pos = {v: i for i, v in enumerate(vals)}
    return max((v for v, c in counts.items() if c == top), key=lambda v: last_pos[v])
