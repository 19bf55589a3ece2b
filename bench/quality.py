"""Quality on held-out users of both splits: every method answers the same queries through llama.cpp.

Methods (keys of quality.json): base, prior, rag, pag, mt_lora, oppu, p2p, p2p_shuffled, p2p_summary_only,
p2p_retrieval_only. Metrics are pooled within users; [95% CI] resample users; paired CIs for p2p minus each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from p2p_edge.eval.answer import hypernet_adapters
from p2p_edge.eval.stats import to_json
from p2p_edge.eval.suite import Method, evaluate
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
    prompts = ProfilePrompts(corpus, encoder, top_k)
    spec = llm.spec
    none = lambda u, t: None  # noqa: E731  (the base model)
    methods = [Method("base", none), Method("rag", none, prompts.rag), Method("pag", none, prompts.pag),
               Method("p2p", hypernet_adapters(hypernet, spec, corpus.emb["full"], index)),
               Method("p2p_summary_only", hypernet_adapters(hypernet, spec, corpus.emb["summary_only"], index)),
               Method("p2p_retrieval_only", hypernet_adapters(hypernet, spec, corpus.emb["retrieval_only"], index))]
    if mt_lora is not None:
        methods.append(Method("mt_lora", lambda u, t: mt_lora))
    if oppu_adapter_for is not None:
        methods.append(Method("oppu", oppu_adapter_for, users=oppu_uids))
    scores, timings = evaluate(llm, corpus, tests, methods, hypernet=hypernet,
                               emb=corpus.emb["full"], compare=METHODS, log=lambda m: log(f"quality: {m}"))
    quality, paired, changes = {}, {}, {}
    for split, s in scores.items():
        quality[split] = reshape(to_json(s.table), corpus.tasks)
        paired[split] = reshape(to_json(s.diffs), corpus.tasks)
        if s.changes:
            changes[split] = s.changes
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
