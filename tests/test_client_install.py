"""The client installs and runs without torch: a wheel of the package with the encoder inside (what `make wheel`
builds once `make encoder` has exported it into p2p_edge/assets/encoder/) installs with no extras into a fresh venv,
then personalizes, chats and exports there with no P2P_EDGE_ENCODER and no export step. The wheel is built from a copy
of this checkout's files, so the test does not depend on the checkout already holding the encoder. Slow: it installs
packages (from the pip cache when warm); set P2P_EDGE_SKIP_INSTALL_TEST=1 to skip it on a machine without a package
index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("P2P_EDGE_SKIP_INSTALL_TEST") == "1", reason="asked to skip")]


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800, **kw)


def client_wheel(tmp_path: Path, encoder_dir: Path) -> Path:
    """`make wheel` on a copy of the checkout: the encoder in p2p_edge/assets/encoder/, then pip wheel."""
    src = tmp_path / "src"
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.splitlines()
    assert "pyproject.toml" in files
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    shutil.copytree(encoder_dir, src / "p2p_edge" / "assets" / "encoder")
    dist = tmp_path / "dist"
    r = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", dist])
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("p2p_edge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"p2p_edge/assets/encoder/{n}" for n in ("model.onnx", "tokenizer.json", "encoder.json", "NOTICE")} <= names
    return wheel


def test_a_client_only_venv_personalizes_and_chats_without_torch(tmp_path, encoder_dir):
    wheel = client_wheel(tmp_path, encoder_dir)
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv]).returncode == 0
    py, cli = venv / "bin" / "python", venv / "bin" / "p2p-edge"
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=OFF", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = run([py, "-m", "pip", "install", "-q", wheel], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'optimum') "
                        "if u.find_spec(m)])"])
    assert r.stdout.strip() == "[]", r.stdout   # nothing of the training stack came along
    env = {k: v for k, v in os.environ.items() if k != "P2P_EDGE_ENCODER"} | {"P2P_EDGE_HOME": str(tmp_path / "home")}
    r = run([cli, "info"], env=env, cwd=tmp_path)
    assert r.returncode == 0 and str(venv) in r.stdout and "encoder" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "alice"
    r = run([cli, "personalize", ROOT / "examples" / "history.jsonl", "--summary", "Plays guitar and bakes.",
             "--out", out, "--threads", "2"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "adapter.gguf").is_file() and (out / "profile.json").is_file()
    r = run([cli, "chat", "--adapter", out / "adapter.gguf", "--max-tokens", "8", "--threads", "2"], env=env,
            input="Say hello.\n/quit\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
    r = run([cli, "export", out / "adapter.gguf", "--format", "peft", "--out", tmp_path / "peft"], env=env)
    assert r.returncode == 0 and (tmp_path / "peft" / "adapter_model.safetensors").is_file(), r.stderr[-2000:]
