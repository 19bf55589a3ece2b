"""Quality on held-out users of both splits: every method answers the same queries through llama.cpp.

Methods (keys of quality.json): base, prior, rag, pag, mt_lora, oppu, p2p, p2p_shuffled, p2p_summary_only,
p2p_retrieval_only. Metrics are pooled within users; [95% CI] resample users; paired CIs for p2p minus each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from p2p_edge.eval.stats import answer_changes, to_json

from p2p_edge.eval.answer import hypernet_adapters, run_adapter_method, score_split
from p2p_edge.profile import item_habits, item_text, profile_text, retrieve

METHODS = ("base", "prior", "rag", "pag", "mt_lora", "oppu", "p2p", "p2p_shuffled", "p2p_summary_only",
           "p2p_retrieval_only")
CONTEXT_HEADER = "What we know about the author:"


class ProfilePrompts:
    """RAG (the top-k profile items most similar to the query) and PAG (habits + LLM summary + the same top-k:
    P2P's own profile text, given in the prompt instead of turned into an adapter)."""

    def __init__(self, corpus, encoder, top_k: int):
        self.corpus, self.encoder, self.top_k = corpus, encoder, top_k
        self._vecs: dict[str, np.ndarray] = {}

    def _top(self, uid: str, query: str) -> list:
        items = self.corpus.profiles[uid]["items"]
        if uid not in self._vecs:
            self._vecs[uid] = self.encoder.encode([item_text(it) for it in items])
        q = self.encoder.encode([query])[0]
        return [items[i] for i in retrieve(q, self._vecs[uid], self.top_k)]

    def rag(self, uid: str, ex) -> str:
        return f"{CONTEXT_HEADER}\n{profile_text(None, self._top(uid, ex.prompt))}\n\n{ex.prompt}"

    def pag(self, uid: str, ex) -> str:
        p = self.corpus.profiles[uid]
        text = profile_text(p["summary"], self._top(uid, ex.prompt), item_habits(p["items"]))
        return f"{CONTEXT_HEADER}\n{text}\n\n{ex.prompt}"


def run_quality(corpus, tests: dict[str, list[str]], *, llm, hypernet, encoder, mt_lora: Path | None,
                oppu_adapter_for: Callable | None, top_k: int, oppu_uids: list[str] | None = None,
                log=print) -> tuple[dict, dict, dict, dict]:
    """-> (quality {split: {task: {method: metrics}}}, paired {split: {task: {"p2p-m": diffs}}}, timings_s,
    changes {split: {task: answer_changes of p2p vs p2p_shuffled}}: how many answers the profile itself moves).

    OPPU trains one LoRA per user, so it may be run on a subset of the test users (`oppu_uids`); its metrics and
    its paired comparison with P2P are then over that subset only (n_users says so)."""
    index = corpus.index()
    union = sorted(set(tests["random"]) | set(tests["ood"]))
    prompts = ProfilePrompts(corpus, encoder, top_k)
    spec = llm.spec
    methods: dict[str, dict] = {}
    timings: dict[str, float] = {}
    runs = [
        ("base", lambda: run_adapter_method(llm, corpus, union, lambda u, t: None)),
        ("rag", lambda: run_adapter_method(llm, corpus, union, lambda u, t: None, prompt_for=prompts.rag)),
        ("pag", lambda: run_adapter_method(llm, corpus, union, lambda u, t: None, prompt_for=prompts.pag)),
        ("p2p", lambda: run_adapter_method(llm, corpus, union, hypernet_adapters(hypernet, spec, corpus.emb["full"], index))),
        ("p2p_summary_only", lambda: run_adapter_method(
            llm, corpus, union, hypernet_adapters(hypernet, spec, corpus.emb["summary_only"], index))),
        ("p2p_retrieval_only", lambda: run_adapter_method(
            llm, corpus, union, hypernet_adapters(hypernet, spec, corpus.emb["retrieval_only"], index))),
    ]
    if mt_lora is not None:
        runs.append(("mt_lora", lambda: run_adapter_method(llm, corpus, union, lambda u, t: mt_lora)))
    if oppu_adapter_for is not None:
        ou = [u for u in union if oppu_uids is None or u in set(oppu_uids)]
        runs.append(("oppu", lambda: run_adapter_method(llm, corpus, ou, oppu_adapter_for)))
    for name, fn in runs:
        t = time.perf_counter()
        methods[name] = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        log(f"quality: {name} answered {len(methods[name])} users in {timings[name]:.0f} s")

    quality, paired, changes = {}, {}, {}
    for split in ("random", "ood"):
        uids = tests[split]
        ans, table, diffs = score_split(llm, corpus, uids, methods, hypernet, corpus.emb["full"], index,
                                      train_uids=corpus.part("both", "train"),
                                      val_uids=corpus.splits[split]["val"], compare=METHODS)
        table, diffs = to_json(table), to_json(diffs)
        quality[split] = reshape(table, corpus.tasks)
        paired[split] = reshape(diffs, corpus.tasks)
        if "p2p_shuffled" in ans:
            changes[split] = answer_changes(ans, "p2p", "p2p_shuffled", corpus.tasks)
        log(f"quality: {split} split scored ({len(uids)} users)")
    return quality, paired, timings, changes


def reshape(table: dict, tasks: dict) -> dict:
    """{method: {task: m}} -> {task: {method: m}} with "ci" = the CI of the task's primary metric."""
    out: dict[str, dict] = {}
    for method, by_task in table.items():
        for task, mets in by_task.items():
            primary = tasks[task].primary_metric
            d = dict(mets)
            if f"{primary}_ci" in d:
                d["ci"] = d[f"{primary}_ci"]
            out.setdefault(task, {})[method] = d
    return {t: {m: out[t][m] for m in sorted(out[t], key=lambda m: METHODS.index(m) if m in METHODS else 99)}
            for t in sorted(out)}
