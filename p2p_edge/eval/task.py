"""A task over a per-user dataset: its prompt, target, answer parsing and scoring (numpy only, no torch).

Tasks are built from ``configs/tasks.toml`` by ``task_config.load_config``; nothing here is dataset-specific.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from p2p_edge.eval import metrics as M

__all__ = [
    "Task", "SplitConfig", "OodConfig", "KINDS", "METRICS_BY_KIND", "has_value",
]

KINDS = ("rating", "classification", "generation")
METRICS_BY_KIND = {
    "rating": ("mae", "rmse", "accuracy", "macro_f1"),
    "classification": ("accuracy", "macro_f1"),
    "generation": ("rouge1", "rougeL"),
}
LABELS_PLACEHOLDER = "labels"  # {labels} in a prompt lists the label space, comma-separated
OPENING_PLACEHOLDER = "opening"  # {opening}: the target text's first sentences (opening_sentences > 0)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def has_value(item: dict, key: str) -> bool:
    """True when ``item[key]`` is present, not None and (for strings) not blank."""
    v = item.get(key)
    if v is None:
        return False
    if isinstance(v, str):
        return bool(v.strip())
    return True


# ------------------------------------------------------------------------------------------ config classes


@dataclass(frozen=True)
class OodConfig:
    k: int = 10  # k-means clusters over per-user profile embeddings
    n_test_clusters: int = 1  # whole clusters held out as TEST; which ones is decided by the split seed
    n_init: int = 4  # k-means++ restarts (best inertia wins)
    max_iter: int = 100
    normalize: bool = True  # L2-normalise embeddings first (k-means on the unit sphere ~ cosine)


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    method: str = "shuffle"  # "shuffle": seeded shuffle, exact counts; "hash": sha1(seed, user_id), stable
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    ood: OodConfig = field(default_factory=OodConfig)


@dataclass(frozen=True)
class Task:
    """One task over one per-user dataset. Build with ``load_config``."""

    name: str
    dataset: Path
    kind: str
    input_fields: tuple[str, ...]
    target_field: str
    prompt: str
    metrics: tuple[str, ...]
    requires: tuple[str, ...]
    labels: tuple[str, ...] | None = None  # classification: explicit labels, or resolved from auto_top_k
    auto_top_k: int | None = None  # classification: the N most frequent labels over TRAIN users
    other_label: str | None = "Other"  # classification: label for everything outside `labels` (None: drop those)
    scale: tuple[int, int] = (1, 5)  # rating: inclusive integer range
    max_input_chars: int | None = None  # per input field, applied in render()
    global_item_ids: bool = False  # same `id` in two users' histories = the same item (co-authored articles)
    # generation, continuation-style (long-form writing): the first N sentences of the target field are given in the
    # prompt as {opening}, and the target is the rest of the text (an item qualifies only when a rest exists)
    opening_sentences: int = 0
    source: str = ""  # the config file it came from (for error messages)

    # ------------------------------------------------------------------------------------- label space

    @property
    def primary_metric(self) -> str:
        """The metric that ranks methods on this task: the first configured one."""
        return self.metrics[0]

    @property
    def label_space(self) -> tuple[str, ...]:
        """All valid answers: "1".."5" for ratings; labels (+ other_label) for classification; () for generation."""
        if self.kind == "rating":
            return tuple(str(i) for i in range(self.scale[0], self.scale[1] + 1))
        if self.kind == "classification":
            self.require_labels()
            extra = (self.other_label,) if self.other_label and self.other_label not in self.labels else ()
            return tuple(self.labels) + extra
        return ()

    def require_labels(self) -> None:
        """Raise RuntimeError while classification labels are still 'auto_top_k' (see resolve_labels)."""
        if self.kind == "classification" and self.labels is None:
            raise RuntimeError(
                f"task {self.name}: labels are 'auto_top_k = {self.auto_top_k}' and not resolved yet; "
                "call task.resolve_labels(<items of TRAIN users>) first"
            )

    def resolve_labels(self, items: Iterable[dict]) -> "Task":
        """A copy whose labels are the ``auto_top_k`` most frequent target labels among ``items`` (pass the
        history items of TRAIN users only); ties are broken alphabetically. A no-op for explicit labels."""
        if self.kind != "classification" or self.auto_top_k is None:
            return self
        counts: Counter = Counter()
        for it in items:
            if all(has_value(it, f) for f in self.requires):
                counts[str(it[self.target_field]).strip()] += 1
        if self.other_label:
            counts.pop(self.other_label, None)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.auto_top_k]
        if not top:
            raise ValueError(f"task {self.name}: no labelled items to resolve auto_top_k labels from")
        return replace(self, labels=tuple(k for k, _ in top))

    # ------------------------------------------------------------------------------------- items

    def split_opening(self, text: str) -> tuple[str, str]:
        """(the first ``opening_sentences`` sentences, the rest) of a text, whitespace collapsed."""
        parts = _SENTENCE_END.split(" ".join(str(text).split()))
        n = self.opening_sentences
        return " ".join(parts[:n]), " ".join(parts[n:])

    def qualifies(self, item: dict) -> bool:
        """Whether ``item`` can be a query for this task (all ``requires`` fields present and, for
        classification without an other_label, a label in the label set; with opening_sentences, a text that goes
        on after its opening)."""
        if not all(has_value(item, f) for f in self.requires):
            return False
        if self.opening_sentences and not self.split_opening(item[self.target_field])[1]:
            return False
        if self.kind == "classification" and not self.other_label:
            return self._match_label(str(item[self.target_field])) is not None
        if self.kind == "rating":
            try:
                self.target(item)
            except ValueError:
                return False
        return True

    def _truncate(self, text: str) -> str:
        n = self.max_input_chars
        if n is None or len(text) <= n:
            return text
        cut = text[:n]
        sp = cut.rfind(" ")
        if sp >= int(n * 0.8):  # end on a word boundary when one is near the limit
            cut = cut[:sp]
        return cut.rstrip()

    def render(self, item: dict) -> str:
        """The prompt text (user message) for one item: ``prompt`` with ``{field}`` filled from the item (each
        field cut to ``max_input_chars``) and ``{labels}`` with the label space, comma-separated."""
        values: dict[str, str] = {}
        for f in self.input_fields:
            if not has_value(item, f):
                raise ValueError(f"task {self.name}: item {item.get('id')!r} has no value for input field '{f}'")
            values[f] = self._truncate(str(item[f]).strip())
        if self.kind == "classification" and LABELS_PLACEHOLDER not in values:
            values[LABELS_PLACEHOLDER] = ", ".join(self.label_space)
        if self.opening_sentences:
            if not has_value(item, self.target_field):
                raise ValueError(f"task {self.name}: item {item.get('id')!r} has no '{self.target_field}'")
            values[OPENING_PLACEHOLDER] = self._truncate(self.split_opening(item[self.target_field])[0])
        return self.prompt.format_map(values)

    def _match_label(self, value: str) -> str | None:
        v = value.strip().casefold()
        for lab in self.labels or ():
            if lab.casefold() == v:
                return lab
        if self.other_label and self.other_label.casefold() == v:
            return self.other_label
        return None

    def target(self, item: dict) -> str:
        """The target string: ratings "1".."5" (an integer within ``scale``), labels mapped onto the label space
        (case-insensitively; anything else becomes ``other_label``), generation targets stripped."""
        if not has_value(item, self.target_field):
            raise ValueError(f"task {self.name}: item {item.get('id')!r} has no '{self.target_field}'")
        v = item[self.target_field]
        if self.kind == "rating":
            if isinstance(v, bool):
                raise ValueError(f"task {self.name}: rating {v!r} is not a number")
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"task {self.name}: rating {v!r} is not a number") from None
            lo, hi = self.scale
            if not (math.isfinite(x) and x == int(x) and lo <= x <= hi):
                raise ValueError(f"task {self.name}: rating {v!r} is not an integer in {lo}..{hi}")
            return str(int(x))
        if self.kind == "classification":
            self.require_labels()
            lab = self._match_label(str(v))
            if lab is None:
                if not self.other_label:
                    raise ValueError(f"task {self.name}: label {v!r} is not in the label set")
                lab = self.other_label
            return lab
        if self.opening_sentences:
            return self.split_opening(v)[1]
        return str(v).strip()

    # ------------------------------------------------------------------------------------- answers

    _NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")

    def parse(self, answer: str | None) -> str | None:
        """Map a model's free text back into the answer space; ``None`` when it cannot.

        rating: the first number (decimals rounded half up) that lies within ``scale`` ("Rating: 4 stars" -> "4",
        "I'd say 5" -> "5", "10/10" -> None). classification: the label found EARLIEST in the answer, matched
        case-insensitively on word boundaries; at the same position the longest label wins (so "U.S. NEWS" beats
        "NEWS"). generation: the stripped answer.
        """
        if answer is None:
            return None
        if self.kind == "rating":
            lo, hi = self.scale
            for m in self._NUMBER.finditer(answer):
                x = math.floor(float(m.group()) + 0.5)
                if lo <= x <= hi:
                    return str(x)
            return None
        if self.kind == "classification":
            best = None  # (start, -len, label)
            for lab in self.label_space:
                m = re.search(r"(?<!\w)" + re.escape(lab) + r"(?!\w)", answer, flags=re.IGNORECASE)
                if m:
                    key = (m.start(), -len(lab), lab)
                    if best is None or key < best:
                        best = key
            return best[2] if best else None
        return answer.strip()

    # ------------------------------------------------------------------------------------- scoring

    def _check_lengths(self, predictions: Sequence, targets: Sequence) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"task {self.name}: {len(predictions)} predictions for {len(targets)} targets")

    def _metric(self, name: str, preds: Sequence[str | None], targets: Sequence[str]) -> float:
        if name in ("mae", "rmse"):
            p = [None if x is None else float(x) for x in preds]
            t = [float(x) for x in targets]
            fn = M.mae if name == "mae" else M.rmse
            return fn(p, t, lo=self.scale[0], hi=self.scale[1])
        if name == "accuracy":
            return M.accuracy(list(preds), list(targets))
        if name == "macro_f1":
            return M.macro_f1(list(preds), list(targets), self.label_space)
        if name == "rouge1":
            return M.mean_rouge1(list(preds), list(targets))
        if name == "rougeL":
            return M.mean_rougeL(list(preds), list(targets))
        raise ValueError(f"unknown metric {name!r}")

    def score(self, predictions: Sequence[str | None], targets: Sequence[str]) -> dict[str, float]:
        """Each configured metric over parsed predictions (``parse`` output) and targets (``target`` output),
        plus ``parse_rate`` (fraction of predictions that are not None)."""
        self._check_lengths(predictions, targets)
        out = {m: self._metric(m, predictions, targets) for m in self.metrics}
        out["parse_rate"] = float(np.mean([p is not None for p in predictions])) if predictions else float("nan")
        return out

    def example_scores(self, pred: str | None, target: str) -> dict[str, float]:
        """Per-example scores whose mean over examples gives the metric, for bootstrapping over users:
        "mae" (absolute error), "sq_err" (squared error; RMSE = sqrt(mean(sq_err))), "accuracy" (0/1),
        "rouge1", "rougeL". macro_f1 is not a per-example quantity (bootstrap it over users with ``metrics.bootstrap_stat``)."""
        out: dict[str, float] = {}
        for m in self.metrics:
            if m in ("mae", "rmse"):
                e = float(M.rating_errors([None if pred is None else float(pred)], [float(target)], *self.scale)[0])
                out["mae" if m == "mae" else "sq_err"] = e if m == "mae" else e * e
            elif m == "accuracy":
                out["accuracy"] = float(pred is not None and pred == target)
            elif m == "rouge1":
                out["rouge1"] = M.rouge1(pred, target)
            elif m == "rougeL":
                out["rougeL"] = M.rougeL(pred, target)
        return out
