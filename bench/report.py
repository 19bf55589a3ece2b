"""bench/results/REPORT.md from latency.json and quality.json: tables, targets met or not, plain words."""

from __future__ import annotations

from p2p_edge.eval.stats import VERDICT_WORDS, answer_changes_cells, detectable, verdict


def _ci(d: dict, m: str) -> str:
    if m not in d:
        return "–"
    lo, hi = d.get(f"{m}_ci", [d[m], d[m]])
    return f"{d[m]:.3f} [{lo:.3f}, {hi:.3f}]"


def _verdict(diff: dict, metric: str) -> str:
    """Paired P2P - other on the primary metric, in words for the report."""
    return VERDICT_WORDS[verdict(diff, metric)]


def latency_section(lat: dict) -> list[str]:
    m = lat["machine"]
    o = lat["oppu"]
    lines = [
        "## Latency: history → adapter loaded in llama.cpp", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads for every method. P2P timed on "
        f"{lat['n_users']} users (cold: summary generated; warm: the same history again, its summary and the vectors of its items, summary and profile text cached). OPPU timed on "
        f"{lat['oppu_n_users_timed']} of the same users: {o['cfg']['steps']} AdamW steps × batch {o['cfg']['batch_size']} "
        f"(lr {o['cfg']['lr']}, rank {o['cfg']['rank']}, q_proj+v_proj, max_len {o['cfg']['max_len']}) on the user's "
        f"history items as task examples, then GGUF write and load; its torch base model loads once "
        f"({o['model_load_s']:.1f} s, not counted per user). The client's models load once per process "
        + (f"({lat['once_per_process_ms']['models_load'] / 1e3:.1f} s, plus {lat['once_per_process_ms']['llm_first_generation'] / 1e3:.1f} s "
           "for llama.cpp's first generation), also not counted per user." if "once_per_process_ms" in lat else "(not counted per user)."), "",
        "| method | ms per user (mean) | speedup of P2P (OPPU mean / P2P mean) |", "|---|---:|---:|",
        f"| OPPU (per-user LoRA fine-tune) | {lat['oppu_ms_per_user']:.0f} | |",
        f"| P2P cold | {lat['p2p_cold_ms_per_user']:.1f} | **{lat['speedup_cold']:.1f}x** |",
        f"| P2P warm | {lat['p2p_warm_ms_per_user']:.1f} | **{lat['speedup_warm']:.0f}x** |", "",
        "P2P stages, mean ms per user:", "",
        "| stage | cold | warm |", "|---|---:|---:|",
    ]
    for k in lat["p2p_stages_ms"]["cold"]:
        lines.append(f"| {k} | {lat['p2p_stages_ms']['cold'][k]:.1f} | {lat['p2p_stages_ms']['warm'][k]:.1f} |")
    lines += ["", "Total time for n users (OPPU beyond the timed users = mean × n, marked *extrapolated*):", "",
              "| users | P2P warm s | P2P cold s | OPPU s |", "|---:|---:|---:|---:|"]
    for r in lat["scaling"]:
        ex = " *extrapolated*" if r["oppu_extrapolated"] else ""
        lines.append(f"| {r['n_users']} | {r['p2p_warm_total_s']:.2f} | {r['p2p_cold_total_s']:.1f} | {r['oppu_total_s']:.0f}{ex} |")
    t = lat["tokens_per_s"]
    pairs = f"median of {lat['decode_pairs']} interleaved base/adapter runs" if "decode_pairs" in lat else "median of 3 runs each"
    lines += ["", f"Decode speed (64 tokens, EOS banned, {pairs}): base {t['base']:.1f} tok/s, with a P2P adapter {t['adapter']:.1f} tok/s "
              f"→ overhead **{lat['adapter_overhead_pct']:.1f}%**. Peak RSS of the client (before torch is imported): "
              f"{lat['client_peak_rss_mb']:.0f} MB; adapter file {lat['adapter_bytes'] / 1e6:.2f} MB.", "",
              "Targets: warm speedup ≥ 1000x: " + ("met" if lat["speedup_warm"] >= 1000 else "**not met**")
              + "; cold speedup ≥ 20x: " + ("met" if lat["speedup_cold"] >= 20 else "**not met**")
              + "; adapter overhead < 10%: " + ("met" if lat["adapter_overhead_pct"] < 10 else "**not met**") + ".", "",
              "![latency](latency.png)", ""]
    return lines


