"""Load on the real `p2p-edge serve` over loopback HTTP, through the `openai` client.

    python -m bench.serve [--concurrency 1 8 32] [--requests 3] [--max-tokens 32] [--register 1000] [--lru 64]
                          [--threads 2] [--out bench/results/serve] [--quick]

One server process (the shipped hypernet, the bundled SmolLM2, `--max-loaded-adapters LRU`) on a free loopback port;
synthetic users (two topics each, so their adapters differ) are registered over POST /v1/adapters with a given
summary (no LLM summary: registration measures the hypernet path, not the 135M model writing). For each concurrency
C, C clients stream `--requests` greedy chat replies each, every client its own user's adapter (`p2p/<user>`); the
same load on the base model (no adapter) is the reference. Reported: requests/s, generated tokens/s, time to first
token p50/p95, errors (must be 0), the server's adapter swap cost (its /metrics), then the server's RSS after
registering `--register` users and chatting with a sample of them through an LRU of `--lru`. Bounded: every request
has a timeout, the run a --deadline. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.output import run_and_write
from bench.robustness.common import TOPICS as ROBUSTNESS_TOPICS
from p2p_edge.errors import P2PError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Recommend me something to buy.", "What should I do this weekend?", "Write one sentence about music.",
           "Give me a tip for my hobby.", "What is a good gift for a friend?", "Describe a perfect morning."]
# the robustness bench's synthetic topics (six of them: the users measured in bench/results/serve.md)
TOPICS = {k: ROBUSTNESS_TOPICS[k] for k in ("music", "baking", "travel", "tech", "garden", "books")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_items(i: int, n: int = 12) -> list[dict]:
    rng = random.Random(i)
    topics = rng.sample(sorted(TOPICS), 2)
    items = []
    for k in range(n):
        words = rng.sample(TOPICS[topics[k % 2]], 5)
        items.append({"text": f"Bought a {words[0]} for my {words[1]}: the {words[2]} and {words[3]} are "
                              f"{rng.choice(['great', 'fine', 'poor'])}, {words[4]} too.",
                      "rating": rng.randint(1, 5), "title": f"{words[0]} review"})
    return items


class Server:
    def __init__(self, home: Path, lru: int, threads: int, log_path: Path, extra_args: list[str] | None = None):
        from p2p_edge.paths import encoder_dir

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, P2P_EDGE_HOME=str(home), P2P_EDGE_ENCODER=str(encoder_dir()), HF_HUB_OFFLINE="1")
        env.pop("P2P_EDGE_API_KEY", None)
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2p_edge.cli", "serve", "--port", str(self.port), "--threads", str(threads),
             "--max-loaded-adapters", str(lru), *(extra_args or [])], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise P2PError(f"server exited with {self.proc.returncode} (its log: {self.log.name})")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise P2PError(f"server did not start within {timeout:.0f} s")

    def rss_mib(self) -> float:
        import psutil

        return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)

    def metrics(self) -> dict[str, float]:
        import httpx

        out = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def register(url: str, users: list[str], offset: int = 0) -> list[float]:
    """POST /v1/adapters for each user (given summary); -> the server's total personalize ms per user."""
    import httpx

    ms = []
    with httpx.Client(timeout=300) as http:
        for i, u in enumerate(users):
            r = http.post(f"{url}/v1/adapters", json={"user": u, "history": synthetic_items(offset + i),
                                                      "summary": "Writes short reviews of things they bought."})
            r.raise_for_status()
            ms.append(float(r.json()["timings_ms"]["total"]))
    return ms


