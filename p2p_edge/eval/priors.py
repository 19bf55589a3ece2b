"""Non-LLM user priors: the answer a user's own history suggests without any model (the bar personalization
must clear)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from p2p_edge.eval.task import Task, has_value

__all__ = ["PRIOR_RULES", "user_prior_prediction"]

PRIOR_RULES = {
    "rating": ("majority", "user_mode", "user_mean"),
    "classification": ("majority", "user_mode"),
    "generation": (),
}


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
