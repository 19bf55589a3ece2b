"""Robustness on this machine, through the real `p2p-edge` CLI and the library: see bench/robustness/__init__.py."""


from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path



import bench.robustness
from bench.robustness.common import RESULTS, ROOT, cli_env, run_cli
from bench.robustness.faults import faults
from bench.robustness.http import bad_http_requests
from bench.robustness.inputs import bad_inputs, big_history
from bench.robustness.soak import soak


# ------------------------------------------------------------------------------------------------- reporting


def _md_table(headers: list[str], rows: list[list]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in esc])


def write_report(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robustness.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    s = res["soak"]
    lines = [
        "# Robustness", "",
        f"`python -m bench.robustness` on {m['cpu']} ({m['cores']} cores, another job running), "
        f"{m['date']}; every CLI run is a real `python -m p2p_edge.cli` process with `--threads 1`. "
        "Peak RSS of a child is its own `ru_maxrss` (wait4).", "",
        "## 1. Big histories through `p2p-edge personalize --no-summary`", "",
        "The history is streamed: memory holds the most recent 256 items (the retrieval window) plus one line; "
        "item, label and rating counts cover the whole file. So RSS does not grow with the file; time does "
        "(validation and hashing of every line).", "",
        _md_table(["items", "file MiB", "exit", "wall s", "read (validate) ms", "peak RSS MiB", "items counted",
                   "items kept"],
                  [[f"{r['items']:,}", r["file_mib"], r["rc"], r["wall_s"], r.get("read_ms", "-"), r["peak_rss_mib"],
                    f"{r.get('n_items', 0):,}", r.get("n_used", "-")] for r in res["big"]]), "",
        "## 2. Bad input through the real CLI", "",
        "`personalize` cases run with `--out` pointing at a dir holding an earlier adapter and profile; "
        "`chat` cases get `hello` on stdin. *Intact*: that earlier output is byte-identical afterwards.", "",
        _md_table(["bad input", "command", "exit", "what the user saw (last stderr line)", "stderr lines", "traceback",
                   "intact"],
                  [[r["case"], r["command"], r["rc"], f"`{r['saw']}`" + (f" — {r['note']}" if r.get("note") else ""),
                    r["stderr_lines"], "yes" if r["traceback"] else "no",
                    {True: "yes", False: "NO", None: "n/a"}[r["previous_output_intact"]]]
                   for r in res["bad_input"]]), "",
        "## 3. Faults", "",
        "Each run starts from a copy of a dir with a previous complete adapter (*previous*) and would write a "
        "different one (*new*, byte-identical to a reference run). *Temp files*: hidden `.adapter.gguf.*.tmp` "
        "left by a killed write; the next run into that dir deletes them. A signal that arrives after the outputs are "
        "written (while the interpreter exits) leaves the new adapter, with exit 0 or -2 (SIGINT at exit). Whatever the timing, no row may show "
        "a CORRUPT or MISSING adapter.", "",
        _md_table(["fault injected", "exit", "adapter.gguf afterwards", "profile.json parses", "temp files left",
                   "next run"],
                  [[r["fault"], r["rc"], r["adapter"], "yes" if r.get("profile_json_parses", True) else "NO",
                    r["temp_files_left"], r.get("next_run", "-")] for r in res["faults"]]), "",
        "## 4. Soak: one process, many users, one llama.cpp model", "",
        f"{s['users']:,} synthetic users (8 items each, a given one-line summary) personalized by one `Client` "
        f"(hypernet `{s['hypernet']}`, models loaded once), then {s['swaps']:,} adapter swaps "
        "(`load_adapter` → `use` → `last_logits` → `free`) in the same model; every 10th swap brings back an earlier "
        "user and compares 2,048 fixed logits (prompt `My review:`) with those recorded at that user's first load. "
        "*Min diff between users*: the smallest max-abs difference of those logits between consecutive users. "
        "RSS is this process's; *peak* is its high-water mark. A swap = validate + load the adapter, activate it, "
        "evaluate 4 tokens, free it (one thread: before `--threads` also bounded llama.cpp's prompt evaluation, it "
        "used both cores, and next to another busy process a swap took 0.2-3 s instead of ~25 ms).", "",
        _md_table(["users", "swaps", "users swapped in", "revisits checked", "errors", "logits mismatches on revisit",
                   "max abs diff on revisit", "users equal to base", "identical consecutive users",
                   "min diff between users"],
                  [[f"{s['users']:,}", f"{s['swaps']:,}", f"{s['users_swapped_in']:,}", s["revisits_checked"], s["errors"],
                    s["logits_mismatches_on_revisit"], f"{s['max_abs_logit_diff_on_revisit']:.2g}",
                    s["users_with_logits_equal_to_base"], s["consecutive_users_with_identical_logits"],
                    f"{s['min_max_abs_logit_diff_between_users']:.3g}"]]), "",
        _md_table(["RSS start MiB", "after personalize", "end", "peak (VmHWM)", "growth start→end",
                   "growth after the first sample", "ms / user", "ms / swap", "wall s"],
                  [[s["rss_mib"]["start"], s["rss_mib"]["after_personalize"], s["rss_mib"]["end"], s["rss_peak_mib"],
                    s["rss_growth_mib"], s["rss_growth_after_warmup_mib"], s["personalize_ms_per_user"],
                    s["ms_per_swap"], s["wall_s"]]]), "",
        "RSS samples (MiB): " + ", ".join(f"{k} {v}" for k, v in s["rss_samples"]), "",
    ]
    if res.get("http"):
        lines += [
            "## 5. Bad requests to `p2p-edge serve`", "",
            "The real server (`--api-key`, `--max-body-mb 1`) on a loopback port; every bad body carries a canary "
            "string that no answer and no log line may quote. *Healthy after*: `GET /health` answered 200 right "
            "after the bad request. `python -m bench.robustness --only-http` reruns this section alone (~5 s).", "",
            _md_table(["bad request", "status", "code", "OpenAI error shape", "message", "quotes the request",
                       "healthy after"],
                      [[r["case"], r["status"], r["code"], "yes" if r["openai_shape"] else "NO", f"`{r['message']}`",
                        "YES" if r["quotes_request"] else "no", "yes" if r["healthy_after"] else "NO"]
                       for r in res["http"]]), "",
        ]
    (out_dir / "robustness.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=bench.robustness.__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000, help="largest history (items)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--swaps", type=int, default=None, help="default: users + users/9 (each user once, plus a "
                    "revisit every 10th swap)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only-http", action="store_true", help="rerun only (e) bad HTTP requests, keeping the other "
                    "sections of OUT/robustness.json")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.only_http:
        res = json.loads((a.out / "robustness.json").read_text())
        with tempfile.TemporaryDirectory(prefix="p2p-robustness-") as tmp_s:
            res["http"] = bad_http_requests(Path(tmp_s), print)
        write_report(res, a.out)
        print(f"wrote {a.out / 'robustness.md'} and robustness.json")
        return
    if a.quick:
        a.items, a.users = 20_000, 30
    swaps = a.swaps or a.users + a.users // 9

    from p2p_edge.hypernet import DEFAULT_HYPERNET
    from p2p_edge.paths import encoder_dir

    encoder = encoder_dir()
    if not (encoder / "encoder.json").is_file():
        sys.exit(f"error: encoder not found at {encoder}: run `make demo` first (or set P2P_EDGE_ENCODER)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    import platform

    from bench.client_latency import cpu_model

    res = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "date": time.strftime("%Y-%m-%d"), "euid": os.geteuid()}}
    with tempfile.TemporaryDirectory(prefix="p2p-robustness-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["P2P_EDGE_HOME"] = str(tmp / "home")  # caches of this process (soak) and of the children
        os.environ["P2P_EDGE_ENCODER"] = str(encoder)
        env = cli_env(tmp / "home", encoder)
        from p2p_edge.base import base_spec as read_spec

        base_spec = read_spec()
        hyp = DEFAULT_HYPERNET
        log("(a) big histories")
        res["big"] = big_history(tmp, env, sorted({1000, min(100_000, a.items), a.items}), log)
        log("(b) bad input")
        prev = tmp / "previous"
        r = run_cli(["personalize", ROOT / "examples" / "history.jsonl", "--summary", "x y", "--threads", "1",
                     "--out", prev], env)
        assert r["rc"] == 0, r["stderr"]
        res["bad_input"] = bad_inputs(tmp, env, hyp, base_spec, log)
        log("(c) faults")
        res["faults"] = faults(tmp, env, hyp, base_spec, log)
        log(f"(d) soak: {a.users} users, {swaps} swaps")
        work = tmp / "soak"
        work.mkdir()
        res["soak"] = soak(a.users, swaps, workdir=work, threads=1, sample_every=max(1, a.users // 10), log=log)
        log(json.dumps({k: v for k, v in res["soak"].items() if k != "rss_samples"}))
        log("(e) bad HTTP requests")
        res["http"] = bad_http_requests(tmp, log)
        for p in (tmp / "bad").glob("unreadable*"):
            os.chmod(p, 0o600)
    write_report(res, a.out)
    log(f"wrote {a.out / 'robustness.md'} and robustness.json")


if __name__ == "__main__":
    main()