def one_stream(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, n, text = None, 0, []
    stream = client.chat.completions.create(model=model, stream=True, max_tokens=max_tokens, temperature=0.0,
                                            messages=[{"role": "user", "content": prompt}])
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            if first is None:
                first = time.perf_counter() - t0
            n += 1
            text.append(piece)
    return {"ttft_s": first if first is not None else time.perf_counter() - t0, "total_s": time.perf_counter() - t0,
            "tokens": n, "empty": not "".join(text).strip()}


def load(url: str, models: list[str], requests: int, max_tokens: int, timeout: float) -> dict:
    """len(models) concurrent clients, client i streaming `requests` replies from models[i]."""
    from openai import OpenAI

    rows, errors, lock = [], [], threading.Lock()

    def worker(i: int, model: str):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=timeout, max_retries=0)
        for k in range(requests):
            try:
                r = one_stream(client, model, PROMPTS[(i + k) % len(PROMPTS)], max_tokens)
                with lock:
                    rows.append(r)
            except Exception as e:  # counted, never raised: the table says how many
                with lock:
                    errors.append(type(e).__name__)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft_s"] for r in rows) or [float("nan")]
    q = statistics.quantiles(ttft, n=20) if len(ttft) >= 2 else [ttft[0]] * 19
    return {"clients": len(models), "requests": len(rows) + len(errors), "errors": len(errors),
            "error_types": sorted(set(errors)), "empty_replies": sum(r["empty"] for r in rows),
            "wall_s": round(wall, 2), "requests_per_s": round(len(rows) / wall, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in rows) / wall, 1),
            "ttft_p50_s": round(statistics.median(ttft), 3), "ttft_p95_s": round(q[18], 3)}


def served_models() -> dict:
    """What the server serves by default: the shipped hypernet's id and whether replies carry the token prior (the
    numbers move with both: reply length, decode speed)."""
    from p2p_edge.hypernet import DEFAULT_HYPERNET, load_card
    from p2p_edge.token_prior import DEFAULT_POPULATION, Population

    pop = Population.load(DEFAULT_POPULATION) if DEFAULT_POPULATION.is_file() else None
    return {"hypernet": load_card(DEFAULT_HYPERNET).id,
            "token_prior": f"on (beta {pop.beta:g})" if pop is not None and pop.default_on else "off"}


