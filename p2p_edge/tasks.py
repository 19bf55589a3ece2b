"""Task definitions loaded from a TOML config (``configs/tasks.toml``): prompt, target, parsing, scoring.

Client-safe: standard library + numpy only (no torch). Every task, prompt, label rule, example protocol and split
rule comes from the config, so a new dataset in the per-user schema (see the shared data README) needs a config
entry and no code change.

Config layout (all keys are checked; unknown keys are errors that name the key)::

    [splits]            seed, method, test_fraction, val_fraction, [splits.ood] k, n_test_clusters, ...
    [protocol]          defaults for how per-user examples are cut (see ``Protocol``)
    [tasks.NAME]        one table per task (see ``Task``); ``protocol = {...}`` overrides protocol keys per task

Paths: a task's ``dataset`` has ``${NAME}`` and ``${NAME:-default}`` replaced from the environment; a path that is
still relative is taken relative to the directory of the config file. An environment value that begins the string
and is itself relative is taken relative to the current directory (as a shell user would expect).
"""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .errors import InputError

__all__ = [
    "Task", "Protocol", "SplitConfig", "OodConfig", "TaskConfig", "KINDS", "METRICS_BY_KIND",
    "load_config", "load_tasks", "get_task", "default_config_path", "has_value",
]

KINDS = ("rating", "classification", "generation")
METRICS_BY_KIND = {
    "rating": ("mae", "rmse", "accuracy", "macro_f1"),
    "classification": ("accuracy", "macro_f1"),
    "generation": ("rouge1", "rougeL"),
}
ROLES = ("test", "dev", "extra")
LABELS_PLACEHOLDER = "labels"  # {labels} in a prompt lists the label space, comma-separated
OPENING_PLACEHOLDER = "opening"  # {opening}: the target text's first sentences (opening_sentences > 0)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def default_config_path() -> Path:
    """``configs/tasks.toml`` of a source checkout (the config is not shipped inside the wheel)."""
    return Path(__file__).resolve().parent.parent / "configs" / "tasks.toml"


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
class Protocol:
    """How a user's history becomes (query, profile) examples (LaMP-style; see ``train.data``).

    For each user and task, the items that qualify for the task are q_1..q_m in time order: q_m is the "test"
    query, q_(m-1) the "dev" query, and for TRAIN users up to ``train_queries_per_user`` more recent ones before the
    dev query are "extra" training queries. The profile of a query is the items strictly before it in time
    (``same_time_in_profile = false``: items with the same ``time`` value are excluded too, as the order within a
    day is unknown) -- never the query itself or anything after it.
    """

    train_queries_per_user: int = 4
    train_roles: tuple[str, ...] = ("test", "dev", "extra")  # roles of TRAIN users' queries used for training
    eval_roles: tuple[str, ...] = ("test",)  # roles of VAL / TEST users' queries that are scored
    min_profile_items: int = 1  # a query with fewer profile items is dropped
    same_time_in_profile: bool = False


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
    """One task over one per-user dataset. Build with ``load_config`` / ``load_tasks``."""

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
    protocol: Protocol = field(default_factory=Protocol)
    source: str = ""  # the config file it came from (for error messages)

    # ------------------------------------------------------------------------------------- label space

    @property
    def primary_metric(self) -> str:
        """The metric that ranks methods on this task: the first configured one."""
        return self.metrics[0]

    @property
    def labels_resolved(self) -> bool:
        return self.kind != "classification" or self.labels is not None

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
        "rouge1", "rougeL". macro_f1 is not a per-example quantity: use ``bootstrap``."""
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

    def bootstrap(
        self,
        predictions: Sequence[str | None],
        targets: Sequence[str],
        n: int = 1000,
        seed: int = 0,
        alpha: float = 0.05,
    ) -> dict[str, tuple[float, float, float]]:
        """{metric: (value, lo, hi)}: percentile bootstrap resampling EXAMPLES with replacement (pass one example
        per user, e.g. the test query, to resample users). Works for macro_f1 and rmse too."""
        self._check_lengths(predictions, targets)
        if not targets:
            raise ValueError(f"task {self.name}: nothing to bootstrap")
        per = [self.example_scores(p, t) for p, t in zip(predictions, targets)]
        cols = {k: np.array([d[k] for d in per]) for k in (per[0] if per else {})}
        preds, targs = list(predictions), list(targets)
        labels = self.label_space if "macro_f1" in self.metrics else ()

        def stat(idx: np.ndarray) -> dict[str, float]:
            res = {}
            for m in self.metrics:
                if m == "rmse":
                    res[m] = float(np.sqrt(cols["sq_err"][idx].mean()))
                elif m == "macro_f1":
                    res[m] = M.macro_f1([preds[i] for i in idx], [targs[i] for i in idx], labels)
                else:
                    res[m] = float(cols[m][idx].mean())
            return res

        return M.bootstrap_stat(len(targets), stat, n=n, seed=seed, alpha=alpha)


@dataclass(frozen=True)
class TaskConfig:
    path: Path
    tasks: dict[str, Task]
    splits: SplitConfig
    protocol: Protocol


# ------------------------------------------------------------------------------------------------ loading

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, path: Path, key: str) -> str:
    """Replace ${NAME} / ${NAME:-default}; a relative env value at the start is made absolute (cwd)."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        env = os.environ.get(name)
        if env:
            if m.start() == 0 and not os.path.isabs(env):
                env = os.path.abspath(env)
            return env
        if default is not None:
            return default
        raise InputError(path, f"environment variable {name} is not set and has no ':-default'", field=key)

    return _ENV.sub(sub, value)


