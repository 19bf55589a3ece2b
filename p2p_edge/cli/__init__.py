"""`p2p-edge` command line: personalize, chat, forget, serve, info; the lab commands (train, folds, select, report,
export) are the `lab` sub-app, whose modules import torch only when a command runs.

Errors print one line (`error: FILE:LINE: field 'x': ...`) and exit non-zero; --debug shows the traceback.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from p2p_edge.cli.errors import DEBUG, friendly_errors
from p2p_edge.cli.lab import app as lab_app
from p2p_edge.cli.lab import train as lab_train
from p2p_edge.errors import P2PError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from the client

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="On-device LLM personalization: your history -> a LoRA adapter for a local llama.cpp model.")

@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    DEBUG["on"] = debug


@app.command()
@friendly_errors
def personalize(
    history: Path = typer.Argument(..., help="History file (JSON Lines, one item per line; see README)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir [default: per-user dir in the data dir]."),
    user: Optional[str] = typer.Option(None, "--user", help="User id for the default output dir [default: file name]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
    summary: Optional[str] = typer.Option(None, "--summary", help="Use this summary (text, or a path to a text file)."),
    no_summary: bool = typer.Option(False, "--no-summary", help="Profile from retrieved items only (no LLM summary)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=0, max=16, help="Items retrieved into the profile [default: hypernet card's, 2]."),
    hypernet: Optional[Path] = typer.Option(None, "--hypernet", help="Hypernet ONNX (with its .json card) [default: shipped]."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Base GGUF [default: bundled SmolLM2-135M-Instruct]."),
    dtype: str = typer.Option("f16", "--dtype", help="Adapter tensor type: f16 or f32."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the summary (it is derived from your history; "
                                 "without --verbose nothing printed quotes the history)."),
):
    """Build a personal LoRA adapter (adapter.gguf) and profile (profile.json) from a history file."""
    from p2p_edge.personalize import Client, check_hypernet_exists, read_history, read_summary_arg, user_dir, user_id_for

    if summary is not None and no_summary:
        raise P2PError("--summary and --no-summary exclude each other")
    if dtype not in ("f16", "f32"):
        raise P2PError(f"--dtype must be f16 or f32, not {dtype!r}")
    given = read_summary_arg(summary) if summary is not None else None
    check_hypernet_exists(hypernet)
    out_dir = out or user_dir(user or user_id_for(history))
    t = time.perf_counter()
    hist = read_history(history)  # bad input fails fast, before any model is loaded
    read_ms = (time.perf_counter() - t) * 1e3
    client = Client(hypernet_path=hypernet, base_model=base_model, threads=threads)
    res = client.personalize(hist, out_dir, summary=given, no_summary=no_summary, top_k=top_k, dtype=dtype,
                             read_ms=read_ms)
    t = {k: round(v, 2) for k, v in res.timings_ms.items()}
    if as_json:
        doc = {
            "adapter": str(res.adapter), "profile": str(res.profile_path), "timings_ms": t,
            "models_load_ms": round(client.load_ms, 1), "adapter_bytes": res.adapter_bytes,
            "n_items": res.history.n_items, "summary_source": res.profile.summary_source,
            "retrieved_ids": res.profile.retrieved_ids,
            "token_prior": str(res.token_prior) if res.token_prior else None,
        }
        if verbose:
            doc["summary"] = res.profile.summary
        typer.echo(json.dumps(doc))
        return
    from rich.console import Console
    from rich.markup import escape

    c = Console(highlight=False)
    c.print(f"[bold]Personalized[/bold] from {res.history.n_items} items of {history}")
    if verbose and res.profile.summary:
        c.print(f"  summary ({res.profile.summary_source}): {escape(res.profile.summary)}")
    elif res.profile.summary:
        c.print(f"  summary ({res.profile.summary_source}): in {escape(str(res.profile_path))} (--verbose prints it)")
    c.print(f"  retrieved: {', '.join(res.profile.retrieved_ids) or '-'}")
    c.print(f"  adapter:  {res.adapter} ({res.adapter_bytes / 1e6:.2f} MB)")
    c.print(f"  profile:  {res.profile_path}")
    if res.token_prior:
        c.print(f"  token prior: {res.token_prior}")
    c.print("  time (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + f"; models loaded once in {client.load_ms:.0f}")
    c.print(f"Chat with it: p2p-edge chat --adapter {res.adapter}")


@app.command()
@friendly_errors
def chat(
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A personal adapter.gguf."),
    history: Optional[Path] = typer.Option(None, "--history", help="Personalize from this history first, then chat."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Chat with the plain base model."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Base GGUF [default: bundled SmolLM2]."),
    hypernet: Optional[Path] = typer.Option(None, "--hypernet", help="Hypernet for --history."),
    summary: Optional[str] = typer.Option(None, "--summary", help="With --history: use this summary (text or file)."),
    no_summary: bool = typer.Option(False, "--no-summary", help="With --history: no LLM summary."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    scale: Optional[float] = typer.Option(None, "--scale", min=0.0, max=4.0,
                                          help="LoRA strength [default: the hypernet card's chat_scale, else 1]."),
    prior: Optional[bool] = typer.Option(None, "--prior/--no-prior",
                                         help="The token prior beside the adapter: a bias toward your history's words "
                                              "[default: as the shipped population table says]."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
):
    """Local chat REPL: /adapter on|off, /prior on|off, /scale X, /compare PROMPT, /reset, /quit. Ctrl-C stops a
    reply; Ctrl-D quits."""
    from p2p_edge.chat import run_repl

    from p2p_edge.personalize import read_summary_arg

    if len([x for x in (adapter, history, True if no_adapter else None) if x is not None]) > 1:
        raise P2PError("give at most one of --adapter, --history, --no-adapter")
    if (summary is not None or no_summary or hypernet is not None) and history is None:
        raise P2PError("--summary, --no-summary and --hypernet go with --history")
    if summary is not None and no_summary:
        raise P2PError("--summary and --no-summary exclude each other")
    given = read_summary_arg(summary) if summary is not None else None
    run_repl(adapter=adapter, history=history, base_model=base_model, hypernet=hypernet,
             max_tokens=max_tokens, temperature=temperature, system=system, threads=threads,
             summary=given, no_summary=no_summary, scale=scale, prior=prior)


app.add_typer(lab_app, name="lab", help="Train, fold, select, report and export hypernets (needs the train extra).")
app.command(name="train", help="Train a hypernet across users (= p2p-edge lab train).")(lab_train)


@app.command(name="export")
@friendly_errors
def export_cmd(
    adapter: Path = typer.Argument(..., help="A personal adapter.gguf (from personalize)."),
    fmt: str = typer.Option(..., "--format", help="peft (transformers / vLLM multi-LoRA) or ollama (a Modelfile)."),
    out: Path = typer.Option(..., "--out", help="The folder to create (must not exist or be empty)."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Base GGUF (default: the bundled SmolLM2)."),
):
    """Export an adapter for other runtimes: PEFT/vLLM (safetensors + adapter_config.json) or Ollama (Modelfile)."""
    from p2p_edge.interop import export_adapter

    for p in export_adapter(adapter, fmt, out, base_model=base_model):
        typer.echo(str(p))


@app.command()
@friendly_errors
def forget(
    history: Optional[Path] = typer.Argument(None, help="The history file whose adapter, profile and caches to delete."),
    user: Optional[str] = typer.Option(None, "--user", help="Delete this user id's adapter and profile (and caches)."),
):
    """Delete a user's adapter, profile.json, cached summary and cached item vectors."""
    from p2p_edge.personalize import forget_user

    if (history is None) == (user is None):
        raise P2PError("give either a history file or --user ID")
    for line in forget_user(history=history, user=user):
        typer.echo(line)


