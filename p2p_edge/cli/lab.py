"""`p2p-edge lab ...`: the commands that make a hypernet (train, folds, select, report, export).

They need the `train` extra (torch); each imports it only when it runs, so the client CLI stays torch-free.
Apart from `train`, each command hands its arguments to the module's own parser (`p2p-edge lab report --help`
lists them), so `python -m p2p_edge.lab.report ...` and `p2p-edge lab report ...` are the same command.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from p2p_edge.cli.errors import friendly_errors
from p2p_edge.errors import P2PError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _needs_train_extra(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise P2PError(f"this command needs the train extra: pip install 'p2p-edge[train]' ({e})") from None


@app.command()
@friendly_errors
def train(
    config: Path = typer.Option(..., "--config", help="Training config (TOML), e.g. configs/train_default.toml."),
):
    """Train a hypernet (or the MT-LoRA control) across users; resumable.

    Several GPUs: `accelerate launch -m p2p_edge.train.loop CONFIG` (same code, DDP + mixed precision)."""
    ckpt = _needs_train_extra("p2p_edge.train.loop").run(config, log=typer.echo)
    typer.echo(f"checkpoint: {ckpt}\nexport it: p2p-edge lab export {ckpt} --out DIR/hypernet.onnx")


def _pass_through(name: str, module: str, doc: str) -> None:
    @app.command(name=name, help=doc, context_settings=_PASS_THROUGH, add_help_option=False)
    @friendly_errors
    def command(ctx: typer.Context):
        code = _needs_train_extra(module).main(list(ctx.args))
        if code:
            raise typer.Exit(code)


_pass_through("folds", "p2p_edge.lab.folds", "Write k-fold user splits and their configs (args: see --help).")
_pass_through("select", "p2p_edge.lab.select", "Pick a checkpoint on validation users (args: see --help).")
_pass_through("report", "p2p_edge.lab.report", "Score a hypernet beside its controls on held-out users.")
_pass_through("export", "p2p_edge.export.hypernet", "Export a checkpoint to ONNX + its card.")