def run(args, log) -> dict:
    import httpx

    from bench.client_latency import cpu_model

    deadline = time.time() + args.deadline
    tmp = Path(tempfile.mkdtemp(prefix="p2p-bench-serve-"))
    res = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "threads": args.threads, "lru": args.lru,
           "max_tokens": args.max_tokens, "requests_per_client": args.requests, **served_models(), "load": []}
    server = Server(tmp / "home", args.lru, args.threads, tmp / "server.log")
    try:
        server.wait_ready()
        res["rss_mib_started"] = server.rss_mib()
        base_id = json.loads(httpx.get(f"{server.url}/v1/models", timeout=30).text)["data"][0]["id"]
        n_users = max(args.concurrency)
        users = [f"u{i:04d}" for i in range(n_users)]
        reg_ms = register(server.url, users)
        log(f"registered {n_users} users (median {statistics.median(reg_ms):.0f} ms each)")
        for c in args.concurrency:
            for kind, models in (("adapters", [f"p2p/{u}" for u in users[:c]]), ("base", [base_id] * c)):
                if time.time() > deadline:
                    raise P2PError(f"--deadline {args.deadline:.0f} s passed")
                before = server.metrics()
                row = {"kind": kind, **load(server.url, models, args.requests, args.max_tokens, args.timeout)}
                after = server.metrics()
                swaps = after.get("p2p_edge_adapter_swap_ms_count", 0) - before.get("p2p_edge_adapter_swap_ms_count", 0)
                swap_ms = after.get("p2p_edge_adapter_swap_ms_sum", 0) - before.get("p2p_edge_adapter_swap_ms_sum", 0)
                row["swaps"] = int(swaps)
                row["swap_ms_mean"] = round(swap_ms / swaps, 2) if swaps else None
                res["load"].append(row)
                log(f"{kind} x{c}: {row['requests_per_s']} req/s, {row['tokens_per_s']} tok/s, "
                    f"ttft p50 {row['ttft_p50_s']} s, errors {row['errors']}")
        # many registered users through a small LRU: memory stays bounded by the LRU, not by the user count
        more = [f"r{i:05d}" for i in range(args.register)]
        t0 = time.time()
        reg_ms += register(server.url, more, offset=n_users)
        res["register"] = {"users": n_users + len(more), "wall_s": round(time.time() - t0, 1),
                           "personalize_ms_p50": round(statistics.median(reg_ms), 1)}
        sample = random.Random(0).sample(more, min(len(more), args.lru * 2))
        row = load(server.url, [f"p2p/{u}" for u in sample], 1, 8, args.timeout)
        res["rss_after_register"] = {"rss_mib": server.rss_mib(), "chatted_users": len(sample), "errors": row["errors"],
                                     "metrics": {k.removeprefix("p2p_edge_"): v for k, v in server.metrics().items()
                                                 if "adapter_cache" in k or "loaded" in k}}
        log(f"RSS after {res['register']['users']} users: {res['rss_after_register']['rss_mib']} MiB")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def render(r: dict, cmd: str) -> str:
    lines = ["# Serving personal adapters over HTTP", "", f"`{cmd}`", "",
             f"Hypernet `{r.get('hypernet', '?')}`, token prior {r.get('token_prior', '?')} (each registered user's "
             "adapter and prior, as `p2p-edge serve` does by default). "
             f"{r['machine']['cpu']} ({r['machine']['cores']} cores), server threads {r['threads']}, LRU of "
             f"{r['lru']} loaded adapters; each client streams {r['requests_per_client']} greedy replies of up to "
             f"{r['max_tokens']} tokens through the `openai` client over loopback HTTP, every client its own user's "
             "adapter (`adapters`) or the base model (`base`, the reference). One llama.cpp model serves requests in "
             "turn, so requests/s is flat in the number of clients and time to first token grows with the queue. "
             "Requests/s depends on reply length: compare tokens/reply before reading req/s across rows.", "",
             "| clients | model | requests | errors | req/s | tokens/s | tokens/reply | TTFT p50 (s) | TTFT p95 (s) | "
             "adapter swaps | swap ms (mean) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["load"]:
        per_reply = row["tokens_per_s"] * row["wall_s"] / max(1, row["requests"] - row["errors"])
        lines.append(f"| {row['clients']} | {row['kind']} | {row['requests']} | {row['errors']} | "
                     f"{row['requests_per_s']} | {row['tokens_per_s']} | {per_reply:.1f} | {row['ttft_p50_s']} | "
                     f"{row['ttft_p95_s']} | "
                     f"{row['swaps']} | {row['swap_ms_mean'] if row['swap_ms_mean'] is not None else '–'} |")
    reg, rss = r["register"], r["rss_after_register"]
    lines += ["", f"Registered users: {reg['users']} (POST /v1/adapters, personalize p50 {reg['personalize_ms_p50']} ms "
              f"with a given summary). Server RSS: {r['rss_mib_started']} MiB at start, {rss['rss_mib']} MiB after "
              f"registering them and chatting with {rss['chatted_users']} of them through the LRU of {r['lru']} "
              f"({rss['errors']} errors; cache: " + ", ".join(f"{k} {v:g}" for k, v in rss["metrics"].items()) + ").",
              "", f"Wall time {r.get('wall_s', '?')} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=3, help="replies per client at each concurrency")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--register", type=int, default=1000, help="users registered for the memory reading")
    ap.add_argument("--lru", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600, help="per request (s)")
    ap.add_argument("--deadline", type=float, default=3600, help="the whole run (s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 and 4 clients, 40 users, LRU 8")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve")
    args = ap.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.register, args.lru, args.max_tokens = [1, 4], 1, 40, 8, 8
    return run_and_write("bench.serve", run, render, args, argv)


if __name__ == "__main__":
    sys.exit(main())
