"""(d) soak: many synthetic users personalized in one process, their adapters swapped in and out of one model."""


from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from bench.robustness.common import TOPICS, peak_rss_mib, rss_mib, write_history




# --------------------------------------------------------------------------------------------------- (d) soak


def soak(n_users: int, n_swaps: int, *, workdir: Path, hypernet: Path | None = None, llm=None, threads: int = 1,
         revisit_every: int = 10, sample_every: int = 100, log=lambda s: None) -> dict:
    """Personalize `n_users` synthetic users with one Client (models loaded once), then `n_swaps` adapter swaps
    (load_adapter -> use -> last_logits -> free) in the same llama.cpp model. Every `revisit_every`-th swap brings
    back an earlier user and compares its logits with those recorded at its first load; every user's logits must
    differ from the base model's and from the previous user's. RSS is sampled every `sample_every` users/swaps."""
    from p2p_edge.personalize import Client

    t0 = time.perf_counter()
    rss = {"before_models": rss_mib()}
    client = Client(hypernet_path=hypernet, llm=llm, threads=threads)
    llm = client.llm
    rss["start"] = rss_mib()
    samples, errors = [("start", rss["start"])], []
    adapters = []
    t = time.perf_counter()
    for i in range(n_users):
        try:
            hist = write_history(workdir / f"u{i}.jsonl", 8, seed=i)
            names = sorted(TOPICS)
            res = client.personalize(hist, workdir / f"u{i}", summary=f"Writes mostly about {names[i % 8]} and "
                                     f"{names[(i * 3 + 1) % 8]}.")
            adapters.append(res.adapter)
        except Exception as e:  # counted, not fatal: the soak reports how many
            errors.append(f"personalize user {i}: {type(e).__name__}: {e}")
        if (i + 1) % sample_every == 0:
            samples.append((f"user {i + 1}", rss_mib()))
            log(f"  personalized {i + 1} users, RSS {samples[-1][1]:.0f} MiB, errors {len(errors)}")
    personalize_s = time.perf_counter() - t
    rss["after_personalize"] = rss_mib()

    tokens = llm.llm.tokenize(b"My review:", add_bos=True)
    llm.use(None)
    base = llm.last_logits(tokens)
    idx = np.random.default_rng(0).choice(base.size, 2048, replace=False)
    refs: dict[int, np.ndarray] = {}
    order: list[int] = []
    rng = random.Random(0)
    nxt, revisits, max_revisit_diff, mismatches, same_as_base = 0, 0, 0.0, 0, 0
    t = time.perf_counter()
    for j in range(n_swaps):
        if not adapters:
            break
        revisit = refs and (j + 1) % revisit_every == 0
        u = rng.choice(order) if revisit else nxt % len(adapters)
        if not revisit:
            nxt += 1
        try:
            ad = llm.load_adapter(adapters[u])
            try:
                llm.use(ad)
                logits = llm.last_logits(tokens)
            finally:
                llm.free(ad)
        except Exception as e:
            errors.append(f"swap {j} (user {u}): {type(e).__name__}: {e}")
            continue
        digest = logits[idx]
        if u in refs:
            revisits += revisit
            diff = float(np.abs(digest - refs[u]).max())
            max_revisit_diff = max(max_revisit_diff, diff)
            mismatches += diff > 1e-4
        else:
            refs[u] = digest
            order.append(u)
            same_as_base += float(np.abs(logits - base).max()) < 1e-3
        if (j + 1) % sample_every == 0:
            samples.append((f"swap {j + 1}", rss_mib()))
            log(f"  {j + 1} swaps, RSS {samples[-1][1]:.0f} MiB, errors {len(errors)}, mismatches {mismatches}")
    swaps_s = time.perf_counter() - t
    llm.use(None)
    rss["end"] = rss_mib()
    samples.append(("end", rss["end"]))

    firsts = [refs[u] for u in order]
    user_diffs = [float(np.abs(a - b).max()) for a, b in zip(firsts, firsts[1:])]
    warm = samples[1][1] if len(samples) > 2 else rss["start"]
    return {
        "users": n_users, "personalized": len(adapters), "swaps": n_swaps, "revisits_checked": revisits,
        "errors": len(errors), "error_examples": errors[:5],
        "logits_mismatches_on_revisit": mismatches, "max_abs_logit_diff_on_revisit": max_revisit_diff,
        "users_with_logits_equal_to_base": same_as_base,
        "consecutive_users_with_identical_logits": sum(d <= 1e-6 for d in user_diffs),
        "min_max_abs_logit_diff_between_users": min(user_diffs) if user_diffs else None,
        "distinct_user_logits": len({r.tobytes() for r in firsts}), "users_swapped_in": len(order),
        "rss_mib": {k: round(v, 1) for k, v in rss.items()}, "rss_peak_mib": round(peak_rss_mib(), 1),
        "rss_growth_mib": round(rss["end"] - rss["start"], 1), "rss_growth_after_warmup_mib": round(rss["end"] - warm, 1),
        "rss_samples": [(k, round(v, 1)) for k, v in samples],
        "personalize_ms_per_user": round(personalize_s * 1e3 / max(1, n_users), 1),
        "ms_per_swap": round(swaps_s * 1e3 / max(1, n_swaps), 1), "wall_s": round(time.perf_counter() - t0, 1),
        "hypernet": client.hypernet.card.id,
        "adapters_still_loaded": len(llm._loaded), "adapter_active_at_end": llm.active is not None,
    }