class _Table:
    """Typed access to one TOML table, with errors that name file and dotted key; rejects unknown keys."""

    def __init__(self, path: Path, prefix: str, data: Any):
        if not isinstance(data, dict):
            raise InputError(path, "must be a table", field=prefix)
        self.path, self.prefix, self.data, self.used = path, prefix, data, set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def err(self, k: str, msg: str) -> InputError:
        return InputError(self.path, msg, field=self.key(k))

    def has(self, k: str) -> bool:
        return k in self.data

    def get(self, k: str, typ, default=..., check=None):
        self.used.add(k)
        if k not in self.data:
            if default is ...:
                raise self.err(k, "is required")
            return default
        v = self.data[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise self.err(k, f"must be a {name}, got {type(v).__name__} {v!r}")
        if check is not None:
            msg = check(v)
            if msg:
                raise self.err(k, msg)
        return v

    def str_list(self, k: str, default=..., allow_empty: bool = False) -> tuple[str, ...]:
        v = self.get(k, list, default)
        if v is default and default is not ...:
            return tuple(default)
        if not v and not allow_empty:
            raise self.err(k, "must not be empty")
        for x in v:
            if not isinstance(x, str) or not x.strip():
                raise self.err(k, f"must be a list of non-empty strings, got {x!r}")
        if len(set(v)) != len(v):
            raise self.err(k, "has duplicate entries")
        return tuple(v)

    def sub(self, k: str) -> "_Table":
        self.used.add(k)
        return _Table(self.path, self.key(k), self.data.get(k, {}))

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.err(extra[0], "unknown key")


def _pos(v):
    return None if v > 0 else "must be > 0"


def _nonneg(v):
    return None if v >= 0 else "must be >= 0"


def _load_protocol(t: _Table, base: Protocol) -> Protocol:
    def roles(k, default):
        if not t.has(k):
            return default
        r = t.str_list(k)
        bad = [x for x in r if x not in ROLES]
        if bad:
            raise t.err(k, f"unknown role {bad[0]!r} (roles: {', '.join(ROLES)})")
        return r

    p = Protocol(
        train_queries_per_user=t.get("train_queries_per_user", int, base.train_queries_per_user, _nonneg),
        train_roles=roles("train_roles", base.train_roles),
        eval_roles=roles("eval_roles", base.eval_roles),
        min_profile_items=t.get("min_profile_items", int, base.min_profile_items, _nonneg),
        same_time_in_profile=t.get("same_time_in_profile", bool, base.same_time_in_profile),
    )
    t.done()
    return p


def _load_splits(t: _Table) -> SplitConfig:
    def frac(v):
        return None if 0 <= v < 1 else "must be in [0, 1)"

    d = SplitConfig()
    seed = t.get("seed", int, d.seed)
    method = t.get("method", str, d.method,
                   lambda v: None if v in ("shuffle", "hash") else "must be 'shuffle' or 'hash'")
    test_fraction = t.get("test_fraction", float, d.test_fraction, frac)
    val_fraction = t.get("val_fraction", float, d.val_fraction, frac)
    if test_fraction + val_fraction >= 1:
        raise t.err("val_fraction", "test_fraction + val_fraction must be < 1")
    o = t.sub("ood")
    od = OodConfig()
    k = o.get("k", int, od.k, _pos)
    n_test = o.get("n_test_clusters", int, od.n_test_clusters, _pos)
    if n_test >= k:
        raise o.err("n_test_clusters", f"must be < k ({k})")
    ood = OodConfig(
        k=k,
        n_test_clusters=n_test,
        n_init=o.get("n_init", int, od.n_init, _pos),
        max_iter=o.get("max_iter", int, od.max_iter, _pos),
        normalize=o.get("normalize", bool, od.normalize),
    )
    o.done()
    t.done()
    return SplitConfig(seed=seed, method=method, test_fraction=test_fraction, val_fraction=val_fraction, ood=ood)


def _load_task(path: Path, name: str, t: _Table, protocol: Protocol) -> Task:
    kind = t.get("kind", str, check=lambda v: None if v in KINDS else f"must be one of {', '.join(KINDS)}")
    raw_ds = t.get("dataset", str, check=lambda v: None if v.strip() else "must not be empty")
    ds = Path(_expand(raw_ds, path, t.key("dataset"))).expanduser()
    if not ds.is_absolute():
        ds = (path.parent / ds).resolve()
    opening = t.get("opening_sentences", int, 0, _nonneg)
    if opening and kind != "generation":
        raise t.err("opening_sentences", f"only applies to generation tasks, not {kind}")
    input_fields = t.str_list("input_fields", (), allow_empty=True) if opening else t.str_list("input_fields")
    target_field = t.get("target_field", str, check=lambda v: None if v.strip() else "must not be empty")
    if target_field in input_fields:
        raise t.err("target_field", f"'{target_field}' is also an input field (the target would be in the prompt)")
    prompt = t.get("prompt", str, check=lambda v: None if v.strip() else "must not be empty")
    try:
        placeholders = [(fname, spec, conv) for _, fname, spec, conv in string.Formatter().parse(prompt)
                        if fname is not None]
    except ValueError as e:
        raise t.err("prompt", f"bad template: {e}") from None
    if kind == "classification" and LABELS_PLACEHOLDER in input_fields:
        raise t.err("input_fields", f"'{LABELS_PLACEHOLDER}' is reserved for the label list in classification prompts")
    if opening and OPENING_PLACEHOLDER in input_fields:
        raise t.err("input_fields", f"'{OPENING_PLACEHOLDER}' is reserved for the target's opening sentences")
    allowed = (set(input_fields) | ({LABELS_PLACEHOLDER} if kind == "classification" else set())
               | ({OPENING_PLACEHOLDER} if opening else set()))
    for fname, spec, conv in placeholders:
        if not fname or spec or conv or not re.fullmatch(r"\w+", fname):
            raise t.err("prompt", f"placeholders must be plain {{field}} names, got {{{fname}...}} "
                                  "(write {{ and }} for literal braces)")
        if fname not in allowed:
            raise t.err("prompt", f"placeholder {{{fname}}} is not in input_fields")
    missing = [f for f in (*input_fields, *([OPENING_PLACEHOLDER] if opening else [])) if f not in {p[0] for p in placeholders}]
    if missing:
        raise t.err("prompt", f"input field '{missing[0]}' has no {{{missing[0]}}} placeholder")

    allowed_metrics = METRICS_BY_KIND[kind]
    metrics = t.str_list("metrics")
    bad = [m for m in metrics if m not in allowed_metrics]
    if bad:
        raise t.err("metrics", f"{bad[0]!r} is not a {kind} metric (choose from {', '.join(allowed_metrics)})")

    default_req = tuple(dict.fromkeys((*input_fields, target_field)))
    requires = t.str_list("requires", default_req)
    lacking = [f for f in default_req if f not in requires]
    if lacking:
        raise t.err("requires", f"must include input and target field '{lacking[0]}'")

    max_chars = t.get("max_input_chars", int, None, _pos)
    global_ids = t.get("global_item_ids", bool, False)

    labels = auto = None
    other = "Other"
    scale = (1, 5)
    if kind == "classification":
        if not t.has("labels"):
            raise t.err("labels", "is required for classification: a list, or { auto_top_k = N }")
        lv = t.data["labels"]
        if isinstance(lv, dict):
            lt = t.sub("labels")
            auto = lt.get("auto_top_k", int, check=_pos)
            lt.done()
        else:
            labels = t.str_list("labels")
            if len({x.casefold() for x in labels}) != len(labels):
                raise t.err("labels", "has labels that differ only in case")
        other = t.get("other_label", str, "Other") or None
        if other and labels and other.casefold() in {x.casefold() for x in labels}:
            raise t.err("other_label", f"'{other}' is also listed in labels")
    else:
        for k in ("labels", "other_label"):
            if t.has(k):
                raise t.err(k, f"only applies to classification tasks, not {kind}")
    if kind == "rating":
        sv = t.get("scale", list, [1, 5])
        if len(sv) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in sv) or sv[0] >= sv[1]:
            raise t.err("scale", f"must be [lo, hi] integers with lo < hi, got {sv!r}")
        scale = (sv[0], sv[1])
    elif t.has("scale"):
        raise t.err("scale", f"only applies to rating tasks, not {kind}")

    task_protocol = _load_protocol(t.sub("protocol"), protocol) if t.has("protocol") else protocol
    t.done()
    return Task(
        name=name, dataset=ds, kind=kind, input_fields=input_fields, target_field=target_field, prompt=prompt,
        metrics=metrics, requires=requires, labels=labels, auto_top_k=auto, other_label=other, scale=scale,
        max_input_chars=max_chars, global_item_ids=global_ids, opening_sentences=opening, protocol=task_protocol,
        source=str(path),
    )


