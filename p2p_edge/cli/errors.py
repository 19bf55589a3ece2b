"""One line per error, a non-zero exit, a traceback only with --debug: the wrapper every command uses."""

from __future__ import annotations

import functools
import os
import sys

import typer

from p2p_edge.errors import P2PError

DEBUG = {"on": False}  # set by the app's --debug callback


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _from_interrupt(e: BaseException) -> bool:
    """True when a Ctrl-C is what failed: a C extension interrupted while importing (pybind11's onnxruntime, ...)
    re-raises the KeyboardInterrupt as ImportError("initialization failed") with the interrupt as its cause."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # not a real file (a test's capture): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def friendly_errors(fn):
    """One line per error, non-zero exit; a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except P2PError as e:
            if DEBUG["on"]:
                raise
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
        except BrokenPipeError:
            # the reader went away (`p2p-edge info | head -1`): nothing is wrong and nothing is said; stdout goes to
            # devnull so the interpreter's last flush does not fail again, and the exit is a shell's for SIGPIPE
            _silence_stdout()
            raise typer.Exit(141) from None
        except Exception as e:  # a bug: say so in one line, keep the traceback for --debug
            if _from_interrupt(e):
                typer.echo("interrupted", err=True)
                raise typer.Exit(130) from None
            if DEBUG["on"]:
                raise
            _fail(f"unexpected {type(e).__name__}: {e} (re-run with --debug for the traceback)", 1)

    return wrapper