@app.command()
@friendly_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (a non-loopback one needs --api-key)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="P2P_EDGE_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (or set P2P_EDGE_API_KEY)."),
    max_loaded_adapters: int = typer.Option(64, "--max-loaded-adapters", min=1,
                                            help="Adapters kept loaded in llama.cpp (least recently used freed)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads."),
    history_dir: Optional[Path] = typer.Option(None, "--history-dir",
                                               help="Accept POST /v1/adapters 'history_path' for files under DIR only."),
    hypernet: Optional[Path] = typer.Option(None, "--hypernet", help="Hypernet ONNX (default: shipped)."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Base GGUF (default: bundled SmolLM2)."),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", min=0.001, help="Largest request body (MiB)."),
):
    """OpenAI-compatible local HTTP server: model 'p2p/<user>' answers with that user's adapter."""
    from p2p_edge.serve import serve as run_server

    run_server(host=host, port=port, api_key=api_key or None, max_loaded_adapters=max_loaded_adapters,
               threads=threads, history_dir=history_dir, hypernet=hypernet, base_model=base_model,
               max_body=int(max_body_mb * (1 << 20)), log=lambda s: typer.echo(s, err=True))


@app.command()
@friendly_errors
def info():
    """Show where the base model, encoder, hypernet and user data live."""
    from p2p_edge.hypernet import DEFAULT_HYPERNET
    from p2p_edge.paths import cache_dir, data_dir, default_base_model, encoder_dir

    rows = {"base model": default_base_model(), "encoder": encoder_dir(), "hypernet": DEFAULT_HYPERNET,
            "data dir": data_dir(), "cache dir": cache_dir()}
    for k, v in rows.items():
        typer.echo(f"{k:11s} {v}{'' if Path(v).exists() else '  (missing)'}")
    try:   # what the shipped hypernet does not do, from its card (a person should read it before relying on it)
        from p2p_edge.hypernet import load_card

        card = load_card(DEFAULT_HYPERNET)
        typer.echo(f"{'hypernet id':11s} {card.id} (chat scale {card.chat_scale:g})")
        if card.limits:
            typer.echo(f"{'limits':11s} {card.limits}")
    except P2PError:
        pass
    from p2p_edge.token_prior import DEFAULT_POPULATION, Population

    if DEFAULT_POPULATION.is_file():   # the token prior's table: whether chat and serve use it by default, and limits
        try:
            pop = Population.load(DEFAULT_POPULATION)
            typer.echo(f"{'token prior':11s} {DEFAULT_POPULATION} (beta {pop.beta:g}, "
                       f"{'on' if pop.default_on else 'off'} by default)")
            if pop.meta.get("limits"):
                typer.echo(f"{'its limits':11s} {pop.meta['limits']}")
        except P2PError as e:
            typer.echo(f"{'token prior':11s} {e}")

