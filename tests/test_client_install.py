"""The client installs and runs without torch: `pip install .` (no extras) into a fresh venv, then personalize and
chat there. The sentence encoder is the one this session exported (the client reads ONNX; making it needs the
export extra). Slow: it installs packages (from the pip cache when warm); set P2P_EDGE_SKIP_INSTALL_TEST=1 to skip
it on a machine without a package index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("P2P_EDGE_SKIP_INSTALL_TEST") == "1", reason="asked to skip")]


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800, **kw)


def test_a_client_only_venv_personalizes_and_chats_without_torch(tmp_path, encoder_dir):
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv]).returncode == 0
    py, cli = venv / "bin" / "python", venv / "bin" / "p2p-edge"
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=OFF", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = run([py, "-m", "pip", "install", "-q", str(ROOT)], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'optimum') "
                        "if u.find_spec(m)])"])
    assert r.stdout.strip() == "[]", r.stdout   # nothing of the training stack came along
    env = dict(os.environ, P2P_EDGE_HOME=str(tmp_path / "home"), P2P_EDGE_ENCODER=str(encoder_dir))
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
