"""PNG plots of latency.json and quality.json (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from p2p_edge.eval.metrics import LOWER_IS_BETTER  # noqa: E402

COLORS = {"p2p_warm": "#1b9e77", "p2p_cold": "#66a61e", "oppu": "#d95f02"}


def latency_plots(lat: dict, out: Path) -> list[Path]:
    rows = lat["scaling"]
    n = [r["n_users"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    per_user = {"P2P warm": lat["p2p_warm_ms_per_user"] / 1e3, "P2P cold": lat["p2p_cold_ms_per_user"] / 1e3,
                "OPPU": lat["oppu_ms_per_user"] / 1e3}
    bars = ax1.bar(list(per_user), list(per_user.values()), color=[COLORS["p2p_warm"], COLORS["p2p_cold"], COLORS["oppu"]])
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per user (log)")
    ax1.set_title("History → adapter loaded in llama.cpp")
    for b, v in zip(bars, per_user.values()):
        ax1.annotate(f"{v:.3g} s", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
    ax2.plot(n, [r["p2p_warm_total_s"] for r in rows], "o-", color=COLORS["p2p_warm"], label="P2P warm (measured)")
    ax2.plot(n, [r["p2p_cold_total_s"] for r in rows], "o-", color=COLORS["p2p_cold"], label="P2P cold (measured)")
    meas = [r for r in rows if not r["oppu_extrapolated"]]
    extra = [r for r in rows if r["oppu_extrapolated"]]
    if meas:
        ax2.plot([r["n_users"] for r in meas], [r["oppu_total_s"] for r in meas], "o-", color=COLORS["oppu"],
                 label="OPPU (measured)")
    if extra:
        pts = (meas[-1:] if meas else []) + extra
        ax2.plot([r["n_users"] for r in pts], [r["oppu_total_s"] for r in pts], "o--", color=COLORS["oppu"],
                 mfc="white", label=f"OPPU (extrapolated from {lat['oppu_n_users_timed']} users)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xticks(n, [str(x) for x in n])
    ax2.set_xlabel("users")
    ax2.set_ylabel("total seconds (log)")
    ax2.set_title("Time to personalize n users")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{lat['machine']['cpu']}, {lat['machine']['cores']} cores, {lat['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def quality_plots(quality: dict, tasks: dict, out: Path) -> list[Path]:
    paths = []
    for split, by_task in quality.items():
        names = sorted(by_task)
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.4), squeeze=False)
        for ax, task in zip(axes[0], names):
            methods = list(by_task[task])
            metric = tasks[task].primary_metric
            vals = [by_task[task][m].get(metric, float("nan")) for m in methods]
            cis = [by_task[task][m].get("ci", [v, v]) for m, v in zip(methods, vals)]
            err = [[v - lo for v, (lo, _) in zip(vals, cis)], [hi - v for v, (_, hi) in zip(vals, cis)]]
            colors = ["#1b9e77" if m == "p2p" else "#7570b3" if m.startswith("p2p") else "#999999" for m in methods]
            ax.bar(range(len(methods)), vals, yerr=err, color=colors, capsize=3)
            ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
            better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
            ax.set_title(f"{task}: {metric} ({better})", fontsize=9)
        fig.suptitle(f"{split} split: held-out users, 95% bootstrap CI over users", fontsize=10)
        fig.tight_layout()
        path = out / f"quality_{split}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
