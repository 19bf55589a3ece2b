"""The user profile: an LLM-written summary of the history + the top-k retrieved items -> one text -> one vector.

`profile_text` and `item_text` are THE format, shared by the client and by training (p2p_edge.train):
a hypernet only understands embeddings of texts built exactly this way.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .fileio import atomic_write_bytes, atomic_write_text, ensure_private_dir, remove_temps
from .paths import PROMPTS_DIR, cache_dir

PROFILE_FORMAT = "habits+summary+top-k/2"
SUMMARY_CHARS = 480       # the encoder reads at most 256 tokens: keep summary + k items inside that
ITEM_CHARS = 280
SUMMARY_ITEM_CHARS = 240  # per item, inside the summary prompt
SUMMARY_PROMPT_CHARS = 1500
SUMMARY_MAX_TOKENS = 48


def _get(item: Any, key: str):
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _clip(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def item_text(item: Any, max_chars: int = ITEM_CHARS) -> str:
    """One history item as the profile shows it: title, text, and the user's own rating / label."""
    parts = []
    if _get(item, "title"):
        parts.append(f"{_clip(_get(item, 'title'), 80)}:")
    if _get(item, "prompt") and _get(item, "output"):
        parts.append(f"Q: {_clip(_get(item, 'prompt'), 100)} A:")
    parts.append(_clip(_get(item, "text") or "", max_chars))
    tags = []
    if _get(item, "rating") is not None:
        r = float(_get(item, "rating"))
        tags.append(f"rated {int(r) if r.is_integer() else r}")
    if _get(item, "label"):
        tags.append(f"category {_clip(_get(item, 'label'), 40)}")
    if tags:
        parts.append(f"({', '.join(tags)})")
    return " ".join(parts)


def habits_text(label_counts: dict[str, int] | None, rating_sum: float = 0.0, rating_count: int = 0) -> str | None:
    """The user's habits in one short line: most used labels and average rating (None if neither exists).
    Cheap, exact statistics of the whole history; the summary of a tiny LLM cannot be trusted to carry them."""
    parts = []
    if label_counts:
        top = sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        parts.append("most used categories " + ", ".join(f"{_clip(k, 30)} ({v})" for k, v in top))
    if rating_count:
        parts.append(f"average rating {rating_sum / rating_count:.1f} over {rating_count} ratings")
    return "; ".join(parts) or None


def item_habits(items: Sequence[Any]) -> str | None:
    """habits_text over a list of items (training side; the client uses History's streamed counts)."""
    labels: dict[str, int] = {}
    rs, rc = 0.0, 0
    for it in items:
        if _get(it, "label"):
            labels[str(_get(it, "label"))] = labels.get(str(_get(it, "label")), 0) + 1
        if _get(it, "rating") is not None:
            rs, rc = rs + float(_get(it, "rating")), rc + 1
    return habits_text(labels, rs, rc)


def profile_text(summary: str | None, retrieved: Sequence[Any], habits: str | None = None) -> str:
    """The profile as encoded into the hypernet's input vector (habits first: the encoder reads 256 tokens)."""
    lines = []
    if habits:
        lines.append(habits_line(habits))
    if summary:
        lines.append(f"About this user: {_clip(summary, SUMMARY_CHARS)}")
    for i, item in enumerate(retrieved, 1):
        lines.append(f"Example {i}: {item_text(item)}")
    return "\n".join(lines) if lines else "About this user: (no history)"


def habits_line(habits: str) -> str:
    return f"Habits: {habits}"