def oppu_text(meta: dict) -> str:
    o, k = meta.get("oppu"), meta.get("oppu_test_users_per_split_dataset", 0)
    if not o:
        return ""
    who = f"on {k} test users per split and dataset (its row and its paired CI are over those users)" if k else "on every test user"
    return (f"`oppu` = a per-user LoRA ({o['steps']} AdamW steps × batch {o['batch_size']}, lr {o['lr']}, the user's "
            f"{o['max_items']} most recent history items as task examples), {who}.")


def query_text(meta: dict) -> str:
    n = meta["queries_per_user_task"]
    if meta.get("query_limit_kinds"):  # runs since the limit applies to free-text tasks only
        return (f"each test user's {n} most recent reserved queries per generation task and all reserved queries of "
                "the other tasks; `p2p_shuffled` = the hypernet fed another test user's profile from the same dataset")
    return f"each test user's {n} most recent reserved queries per task"


def quality_section(q: dict) -> list[str]:
    meta = q["meta"]
    lines = ["## Quality on held-out users", "",
             f"Hypernet `{meta['hypernet']}`; {query_text(meta)}; metrics pooled within users, [95% CI] resamples "
             "users (1000 draws). "
             "`prior` = the best non-LLM user rule, chosen on validation users. `rag` = the top-"
             f"{meta['top_k']} profile items most similar to the query in the prompt; `pag` = habits + LLM summary + "
             "the same items in the prompt (P2P's profile as text). " + oppu_text(meta), ""]
    for split, by_task in q["quality"].items():
        lines += [f"### {split} split ({meta['n_test_users'][split]} test users)", ""]
        for task, by_method in by_task.items():
            metrics = [k for k in by_method.get("p2p", next(iter(by_method.values())))
                       if not k.endswith("_ci") and k not in ("ci", "n_users", "n_examples", "parse_rate")]
            n = by_method.get("p2p", {})
            lines += [f"**{task}** ({n.get('n_users', '?')} users, {n.get('n_examples', '?')} queries)", "",
                      "| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
            for m, d in by_method.items():
                name = f"**{m}**" if m == "p2p" else m
                lines.append(f"| {name} | " + " | ".join(_ci(d, k) for k in metrics) + " |")
            lines.append("")
        lines += ["Paired differences on each task's primary metric, P2P minus each method. *Detectable*: the smallest "
                  "true difference these users would show clear of 0 in 80% of reruns (from the CI's width).", "",
                  "| task | comparison | difference [95% CI] | verdict | detectable |", "|---|---|---:|---|---:|"]
        for task, comps in q["paired"][split].items():
            metric = meta["primary_metric"][task]
            for comp, d in comps.items():
                det = f"{detectable(d[f'{metric}_ci']):.3f}" if f"{metric}_ci" in d else "–"
                lines.append(f"| {task} | {comp} ({metric}) | {_ci(d, metric)} | {_verdict(d, metric)} | {det} |")
        ch = q.get("answer_changes", {}).get(split)
        if ch:
            lines += ["", "Profile influence: queries whose answer changes when P2P gets another held-out user's profile "
                      "(rating / classification: how many of those each got right, own / shuffled profile):", "",
                      "| task | answers changed | right: own / shuffled |", "|---|---:|---:|"]
            lines += [f"| {task} | " + " | ".join(answer_changes_cells(d)) + " |" for task, d in ch.items()]
        lines += ["", f"![quality {split}](quality_{split}.png)", ""]
    return lines


def _provenance(name: str, d: dict | None) -> str:
    r = (d or {}).get("run")
    if not r:
        return ""
    sha = f", hypernet sha256 {r['hypernet_sha256'][:12]}" if r.get("hypernet_sha256") else ""
    return f"- {name}: `{r['command']}`, {r['wall_s'] / 60:.1f} min, {r['date']}, commit {r['commit']}{sha}"


def render(lat: dict | None, q: dict | None, run: dict) -> str:
    lines = ["# p2p-edge benchmark: P2P vs per-user fine-tuning (OPPU) and baselines", ""]
    if run.get("quick"):
        lines += ["**Quick mode: few users and steps, a smoke run; not the committed results.**", ""]
    prov = [p for p in (_provenance("Latency", lat), _provenance("Quality", q)) if p]
    if prov:
        lines += ["Produced by:", ""] + prov + [""]
    if lat:
        lines += latency_section(lat)
    if q:
        lines += quality_section(q)
    if run.get("findings"):
        lines += ["## Findings", ""] + [f"- {f}" for f in run["findings"]] + [""]
    return "\n".join(lines)
