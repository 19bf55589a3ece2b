"""K-fold user splits: score a training recipe on users none of its earlier runs held out.

The fixed splits hold out a dozen or so authors per split; every candidate judged on them spends a look at the
same authors. Fold k of K holds out a fresh, disjoint 1/K of a dataset's users as test users (every user is a
test user in exactly one fold) and trains on the rest, so K folds score a recipe on every user once.

    python -m p2p_edge.lab.folds --config configs/train_default.toml --datasets huffpost_news \
        --folds 5 --fold 0 --out runs/folds/v1_fold0

writes OUT/splits.json and OUT/config.toml (the recipe unchanged except splits_file and out_dir = OUT/<train.method>;
with --mt-lora also OUT/config_mt_lora.toml for the same users), then prints the train and report commands. A
control's own recipe (configs/train_mt_lora.toml) folded into another OUT gets the same users for the same
--folds/--fold/--seed; `report --reuse` then scores it next to the fold's hypernet without rescoring the rest. The users
are those of the recipe's splits file. Datasets not named in --datasets keep no test users (training data only).
Both split names ("random" and "ood") get the same fold, so the recipe's split = "both" trains on the fold's
training users and the report scores the fold's test users (its two split sections are then the same users).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tomllib
from pathlib import Path

from p2p_edge.errors import InputError
from p2p_edge.fileio import atomic_write_text
from p2p_edge.train.config import PATH_KEYS, load_config
from p2p_edge.eval.splits import load_splits, save_splits

# keys that hold paths relative to the config file, made absolute in a copy written elsewhere: the config's own
# path keys and an overlay's `extends` (whose chain then resolves against its own files, as in load_config)
RELOCATED_KEYS = ("extends", *PATH_KEYS)


def fold_splits(users: dict[str, list[str]], test_datasets: set[str], folds: int, fold: int,
                val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """train/val/test ids ("dataset/user") for fold `fold` of `folds`. Each dataset's users are shuffled with a
    seed of their own; in a test dataset user i of that order is a test user of fold i % folds. Validation users
    (for the val loss and the prior's rule) come from the rest."""
    if not 0 <= fold < folds or folds < 2:
        raise ValueError(f"need 0 <= fold < folds and folds >= 2 (got fold {fold} of {folds})")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ds in sorted(users):
        ids = sorted(users[ds])
        random.Random(f"{seed}:{ds}").shuffle(ids)
        test = ids[fold::folds] if ds in test_datasets else []
        held = set(test)
        rest = [u for u in ids if u not in held]
        n_val = round(val_fraction * len(rest))
        out["test"] += test
        out["val"] += rest[:n_val]
        out["train"] += rest[n_val:]
    return {p: sorted(v) for p, v in out.items()}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict) -> str:
    """A config dict (top-level keys and one level of tables, as the training configs have) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def relocated_config(src: Path, **overrides) -> dict:
    """The raw TOML of `src` with its relative paths made absolute, then `overrides` (top-level or
    "table.key" names) applied: a copy that means the same wherever it is written."""
    data = tomllib.loads(src.read_text(encoding="utf-8"))
    base = src.resolve().parent
    for key in RELOCATED_KEYS:
        *tables, name = key.split(".")
        table = data
        for t in tables:
            table = table.get(t, {})
        v = table.get(name)
        if isinstance(v, str) and v:
            p = Path(v).expanduser()
            table[name] = str(p if p.is_absolute() else (base / p).resolve())
    for name, v in overrides.items():
        *tables, key = name.split(".")
        table = data
        for t in tables:
            table = table.setdefault(t, {})
        table[key] = v
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the training recipe (a train_*.toml)")
    ap.add_argument("--datasets", nargs="+", required=True, help="datasets whose users are held out by fold")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="train.threads for this machine (default: the recipe's)")
    ap.add_argument("--mt-lora", action="store_true", help="also write the MT-LoRA control's config for this fold")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config)
        if not cfg.splits_file:
            raise InputError(a.config, "needs a splits file: its users are the ones folded", field="splits_file")
        old = load_splits(cfg.resolve(cfg.splits_file))
        ids = sorted({u for parts in old.values() for us in parts.values() for u in us})
        users: dict[str, list[str]] = {}
        for u in ids:
            ds, _, _ = u.partition("/")
            users.setdefault(ds, []).append(u)
        unknown = sorted(set(a.datasets) - set(users))
        if unknown:
            raise InputError(cfg.resolve(cfg.splits_file), f"no users of dataset {unknown[0]!r} "
                             f"(have: {', '.join(sorted(users))})", field="--datasets")
        if a.mt_lora and cfg.train.method != "p2p":
            raise InputError(a.config, "--mt-lora adds a control to a hypernet recipe; this one already is "
                             f"{cfg.train.method!r}", field="train.method")
        parts = fold_splits(users, set(a.datasets), a.folds, a.fold, a.val_fraction, a.seed)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"folds": a.folds, "fold": a.fold, "seed": a.seed, "val_fraction": a.val_fraction,
            "test_datasets": sorted(a.datasets), "recipe": str(a.config),
            "note": "k-fold by user; 'random' and 'ood' are the same fold"}
    save_splits(out / "splits.json", {"random": parts, "ood": parts}, meta=meta)
    common = {"splits_file": str(out / "splits.json")} | ({"train.threads": a.threads} if a.threads is not None else {})
    run_dir = out / cfg.train.method  # "p2p", or "mt_lora" when the recipe is itself a control's
    configs = {"config.toml": relocated_config(a.config, out_dir=str(run_dir), **common)}
    if a.mt_lora:
        configs["config_mt_lora.toml"] = relocated_config(a.config, out_dir=str(out / "mt_lora"),
                                                          **common, **{"train.method": "mt_lora"})
    for name, data in configs.items():
        atomic_write_text(out / name, f"# fold {a.fold} of {a.folds} of {a.config} (python -m p2p_edge.lab.folds)\n"
                          + dump_toml(data))
        load_config(out / name)  # the copy must load as a config
    n = {p: len(v) for p, v in parts.items()}
    print(f"fold {a.fold}/{a.folds}: {n['train']} train, {n['val']} val, {n['test']} test users -> {out}")
    mt = (f"p2p-edge train --config {out / 'config_mt_lora.toml'}\n" if a.mt_lora else "")
    print(f"p2p-edge train --config {out / 'config.toml'}\n{mt}", end="")
    if cfg.train.method == "p2p":
        print(f"python -m p2p_edge.lab.report --config {out / 'config.toml'} --p2p {run_dir / 'last.pt'} "
              + (f"--mt-lora {out / 'mt_lora' / 'last.pt'} " if a.mt_lora else "") + f"--out {out / 'report'}")
    else:  # a control alone: it is scored next to the hypernet trained on the same fold
        print(f"python -m p2p_edge.lab.report --config FOLD/config.toml --p2p FOLD/p2p/last.pt "
              f"--mt-lora {run_dir / 'last.pt'} --reuse FOLD/report --out FOLD/report_mt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
