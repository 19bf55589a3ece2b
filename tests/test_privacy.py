"""Privacy promises: no network, forget deletes what we wrote (and only that)."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import EXAMPLE_HISTORY


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a non-loopback socket fails the test."""
    real = socket.socket.connect

    def guarded(self, addr, *a, **kw):
        host = addr[0] if isinstance(addr, tuple) else addr
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real(self, addr, *a, **kw)
        raise AssertionError(f"network access attempted: {addr}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"network: {a}")))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"DNS lookup: {a}")))


def test_personalize_and_forget_without_network(no_network, use_encoder, random_hypernet_path, tmp_path, llm, monkeypatch):
    from typer.testing import CliRunner

    import p2p_edge.runtime as rt
    from p2p_edge.cli import app

    monkeypatch.setattr(rt, "LocalLLM", lambda *a, **k: llm)  # the session's model: no reload
    hist = tmp_path / "alice.jsonl"
    hist.write_bytes(EXAMPLE_HISTORY.read_bytes())
    r = CliRunner().invoke(app, ["personalize", str(hist), "--hypernet", str(random_hypernet_path), "--json",
                                 "--summary", "Bakes bread, plays guitar."])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    from pathlib import Path

    adapter = Path(doc["adapter"])
    assert adapter.is_file() and adapter.parent.name == "alice"
    r = CliRunner().invoke(app, ["forget", "--user", "alice"])
    assert r.exit_code == 0, r.output
    assert not adapter.parent.exists()
    assert hist.is_file()  # the user's own history is never touched
    r = CliRunner().invoke(app, ["forget"])
    assert r.exit_code != 0 and "either a history file or --user" in r.output


def test_forget_removes_cached_summary_and_vectors(use_encoder, random_hypernet_path, tmp_path, llm, monkeypatch):
    from typer.testing import CliRunner

    import p2p_edge.runtime as rt
    from p2p_edge.cli import app
    from p2p_edge.paths import cache_dir

    monkeypatch.setattr(rt, "LocalLLM", lambda *a, **k: llm)
    hist = tmp_path / "bob.jsonl"
    hist.write_text("\n".join(json.dumps({"text": f"note {i} about sourdough"}) for i in range(3)) + "\n")
    r = CliRunner().invoke(app, ["personalize", str(hist), "--hypernet", str(random_hypernet_path), "--json"])
    assert r.exit_code == 0, r.output
    cached = [p for p in cache_dir().rglob("*") if p.is_file() and p.suffix in (".json", ".npz") and p.name != "sha256.json"]
    assert cached, "personalize should have cached a summary and item vectors"
    r = CliRunner().invoke(app, ["forget", str(hist)])
    assert r.exit_code == 0, r.output
    left = [p for p in cache_dir().rglob("*") if p.is_file() and p.suffix in (".json", ".npz") and p.name != "sha256.json"]
    assert left == []
