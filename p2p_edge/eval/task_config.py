"""Load and validate the tasks config (``configs/tasks.toml``) into ``Task``s and the split settings.

Client-safe: standard library + numpy only (no torch). Every task, prompt, label rule and split rule comes from the config, so a new dataset in the per-user schema (see the shared data README) needs a config
entry and no code change.

Config layout (all keys are checked; unknown keys are errors that name the key)::

    [splits]            seed, method, test_fraction, val_fraction, [splits.ood] k, n_test_clusters, ...
    [tasks.NAME]        one table per task (see ``Task``)

Paths: a task's ``dataset`` has ``${NAME}`` and ``${NAME:-default}`` replaced from the environment; a path that is
still relative is taken relative to the directory of the config file. An environment value that begins the string
and is itself relative is taken relative to the current directory (as a shell user would expect).
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p_edge.errors import InputError
from p2p_edge.eval.task import (KINDS, LABELS_PLACEHOLDER, METRICS_BY_KIND, OPENING_PLACEHOLDER, OodConfig, SplitConfig,
                                 Task)

__all__ = ["TaskConfig", "load_config", "default_config_path"]


def default_config_path() -> Path:
    """``configs/tasks.toml`` of a source checkout (the config is not shipped inside the wheel)."""
    return Path(__file__).resolve().parents[2] / "configs" / "tasks.toml"


@dataclass(frozen=True)
class TaskConfig:
    path: Path
    tasks: dict[str, Task]
    splits: SplitConfig


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


def _load_task(path: Path, name: str, t: _Table) -> Task:
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

    t.done()
    return Task(
        name=name, dataset=ds, kind=kind, input_fields=input_fields, target_field=target_field, prompt=prompt,
        metrics=metrics, requires=requires, labels=labels, auto_top_k=auto, other_label=other, scale=scale,
        max_input_chars=max_chars, global_item_ids=global_ids, opening_sentences=opening,
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
    splits = _load_splits(root.sub("splits"))
    tt = root.sub("tasks")
    if not tt.data:
        raise InputError(path, "no tasks defined", field="tasks")
    tasks = {}
    for name in tt.data:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise InputError(path, "task names may use letters, digits, '_' and '-' only", field=f"tasks.{name}")
        tasks[name] = _load_task(path, name, tt.sub(name))
    tt.done()
    root.done()
    return TaskConfig(path=path, tasks=tasks, splits=splits)
