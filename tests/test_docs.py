"""The README and docs/ point only at files that exist (a moved module or result file breaks this test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# repository paths with a file extension, or folders written with a trailing slash; runs/ is made by commands
PATH = re.compile(r"(?<![\w./-])((?:p2p_edge|bench|configs|docs|tests|data|examples)/[\w./-]*?"
                  r"(?:\.(?:py|md|toml|json|jsonl|txt|onnx|gguf|png)|/))(?![\w*])")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_named_exists(doc):
    named = set(PATH.findall(doc.read_text(encoding="utf-8")))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names missing files: {missing}"


def test_the_pattern_sees_paths():
    assert PATH.findall("see `p2p_edge/gguf/reader.py`, configs/experiments/ and bench/results/x_*.md") == \
        ["p2p_edge/gguf/reader.py", "configs/experiments/"]


def test_readme_is_about_using_the_tool():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 205