def profile_vectors(text_vecs: np.ndarray, habit_vecs: np.ndarray, has_habits, habits_weight: float) -> np.ndarray:
    """The hypernet's input rows: each profile text's embedding plus habits_weight x its habits line's own embedding,
    re-normalised (rows without habits, or habits_weight 0, keep the text embedding). Inside the long profile text
    the habits line is a few of 256 pooled tokens: a linear read-out of a user's category mix from the text vector
    alone loses most of the per-user prior that the counts carry (bench/results/profile_signal.md)."""
    if habits_weight <= 0:
        return text_vecs
    w = habits_weight * np.asarray(has_habits, np.float32)[:, None]
    v = text_vecs + w * habit_vecs
    return (v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def summary_prompt(items: Sequence[Any], template: str | None = None) -> str:
    """The summarisation prompt over the most recent items that fit the budget (oldest first)."""
    template = template or (PROMPTS_DIR / "summary.txt").read_text(encoding="utf-8")
    chosen, used = [], 0
    for item in reversed(list(items)):
        line = "- " + item_text(item, SUMMARY_ITEM_CHARS)
        if used + len(line) > SUMMARY_PROMPT_CHARS and chosen:
            break
        chosen.append(line)
        used += len(line) + 1
    return template.replace("{items}", "\n".join(reversed(chosen)))


def generate_summary(llm, items: Sequence[Any], template: str | None = None,
                     max_tokens: int = SUMMARY_MAX_TOKENS) -> str:
    """Greedy, repetition-penalised summary by the local base model (no adapter): the client and the
    training-data builder call this same function, so training sees the summaries users will get."""
    llm.use(None)
    text = llm.complete([{"role": "user", "content": summary_prompt(items, template)}],
                        max_tokens=max_tokens, repeat_penalty=1.3)
    return " ".join(text.split()) or "(no summary)"


def retrieve(query: np.ndarray | None, item_vecs: np.ndarray, k: int) -> list[int]:
    """Indices of the top-k items by cosine similarity to `query`; the k most recent when there is no query."""
    n = len(item_vecs)
    k = min(k, n)
    if k <= 0:
        return []
    if query is None:
        return list(range(n - k, n))
    sims = item_vecs @ query
    top = np.argsort(-sims, kind="stable")[:k]
    return sorted(int(i) for i in top)  # keep chronological order in the profile text


@dataclass
class Profile:
    summary: str | None
    summary_source: str            # "generated" | "cache" | "given" | "none"
    retrieved: list[Any]
    text: str
    embedding: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def retrieved_ids(self) -> list[str]:
        return [str(_get(it, "id")) for it in self.retrieved]


class SummaryCache:
    """Summaries keyed by (history sha256, base model sha256, prompt): private files in the cache dir."""

    def __init__(self, root=None):
        self.root = (root or cache_dir()) / "summaries"

    def key(self, history_sha: str, model_sha: str, prompt_template: str) -> str:
        """`<history sha prefix>-<hash of all inputs>`: the prefix lets `delete_for_history` find the temp file
        a killed write left behind (its content may be unreadable)."""
        h = hashlib.sha256(f"{history_sha}|{model_sha}|{prompt_template}".encode()).hexdigest()
        return f"{history_sha[:16]}-{h[:32]}"

    def get(self, key: str) -> str | None:
        p = self.root / f"{key}.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))["summary"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, summary: str, history_sha: str) -> None:
        ensure_private_dir(self.root)
        atomic_write_text(self.root / f"{key}.json", json.dumps({"summary": summary, "history_sha256": history_sha}))

    def delete_for_history(self, history_sha: str) -> int:
        """Delete this history's summaries (and temp files of killed writes); returns how many files."""
        n = 0
        for p in self.root.glob("*.json") if self.root.is_dir() else []:
            try:
                if json.loads(p.read_text())["history_sha256"] == history_sha:
                    p.unlink()
                    n += 1
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return n + remove_temps(self.root, [f"{history_sha[:16]}-*.json"])


class EmbeddingCache:
    """Vectors of a history's texts (its items' profile texts, its summary, its profile text) keyed by the sha1 of
    the text, one private .npz per (encoder, history): personalizing the same history again encodes nothing."""

    def __init__(self, encoder_id: str, root=None):
        self.root = (root or cache_dir()) / "embeddings" / hashlib.sha1(encoder_id.encode()).hexdigest()[:16]

    def _path(self, history_sha: str):
        return self.root / f"{history_sha[:32]}.npz"

    def encode(self, encode: Callable[[list[str]], np.ndarray], texts: list[str], history_sha: str) -> np.ndarray:
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        known: dict[str, np.ndarray] = {}
        path = self._path(history_sha)
        if path.is_file():
            try:
                with np.load(path) as z:
                    known = dict(zip(z["keys"].tolist(), z["vecs"]))
            except Exception:  # a damaged cache (empty, truncated, junk zip) is only a miss: re-encode
                known = {}
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            vecs = encode([texts[i] for i in missing])
            for i, v in zip(missing, vecs):
                known[keys[i]] = v
            import io

            buf = io.BytesIO()   # every vector this history's file held stays: items, summary and profile texts
            np.savez(buf, keys=np.array(list(known)), vecs=np.stack(list(known.values())))
            ensure_private_dir(self.root)
            atomic_write_bytes(path, buf.getvalue())
        return np.stack([known[k] for k in keys]).astype(np.float32)

    def encoder_for(self, encoder, history_sha: str) -> "CachedEncoder":
        return CachedEncoder(encoder, self, history_sha)

    def delete_for_history(self, history_sha: str) -> int:
        """Delete this history's vectors under EVERY encoder's cache dir; returns how many files."""
        base = self.root.parent
        n = 0
        for p in base.glob(f"*/{history_sha[:32]}.npz") if base.is_dir() else []:
            p.unlink()
            n += 1
        for d in base.iterdir() if base.is_dir() else []:  # temp files of killed writes
            n += remove_temps(d, [f"{history_sha[:32]}.npz"])
        return n


@dataclass
class CachedEncoder:
    """An encoder (dim, encode) whose vectors go through a history's EmbeddingCache: what build_profile is given
    on the client, so a warm run reads the summary's and the profile text's vectors instead of encoding them."""
    encoder: Any
    cache: EmbeddingCache
    history_sha: str

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.cache.encode(self.encoder.encode, texts, self.history_sha)


def build_profile(
    encoder,
    items: Sequence[Any],
    *,
    summary: str | None,
    summary_source: str,
    top_k: int = 2,
    item_vecs: np.ndarray | None = None,
    habits: str | None = None,
    habits_weight: float = 0.0,
) -> Profile:
    """Retrieve the top-k items for the summary, write the profile text and encode it into one vector
    (with habits_weight > 0, plus the habits line's own embedding: see profile_vectors; the card says which)."""
    t0 = time.perf_counter()
    texts = [item_text(it) for it in items]
    if item_vecs is None:
        item_vecs = encoder.encode(texts) if texts else np.zeros((0, encoder.dim), np.float32)
    t1 = time.perf_counter()
    query = encoder.encode([summary])[0] if summary else None
    idx = retrieve(query, item_vecs, top_k)
    retrieved = [items[i] for i in idx]
    text = profile_text(summary, retrieved, habits)
    emb = encoder.encode([text])
    if habits and habits_weight > 0:
        emb = profile_vectors(emb, encoder.encode([habits_line(habits)]), [True], habits_weight)
    emb = emb[0]
    t2 = time.perf_counter()
    return Profile(
        summary=summary, summary_source=summary_source, retrieved=retrieved, text=text, embedding=emb,
        timings_ms={"encode_items": (t1 - t0) * 1e3, "encode_profile": (t2 - t1) * 1e3},
    )
