"""Does a hypernet's profile effect hold from one panel of held-out users to the next?

Candidates are gated on validation users and judged on test users: two disjoint panels of the same split, each
of a dozen or so authors. This reads the answers `p2p_edge.lab.report` runs saved (answers_SPLIT.json: e.g. one
run with --part val and one with --part test, or the test reports of k folds, p2p_edge.lab.folds) and sets side
by side, per split and panel: each method's accuracy on a classification task (or ROUGE on a generation task,
--metric), P2P with the user's own profile minus P2P with another held-out user's profile (the same donors as the
report), P2P minus the prior rule, the base model and the MT-LoRA control where the report scored it (paired 95%
bootstrap CIs over users), and all panels
pooled. No model runs: seconds.

A candidate that passed a validation gate was picked for its validation panel, so its pooled gap leans upward;
for such a candidate the pooled row is a diagnostic of how much the effect varies, not evidence for shipping.
The k folds of one recipe are k fresh panels: their pool scores the recipe on every user once.

    python -m bench.panels --task news_category --out bench/results/panels \
        v1=runs/report_v1_val,runs/report_v1b habits_full=runs/report_habits_full_val,runs/report_habits_full_test
    python -m bench.panels --task news_category --splits random --out bench/results/folds_v1 \
        v1=runs/folds/v1_fold0/report,runs/folds/v1_fold1/report,...
    python -m bench.panels --task news_headline --metric rouge1 --splits random --out ... v1=...   (free text)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.output import write_result
from p2p_edge.eval import metrics as M
from p2p_edge.errors import InputError
from p2p_edge.eval.results_io import answers_path, read_answers
from p2p_edge.eval.stats import answer_changes, answer_changes_cells, paired_diff, to_json, user_metric_table

METHODS = ("base", "mt_lora", "p2p", "p2p_shuffled", "prior")
NULL = "p2p_null"   # the hypernet fed a neutral no-history profile (report --null-profile): the last columns
READ = (*METHODS, NULL)   # every method a panel reads from a report, where the report has it


SPEC = "NAME=REPORT_DIR[,REPORT_DIR...]"


def parse_candidate(spec: str) -> tuple[str, list[Path]]:
    """NAME=REPORT_DIR[,REPORT_DIR...]: one recipe's reports, each on its own panel of users."""
    name, sep, dirs = spec.partition("=")
    parts = dirs.split(",")
    if not sep or not name or not all(parts) or len(set(parts)) < len(parts):
        raise InputError(spec, f"expected {SPEC} (distinct dirs)", field="candidate")
    return name, [Path(p) for p in parts]


def load_answers(report: Path, split: str, task: str) -> dict[str, dict[str, list]]:
    """method -> user -> [(task, prediction, target)] for the users with at least one query of `task`."""
    path = answers_path(report, split)
    raw = read_answers(report, split)
    missing = [m for m in ("p2p", "p2p_shuffled") if m not in raw]
    if missing:
        raise InputError(path, f"no answers for {', '.join(missing)}", field="methods")
    users = sorted(u for u, rows in raw["p2p"].items() if any(r[0] == task for r in rows))
    return {m: {u: raw[m][u] for u in users if u in raw[m]} for m in READ if m in raw}


# metric -> (the task kind it scores, the function): none needs the task's config (an auto_top_k task only knows its
# label set after reading the training users)
METRICS = {"accuracy": ("classification", M.accuracy), "rouge1": ("generation", M.mean_rouge1),
           "rougeL": ("generation", M.mean_rougeL)}


class Scorer:
    """Scores one task's saved answers (parsed label or None, or free text, vs target) with one metric."""

    def __init__(self, metric: str):
        self.metric = metric
        self.kind, self.fn = METRICS[metric]   # kind: exact match is "right" only for labels (answer_changes)

    def score(self, predictions, targets) -> dict[str, float]:
        return {self.metric: self.fn(list(predictions), list(targets))}


def merge(panels: list[dict], where: str) -> dict:
    """One panel of all panels' users (methods all of them answered); a user in two panels would be counted
    twice, so it is an error."""
    out: dict[str, dict] = {}
    for m in set.intersection(*(set(p) for p in panels)):
        out[m] = {}
        for p in panels:
            shared = set(out[m]) & set(p[m])
            if shared:
                raise InputError(where, f"{len(shared)} user(s) in two panels, e.g. {sorted(shared)[0]}")
            out[m].update(p[m])
    return out


