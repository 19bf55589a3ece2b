"""bench.serve end to end at toy size: the real server, the shipped hypernet, the openai client, 0 errors."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")


def test_a_small_serve_bench_has_no_errors_and_renders(use_encoder, tmp_path):
    from bench.serve import render, run

    args = argparse.Namespace(concurrency=[1, 3], requests=1, max_tokens=4, register=6, lru=2, threads=2,
                              timeout=300, deadline=900, out=tmp_path / "serve")
    r = run(args, log=lambda m: None)
    assert [(row["clients"], row["kind"]) for row in r["load"]] == [(1, "adapters"), (1, "base"), (3, "adapters"),
                                                                     (3, "base")]
    assert all(row["errors"] == 0 and row["requests"] == row["clients"] and row["tokens_per_s"] > 0
               for row in r["load"])
    three = r["load"][2]
    assert three["swaps"] >= 2   # three users' adapters through one model: it switched between them
    assert r["register"]["users"] == 9 and r["rss_after_register"]["errors"] == 0
    assert r["rss_after_register"]["metrics"]["adapters_loaded"] <= 2   # the LRU bound held
    md = render(r, "python -m bench.serve --quick")
    assert "| 3 | adapters | 3 | 0 |" in md and "MiB" in md
    from p2p_edge.hypernet import DEFAULT_HYPERNET, load_card

    assert r["hypernet"] == load_card(DEFAULT_HYPERNET).id and f"Hypernet `{r['hypernet']}`" in md
    assert r["token_prior"].startswith(("on (beta", "off")) and f"token prior {r['token_prior']}" in md