def load_config(path: str | os.PathLike | None = None) -> TaskConfig:
    """Parse and validate a tasks TOML file (default: ``default_config_path()``)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise InputError(path, f"invalid TOML: {e}", line=int(m.group(1)) if m else None) from None
    root = _Table(path, "", data)
    protocol = _load_protocol(root.sub("protocol"), Protocol())
    splits = _load_splits(root.sub("splits"))
    tt = root.sub("tasks")
    if not tt.data:
        raise InputError(path, "no tasks defined", field="tasks")
    tasks = {}
    for name in tt.data:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise InputError(path, "task names may use letters, digits, '_' and '-' only", field=f"tasks.{name}")
        tasks[name] = _load_task(path, name, tt.sub(name), protocol)
    tt.done()
    root.done()
    return TaskConfig(path=path, tasks=tasks, splits=splits, protocol=protocol)


def load_tasks(path: str | os.PathLike | None = None) -> list[Task]:
    """The tasks of a config file, in file order."""
    return list(load_config(path).tasks.values())


def get_task(name: str, path: str | os.PathLike | None = None) -> Task:
    cfg = load_config(path)
    if name not in cfg.tasks:
        raise InputError(cfg.path, f"no task named '{name}' (have: {', '.join(cfg.tasks)})", field="tasks")
    return cfg.tasks[name]
