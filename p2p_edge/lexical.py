"""Lexical profile inputs: statistics of the history's own tokens under the base model, beside the sentence embedding.

Why: a sentence embedding of a summary and two items lets the hypernet tell its TRAINING users apart but not new
ones (bench/results/fit_gap_val.md), while the history's token statistics separate a user's unseen texts from
another user's (bench/results/lexical_probe_val.md). "token_centroid" is the mean of the base model's input-embedding
rows over every token of the history's texts: a vector in the model's own space (576-d for SmolLM2), from which a
shared map to the adapter has a chance to generalise. Torch-free: training tokenizes with the HF tokenizer, the
client with llama.cpp's, both of the same GGUF.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

KINDS = ("token_centroid",)


def history_text(item: Any) -> str:
    """What of an item the user wrote: its title and text (the profile's item_text clips them; this does not)."""
    get = item.get if isinstance(item, dict) else lambda k: getattr(item, k, None)
    return " ".join(str(get(k)) for k in ("title", "text") if get(k))


def token_counts(items: Sequence[Any], tokenize: Callable[[str], list[int]], vocab: int) -> np.ndarray:
    """How often each token id (< vocab) occurs in the items' history_text."""
    ids = [i for it in items for i in tokenize(history_text(it))]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)


def centroid(counts: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The mean of `table`'s rows (vocab, dim) weighted by token counts; zeros without tokens."""
    return counts @ table / max(counts.sum(), 1)


def token_centroid(items: Sequence[Any], tokenize: Callable[[str], list[int]], table: np.ndarray) -> np.ndarray:
    """The mean of `table`'s rows (vocab, dim) over the tokens of every item's history_text; zeros without tokens."""
    return centroid(token_counts(items, tokenize, table.shape[0]), table).astype(np.float32)


def lexical_vector(kind: str, items: Sequence[Any], tokenize: Callable[[str], list[int]],
                   table: np.ndarray) -> np.ndarray:
    if kind != "token_centroid":
        raise ValueError(f"unknown lexical input {kind!r}; known: {', '.join(KINDS)}")
    return token_centroid(items, tokenize, table)
