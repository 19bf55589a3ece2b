"""Client latency on this machine: per-stage time of `personalize`, adapter size, generation speed with/without
the adapter. Everything measured in one process, side by side.

    python -m bench.client_latency [--history examples/history.jsonl] [--items 100] [--repeats 5]

Writes bench/results/client_latency.json and .md. The history is the example file, extended by repeating its
items to --items items (a synthetic size for timing; content does not matter for latency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_history(src: Path, n: int, dest: Path) -> Path:
    lines = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    with open(dest, "w", encoding="utf-8") as f:
        for i in range(n):
            item = dict(lines[i % len(lines)])
            item["id"] = f"x{i:05d}"
            item["text"] = f"{item['text']} (#{i})"
            f.write(json.dumps(item) + "\n")
    return dest


def tokens_per_second(llm, adapter, prompt: str, n: int = 64, repeats: int = 3) -> float:
    """Decode speed over exactly n tokens: end-of-turn/EOS are banned so an adapter that answers tersely is not
    mistaken for a slow one, and the prompt is evaluated before the clock starts."""
    llm.use(adapter)
    ban = {llm.llm.token_eos(): -1e9}
    for t in llm.llm.tokenize(b"<|im_end|>", add_bos=False, special=True):
        ban[t] = -1e9
    speeds = []
    for _ in range(repeats):
        llm.llm.reset()
        stream = llm.llm.create_completion(prompt, max_tokens=n + 1, temperature=0.0, logit_bias=ban, stream=True)
        next(stream)  # first token: includes the prompt's evaluation
        t, k = time.perf_counter(), 0
        for _ in stream:
            k += 1
        speeds.append(k / (time.perf_counter() - t))
    return statistics.median(speeds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=Path, default=Path("examples/history.jsonl"))
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hypernet", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from p2p_edge.paths import encoder_dir
    from p2p_edge.personalize import Client

    tmp = Path(tempfile.mkdtemp(prefix="p2p-lat-"))
    os.environ["P2P_EDGE_ENCODER"] = str(encoder_dir())  # the installed encoder, found before the home moves
    os.environ["P2P_EDGE_HOME"] = str(tmp / "home")  # fresh caches: the first run is cold
    hist = make_history(args.history, args.items, tmp / "history.jsonl")
    t = time.perf_counter()
    client = Client(hypernet_path=args.hypernet, threads=args.threads)
    models_ms = (time.perf_counter() - t) * 1e3

    cold = client.personalize(hist, tmp / "out")          # generates the summary, encodes every item
    warm_runs = [client.personalize(hist, tmp / "out") for _ in range(args.repeats)]  # cached summary + item vectors
    stages = list(warm_runs[0].timings_ms)
    warm = {k: statistics.median(r.timings_ms[k] for r in warm_runs) for k in stages}
    # adapter load into llama.cpp (no base reload), measured on its own
    loads = []
    for _ in range(args.repeats):
        ad = client.llm.load_adapter(cold.adapter)
        loads.append(ad.load_ms)
        client.llm.free(ad)

    prompt = "<|im_start|>user\nWrite a short review of a capo.<|im_end|>\n<|im_start|>assistant\n"
    ad = client.llm.load_adapter(cold.adapter)
    base_tps = tokens_per_second(client.llm, None, prompt)
    lora_tps = tokens_per_second(client.llm, ad, prompt)
    base_tps2 = tokens_per_second(client.llm, None, prompt)  # again, to see the noise
    client.llm.free(ad)

    import resource

    res = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "python": platform.python_version()},
        "history_items": args.items,
        "hypernet": client.hypernet.card.id,
        "models_load_ms": round(models_ms, 1),
        "cold_ms": {k: round(v, 2) for k, v in cold.timings_ms.items()},
        "warm_ms_median": {k: round(v, 2) for k, v in warm.items()},
        "warm_hypernet_write_load_ms": round(warm["hypernet"] + warm["write"] + warm["load"], 2),
        "adapter_load_ms_median": round(statistics.median(loads), 3),
        "adapter_bytes": cold.adapter_bytes,
        "tokens_per_s": {"base": round(base_tps, 1), "adapter": round(lora_tps, 1), "base_again": round(base_tps2, 1)},
        "adapter_overhead_pct": round(100 * (1 - lora_tps / ((base_tps + base_tps2) / 2)), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeats": args.repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client_latency.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [f"# Client latency ({res['machine']['cpu']}, {res['machine']['cores']} cores, {args.threads} threads)", "",
          f"`python -m bench.client_latency --items {args.items} --repeats {args.repeats}`; history of {args.items} items; "
          f"hypernet `{res['hypernet']}`. Models loaded once per process in {res['models_load_ms']:.0f} ms.", "",
          "| stage | cold (summary generated) ms | warm (summary + item vectors cached), median ms |", "|---|---:|---:|"]
    for k in stages:
        md.append(f"| {k} | {res['cold_ms'][k]:.1f} | {res['warm_ms_median'][k]:.1f} |")
    md += ["", f"- hypernet + write + load (warm): **{res['warm_hypernet_write_load_ms']:.1f} ms**; adapter load alone "
           f"{res['adapter_load_ms_median']:.2f} ms; adapter file {res['adapter_bytes'] / 1e6:.2f} MB (f16)",
           f"- decode speed, 64 tokens greedy after the prompt: base {base_tps:.1f} tok/s, with adapter {lora_tps:.1f} tok/s, base again "
           f"{base_tps2:.1f} tok/s → adapter overhead {res['adapter_overhead_pct']:.1f}% (a quick reading, median of 3 "
           "runs each: the two base readings show its noise; `python -m bench`'s REPORT.md interleaves 15 runs)",
           f"- peak RSS of the client process: {res['peak_rss_mb']:.0f} MB", ""]
    (args.out / "client_latency.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
