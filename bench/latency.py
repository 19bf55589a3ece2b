"""Latency: history -> usable adapter, P2P (cold and warm, per stage) vs OPPU (a per-user LoRA fine-tune).

Both methods run in this one process on the same users' histories, one after the other, on the same machine and
thread count. P2P is timed on every user; OPPU (seconds per user) on a sample, and the report says so where
totals for more users are extrapolated from it.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

STAGES = ("read", "summary", "encode", "hypernet", "write", "load", "prior")


def write_history(items: list[dict], path: Path) -> Path:
    """A user's profile items as the client's history.jsonl (the same schema, one item per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return path


def p2p_latency(client, corpus, uids: list[str], tmp: Path, log=print) -> dict:
    """Personalize every user twice: cold (summary generated, vectors encoded) then warm (the same history again:
    summary and every vector cached).
    The client must have been created on a fresh data/cache dir so the first pass is really cold."""
    hist = {u: write_history(corpus.profiles[u]["items"], tmp / f"h{i}.jsonl") for i, u in enumerate(uids)}
    runs = {}
    for phase in ("cold", "warm"):
        rows = []
        for i, u in enumerate(uids):
            r = client.personalize(hist[u], tmp / "out" / str(i))
            rows.append({k: round(r.timings_ms.get(k, 0.0), 3) for k in (*STAGES, "total")})
        runs[phase] = rows
        log(f"latency: p2p {phase} on {len(uids)} users, median {statistics.median(r['total'] for r in rows):.0f} ms/user")
    return {
        "n_users": len(uids),
        "history_items": [len(corpus.profiles[u]["items"]) for u in uids],
        "adapter_bytes": r.adapter_bytes,
        "per_user_ms": runs,
        **{f"{phase}_stage_mean_ms": {k: round(statistics.fmean(row[k] for row in rows), 2) for k in (*STAGES, "total")}
           for phase, rows in runs.items()},
    }


def oppu_latency(trainer, llm, corpus, uids: list[str], tmp: Path, log=print) -> dict:
    """History -> OPPU adapter file loaded in llama.cpp, per user (examples + train + extract + write + load)."""
    from .oppu import user_examples

    rows = []
    for i, u in enumerate(uids):
        t = time.perf_counter()
        exs = user_examples(corpus, u, max_items=trainer.cfg.max_items)
        prep_ms = (time.perf_counter() - t) * 1e3
        path, tm = trainer.adapter(exs, tmp / f"oppu{i}.gguf", llm.spec)
        ad = llm.load_adapter(path)
        llm.free(ad)
        total = (time.perf_counter() - t) * 1e3
        rows.append({"examples": len(exs), "prep_ms": round(prep_ms, 2), **{k: round(v, 1) for k, v in tm.items()},
                     "load_ms": round(ad.load_ms, 2), "total_ms": round(total, 1)})
        log(f"latency: oppu user {i + 1}/{len(uids)}: {total / 1e3:.1f} s ({len(exs)} examples)")
    return {"n_users": len(uids), "per_user": rows,
            "mean_ms": round(statistics.fmean(r["total_ms"] for r in rows), 1)}


def scaling(p2p: dict, oppu: dict, counts: tuple[int, ...]) -> list[dict]:
    """Total time to personalize the first n users, for each n: measured for P2P, measured or extrapolated
    (n x mean per user) for OPPU."""
    out = []
    for n in counts:
        if n > p2p["n_users"]:
            continue
        cold = sum(r["total"] for r in p2p["per_user_ms"]["cold"][:n])
        warm = sum(r["total"] for r in p2p["per_user_ms"]["warm"][:n])
        measured = oppu["n_users"] >= n
        o = sum(r["total_ms"] for r in oppu["per_user"][:n]) if measured else oppu["mean_ms"] * n
        out.append({"n_users": n, "p2p_cold_total_s": round(cold / 1e3, 3), "p2p_warm_total_s": round(warm / 1e3, 3),
                    "oppu_total_s": round(o / 1e3, 1), "oppu_extrapolated": not measured})
    return out


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def client_only_rss() -> float:
    """Peak RSS so far; called before torch is imported, so it is the client's footprint (plus the eval corpus)."""
    assert "torch" not in sys.modules, "measure the client's RSS before the training stack is imported"
    return peak_rss_mb()
