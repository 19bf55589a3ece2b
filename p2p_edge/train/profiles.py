"""Per-user profiles for training and evaluation, built with the client's own profiler.

For each user of a per-user dataset the profile is built from the items BEFORE the user's last
`query_items` items (those are the user's query/target examples), so no target is ever in its own profile.

Step 1 (slow, resumable): LLM summaries with the local base model via llama.cpp, the same
`generate_summary` the client runs. Appended line by line to a JSONL cache.
Step 2 (fast): profile embeddings for the full profile and the ablations (summary-only, retrieval-only).

    python -m p2p_edge.train.profiles summaries --data FILE --query-items 2 --out runs/profiles/NAME.summaries.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..paths import PROMPTS_DIR
from ..profile import generate_summary, habits_line, item_habits, item_text, profile_text, profile_vectors, retrieve

VARIANTS = ("full", "summary_only", "retrieval_only")


def read_user_file(path: Path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def n_query_items(user: dict, query_items: int) -> int:
    """The user's last items reserved as queries: `query_items`, but never more than half the history."""
    return min(query_items, len(user["history"]) // 2)


def profile_items(user: dict, query_items: int) -> list[dict]:
    """The items a user's profile is built from: everything before the reserved query items."""
    h = user["history"]
    return h[: len(h) - n_query_items(user, query_items)]


def earlier_cuts(user: dict, query_items: int, extra_cuts: int) -> list[dict]:
    """Up to `extra_cuts` truncated copies of a user for training-data augmentation: copy j ends `j * q` items
    before the reserved queries (q = n_query_items), so its own last q items are its queries and its profile is
    everything before them; a copy is made only while its profile keeps at least q items. Each copy keeps the
    real user_id (its summary is cached under (user_id, its profile length))."""
    h, q = user["history"], n_query_items(user, query_items)
    out = []
    for j in range(1, extra_cuts + 1):
        end = len(h) - j * q
        if q == 0 or end - q < q:
            break
        out.append({**user, "history": h[:end]})
    return out


def subsample_users(user_ids: list[str], n: int, seed: int = 0) -> list[str]:
    """A deterministic subsample of n users (sha1 of seed:user_id order); all when n <= 0 or n >= len."""
    if n <= 0 or n >= len(user_ids):
        return sorted(user_ids)
    return sorted(sorted(user_ids, key=lambda u: hashlib.sha1(f"{seed}:{u}".encode()).hexdigest())[:n])


def prompt_sha() -> str:
    return hashlib.sha256((PROMPTS_DIR / "summary.txt").read_bytes()).hexdigest()[:16]


def load_summaries(path: Path) -> dict[tuple[str, int], str]:
    out = {}
    if Path(path).is_file():
        for line in open(path, encoding="utf-8"):
            try:
                d = json.loads(line)
            except ValueError:
                continue  # a torn last line from an interrupted run
            out[(d["user_id"], d["cutoff"])] = d["summary"]
    return out


def build_summaries(data: Path, query_items: int, out: Path, *, limit: int | None = None,
                    threads: int | None = None, user_ids: set[str] | None = None, extra_cuts: int = 0) -> int:
    """Generate missing summaries (also for each user's `extra_cuts` earlier cuts, see earlier_cuts); returns how
    many were generated. Safe to interrupt and re-run."""
    from ..runtime import LocalLLM

    done = load_summaries(out)
    llm = LocalLLM(n_threads=threads, n_ctx=2048)
    psha, n, t0 = prompt_sha(), 0, time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        for real in read_user_file(data):
            if user_ids is not None and real["user_id"] not in user_ids:
                continue
            for user in [real, *earlier_cuts(real, query_items, extra_cuts)]:
                items = profile_items(user, query_items)
                key = (user["user_id"], len(items))
                if key in done or not items:
                    continue
                s = generate_summary(llm, items)
                f.write(json.dumps({"user_id": key[0], "cutoff": key[1], "summary": s, "prompt_sha": psha,
                                    "base_sha256": llm.spec.sha256}, ensure_ascii=False) + "\n")
                f.flush()
                done[key] = s
                n += 1
                if n % 25 == 0:
                    print(f"{n} summaries, {(time.time() - t0) / n:.2f} s each", file=sys.stderr, flush=True)
                if limit and n >= limit:
                    return n
    return n


def embed_profiles(encoder, users: list[dict], query_items: int, summaries: dict, top_k: int = 2,
                   habits_weight: float = 0.0) -> dict[str, np.ndarray]:
    """{variant: (n_users, dim)} profile embeddings, rows aligned with `users` (the client's build_profile vectors)."""
    texts = {v: [] for v in VARIANTS}
    all_habits = []
    for user in users:
        items = profile_items(user, query_items)
        summ = summaries.get((user["user_id"], len(items)))
        vecs = encoder.encode([item_text(it) for it in items])
        q = encoder.encode([summ])[0] if summ else None
        top = [items[i] for i in retrieve(q, vecs, top_k)]
        recent = [items[i] for i in retrieve(None, vecs, top_k)]
        habits = item_habits(items)
        all_habits.append(habits)
        texts["full"].append(profile_text(summ, top, habits))
        texts["summary_only"].append(profile_text(summ, [], habits))
        texts["retrieval_only"].append(profile_text(None, recent, habits))
    if habits_weight <= 0:
        return {v: encoder.encode(t) for v, t in texts.items()}
    has = [h is not None for h in all_habits]
    hv = np.zeros((len(users), encoder.dim), np.float32)
    if any(has):
        hv[np.array(has)] = encoder.encode([habits_line(h) for h in all_habits if h is not None])
    return {v: profile_vectors(encoder.encode(t), hv, has, habits_weight) for v, t in texts.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build per-user training profiles")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summaries")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--query-items", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--limit", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--max-users", type=int, default=0, help="deterministic subsample of this many users (0 = all)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--extra-cuts", type=int, default=0,
                   help="also summarise each user's N earlier cuts (training augmentation, profiles.extra_cuts)")
    args = ap.parse_args(argv)
    ids = None
    if args.max_users:
        ids = set(subsample_users([u["user_id"] for u in read_user_file(args.data)], args.max_users, args.seed))
    n = build_summaries(args.data, args.query_items, args.out, limit=args.limit, threads=args.threads, user_ids=ids,
                        extra_cuts=args.extra_cuts)
    print(f"generated {n} summaries -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
