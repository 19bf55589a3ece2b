"""The package's layers import one way: client <- eval <- train <- export <- lab.

Every import in every module counts, those inside functions too (a lazy import is still a dependency). The
client (everything outside eval/train/export/lab, and the CLI minus its lab sub-app) must also never import torch,
so `pip install p2p-edge` without extras is a complete client.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import p2p_edge

PKG = Path(p2p_edge.__file__).parent
LAYERS = ("client", "eval", "train", "export", "lab")
TORCH_FREE = ("client", "eval")
# The one upward edge: the CLI entry wires in the lab sub-app, whose commands import their layers only when run
# (test_client_import_loads_no_upper_layer checks that importing the CLI loads none of them).
COMPOSITION_ROOT = {("p2p_edge.cli", "p2p_edge.cli.lab")}


def layer_of_path(path: Path) -> str:
    rel = path.relative_to(PKG)
    if rel == Path("cli/lab.py"):
        return "lab"
    top = rel.parts[0]
    return top if top in LAYERS[1:] else "client"


def layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "p2p_edge":
        return None
    if parts[1:3] == ["cli", "lab"]:
        return "lab"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[1:] else "client"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod == "p2p_edge"]
    return out


SOURCES = sorted(PKG.rglob("*.py"))


def test_every_module_is_checked():
    assert len(SOURCES) > 40 and any(layer_of_path(p) == "lab" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_flow_one_way(path):
    mine = LAYERS.index(layer_of_path(path))
    bad = []
    for line, mod in imports(path):
        top = mod.split(".")[0]
        if top in ("torch", "export", "bench") and LAYERS[mine] in TORCH_FREE:
            bad.append(f"line {line}: {mod} (the {LAYERS[mine]} layer stays torch-free and inside the package)")
        theirs = layer_of_module(mod)
        if (module_name(path), mod) in COMPOSITION_ROOT:
            continue
        if theirs is not None and LAYERS.index(theirs) > mine:
            bad.append(f"line {line}: {mod} ({theirs} is above {LAYERS[mine]})")
    assert not bad, f"{path.relative_to(PKG)}: " + "; ".join(bad)


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The rule is not vacuous: a client module importing train (even lazily) or torch is caught."""
    fake = PKG / "_layer_probe_tmp.py"
    assert not fake.exists()
    try:
        fake.write_text("def f():\n    from p2p_edge.train.loop import run\n    import torch\n")
        with pytest.raises(AssertionError, match=r"line 2: p2p_edge\.train\.loop.*line 3: torch"):
            test_imports_flow_one_way(fake)
    finally:
        fake.unlink()


def test_client_import_loads_no_upper_layer():
    """What a client process loads: the CLI, personalize, chat and the server import no torch and no module of
    eval, train, export or lab (a fresh interpreter, so nothing another test imported counts)."""
    code = ("import sys, p2p_edge.cli, p2p_edge.personalize, p2p_edge.chat, p2p_edge.serve.app, p2p_edge.gguf, "
            "p2p_edge.hypernet\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[:2] in "
            "[['p2p_edge', x] for x in ('eval', 'train', 'export', 'lab')])\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