def panel_row(answers: dict, task: str, metric: str = "accuracy") -> dict:
    """The metric pooled within users, users resampled: the same bootstrap (and seed) as the reports."""
    tasks = {task: Scorer(metric)}
    acc = to_json(user_metric_table(answers, tasks))
    row = {"n_users": len(answers["p2p"]),
           "methods": {m: acc[m][task][metric] for m in READ if task in acc.get(m, {})},
           "answer_changes": answer_changes(answers, "p2p", "p2p_shuffled", tasks)[task]}
    pairs = (("own_minus_shuffled", "p2p_shuffled"), ("p2p_minus_prior", "prior"), ("p2p_minus_base", "base"),
             ("p2p_minus_mt_lora", "mt_lora"), ("p2p_minus_null", NULL))
    for key, other in pairs:
        # the prior answers label tasks only; base: does the hypernet beat the base model on every task?
        # mt_lora: only reports given the control (a k-fold report gets it through report --reuse); null: only
        # reports run with --null-profile
        if other in answers and any(r[0] == task for rows in answers[other].values() for r in rows):
            gap = to_json({"d": paired_diff(answers, "p2p", other, tasks)})["d"][task]
            row[key] = {"diff": gap[metric], "ci": gap[f"{metric}_ci"]}
    return row


def analyse(candidates: list[tuple[str, list[Path]]], task: str, splits=("random", "ood"),
            metric: str = "accuracy") -> dict:
    out: dict = {"task": task, "metric": metric, "candidates": {}}
    for name, dirs in candidates:
        rows: dict = {"reports": [str(d) for d in dirs], "splits": {}}
        for split in splits:
            panels = {str(d): load_answers(d, split, task) for d in dirs}
            if len(dirs) > 1:
                panels["pooled"] = merge(list(panels.values()), f"{' + '.join(map(str, dirs))} ({split})")
            rows["splits"][split] = {p: panel_row(a, task, metric) for p, a in panels.items()}
        out["candidates"][name] = rows
    return out


def _gap(g: dict) -> str:
    lo, hi = g["ci"]
    return f"{g['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def render(r: dict, cmd: str) -> str:
    t, m = r["task"], r["metric"]
    lines = [f"<!-- generated by: {cmd} -->",
             f"# {t}: the profile effect on each panel of held-out users", "",
             "P2P with the user's own profile minus P2P with another held-out user's profile (same donors as the "
             f"reports), {m}, paired 95% CI over users. Each panel is one report's users (disjoint panels of the "
             "same split); *pooled* is all of them together. A candidate gated on its validation panel leans "
             "upward there. *prior* is the user's most frequent profile label. *Changed*: answers that differ "
             "between the own and the shuffled profile, and on how many of those each was right. *Null*: the "
             "hypernet fed a neutral no-history profile (reports run with --null-profile).", "",
             "| candidate | split | panel | users | base | MT-LoRA | P2P | P2P, shuffled | prior "
             "| own minus shuffled [95% CI] | P2P minus prior [95% CI] | P2P minus base [95% CI] "
             "| P2P minus MT-LoRA [95% CI] | changed | own / shuffled right | P2P, null | P2P minus null [95% CI] |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if r.get("note"):   # what the numbers cannot say themselves (e.g. a panel whose model is known broken)
        lines[3:3] = [r["note"], ""]
    for name, c in r["candidates"].items():
        for split, panels in c["splits"].items():
            for p, row in panels.items():
                acc = row["methods"]
                cells = " | ".join(f"{acc[k]:.3f}" if k in acc else "–" for k in METHODS)
                prior, base, mt, null = (_gap(row[k]) if k in row else "–" for k in
                                         ("p2p_minus_prior", "p2p_minus_base", "p2p_minus_mt_lora", "p2p_minus_null"))
                lines.append(f"| {name} | {split} | {p} | {row['n_users']} | {cells} "
                             f"| {_gap(row['own_minus_shuffled'])} | {prior} | {base} | {mt} "
                             f"| {' | '.join(answer_changes_cells(row['answer_changes']))} "
                             f"| {f'{acc[NULL]:.3f}' if NULL in acc else '–'} | {null} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", help=SPEC)
    ap.add_argument("--splits", nargs="+", default=["random", "ood"], choices=["random", "ood"],
                    help="k-fold reports: random only (their two split sections are the same users)")
    ap.add_argument("--task", required=True, help="a task the reports scored")
    ap.add_argument("--metric", default="accuracy", choices=sorted(METRICS),
                    help="accuracy for a classification task, rouge1/rougeL for a generation task")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    ap.add_argument("--note", default="", help="a paragraph for OUT.md, above the table (also in OUT.json)")
    args = ap.parse_args(argv)
    try:
        r = analyse([parse_candidate(s) for s in args.candidates], args.task, tuple(args.splits), args.metric)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.note:
        r["note"] = args.note
    print(write_result(args.out, r, render, "bench.panels", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
