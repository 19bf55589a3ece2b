"""Privacy promises: no network (personalize, chat, forget), forget deletes what we wrote (and only that), and
nothing the CLI prints quotes the history unless --verbose asks for the summary."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE_HISTORY, ROOT

from p2p_edge.base import SPEC_CACHE_NAME

CANARY = "zq7canaryXK3"  # a string that can only come from the history file


class _NoInetSocket(socket.socket):
    def __init__(self, family=-1, *a, **kw):
        if family in (socket.AF_INET, socket.AF_INET6) or family == -1:
            raise AssertionError(f"network socket created: family {family}")
        super().__init__(family, *a, **kw)


@pytest.fixture
def no_network(monkeypatch):
    """Creating an internet socket, connecting to a non-loopback address, or a DNS lookup fails the test."""
    monkeypatch.setattr(socket, "socket", _NoInetSocket)
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
    adapter = Path(doc["adapter"])
    assert adapter.is_file() and adapter.parent.name == "alice"
    prior = Path(doc["token_prior"])   # the shipped table is on: the prior is written beside the adapter
    assert prior.parent == adapter.parent and prior.is_file()
    r = CliRunner().invoke(app, ["forget", "--user", "alice"])
    assert r.exit_code == 0, r.output
    assert not adapter.parent.exists() and not prior.exists()
    assert hist.is_file()  # the user's own history is never touched
    r = CliRunner().invoke(app, ["forget"])
    assert r.exit_code != 0 and "either a history file or --user" in r.output


def test_forget_removes_cached_summary_and_vectors(use_encoder, random_hypernet_path, tmp_path, llm, monkeypatch):
    from typer.testing import CliRunner

    import p2p_edge.runtime as rt
    from p2p_edge.cli import app
    from p2p_edge.paths import cache_dir

    def user_cache_files():  # the base model's spec cache is not per-user data
        return [p for p in cache_dir().rglob("*") if p.is_file() and p.suffix in (".json", ".npz") and p.name != SPEC_CACHE_NAME]

    monkeypatch.setattr(rt, "LocalLLM", lambda *a, **k: llm)
    hist = tmp_path / "bob.jsonl"
    hist.write_text("\n".join(json.dumps({"text": f"note {i} about sourdough"}) for i in range(3)) + "\n")
    r = CliRunner().invoke(app, ["personalize", str(hist), "--hypernet", str(random_hypernet_path), "--json"])
    assert r.exit_code == 0, r.output
    cached = user_cache_files()
    assert cached, "personalize should have cached a summary and item vectors"
    r = CliRunner().invoke(app, ["forget", str(hist)])
    assert r.exit_code == 0, r.output
    left = user_cache_files()
    assert left == []


# ----------------------------------------------------------------------------------------------- chat, no network


@pytest.fixture
def shared_llm(llm, use_encoder, monkeypatch):
    import p2p_edge.runtime as rt

    monkeypatch.setattr(rt, "LocalLLM", lambda *a, **k: llm)  # the session's model: no reload
    llm.use(None)
    yield llm
    for ad in list(llm._loaded):  # the chat REPL leaves its adapter loaded (its process would end here)
        llm.free(ad)
    llm.use(None)


def test_chat_without_network(no_network, shared_llm, random_hypernet_path, tmp_path):
    """chat --history (personalize, then chat) and chat --adapter, on piped stdin, with sockets refused."""
    from typer.testing import CliRunner

    from p2p_edge.cli import app

    hist = tmp_path / "dana.jsonl"
    hist.write_bytes(EXAMPLE_HISTORY.read_bytes())
    r = CliRunner().invoke(app, ["chat", "--history", str(hist), "--hypernet", str(random_hypernet_path),
                                 "--summary", "Bakes bread.", "--max-tokens", "4", "--temperature", "0"],
                           input="hello\n/adapter off\nhi\n")
    assert r.exit_code == 0, r.output
    assert "personalized from 34 items" in r.stdout and r.stdout.count("bot> ") == 2
    adapter = Path(r.stdout.split(" -> ")[1].splitlines()[0])
    r = CliRunner().invoke(app, ["chat", "--adapter", str(adapter), "--max-tokens", "4", "--temperature", "0"],
                           input="hello\n")
    assert r.exit_code == 0, r.output
    assert "adapter on" in r.stdout and r.stdout.count("bot> ") == 1
    assert r.stdout.split("bot> ")[1].split("you> ")[0].strip()  # it answered


def _netns_prefix() -> list[str]:
    """`unshare -n`: run in a new network namespace (no interfaces but a downed loopback) where permitted."""
    if not shutil.which("unshare"):
        return []
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if r.returncode == 0 else []


@pytest.mark.slow
def test_real_processes_in_a_network_namespace_without_interfaces(random_hypernet_path, encoder_dir, tmp_path):
    """The whole client as real processes with no network at the OS level (not only Python's socket module):
    personalize, chat on piped stdin, forget. Where strace exists, also: no internet socket is ever opened."""
    prefix = _netns_prefix()
    if not prefix:
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    import os

    env = dict(os.environ, P2P_EDGE_HOME=str(tmp_path / "home"), P2P_EDGE_ENCODER=str(encoder_dir), HF_HUB_OFFLINE="1")
    env.pop("P2P_EDGE_BASE_MODEL", None)
    trace = tmp_path / "strace.log"
    tracer = ["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace)] if shutil.which("strace") else []
    hist = tmp_path / "erin.jsonl"
    hist.write_bytes(EXAMPLE_HISTORY.read_bytes())

    def run(args, stdin=None):
        cmd = [*prefix, *tracer, sys.executable, "-m", "p2p_edge.cli", *map(str, args)]
        r = subprocess.run(cmd, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        if tracer:
            inet = [line for line in trace.read_text().splitlines() if "AF_INET" in line]
            assert inet == [], inet
        return r

    run(["personalize", hist, "--hypernet", random_hypernet_path, "--summary", "Bakes bread.", "--json",
         "--threads", "1"])
    r = run(["chat", "--adapter", tmp_path / "home" / "users" / "erin" / "adapter.gguf", "--max-tokens", "4",
             "--threads", "1", "--temperature", "0"], stdin="hello\n")
    assert r.stdout.count("bot> ") == 1
    run(["forget", "--user", "erin"])
    assert not (tmp_path / "home" / "users" / "erin").exists()


# ---------------------------------------------------------------------------- nothing printed quotes the history


def canary_history(path: Path) -> Path:
    """Every text-bearing field of every item carries the canary."""
    items = [{"id": f"c{i}", "time": f"2024-01-{i + 1:02d}", "title": f"title {CANARY} {i}", "label": "music",
              "rating": 4, "text": f"My secret {CANARY} note number {i} about sourdough and guitars.",
              "prompt": f"question {CANARY}?", "output": f"answer {CANARY} {i}"} for i in range(6)]
    path.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    return path


def test_personalize_output_never_quotes_the_history_unless_verbose(shared_llm, random_hypernet_path, tmp_path,
                                                                    monkeypatch):
    """The generated summary is derived from the history (here: a model that quotes it): it goes to profile.json
    only; stdout/stderr (human and --json) show counts, ids, paths and timings, and the summary only with --verbose."""
    from typer.testing import CliRunner

    import p2p_edge.personalize as pz
    from p2p_edge.cli import app

    monkeypatch.setattr(pz, "generate_summary", lambda llm, items, template=None: f"Often writes '{CANARY}'.")
    hist = canary_history(tmp_path / "frank.jsonl")
    common = ["personalize", str(hist), "--hypernet", str(random_hypernet_path), "--top-k", "3"]
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(app, [*common, *extra, "--out", str(tmp_path / "out")])
        assert r.exit_code == 0, r.output
        assert CANARY not in r.stdout and CANARY not in r.stderr, r.output
        assert sum(f"c{i}" in r.stdout for i in range(6)) == 3  # the 3 retrieved items are named by id
    prof = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert CANARY in prof["summary"] and prof["summary_source"] == "cache"  # the private file keeps it

    r = CliRunner().invoke(app, [*common, "--verbose", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0 and f"Often writes '{CANARY}'." in r.stdout  # --verbose shows it (the test can see it)
    r = CliRunner().invoke(app, [*common, "--json", "-v", "--out", str(tmp_path / "out")])
    assert json.loads(r.stdout)["summary"] == f"Often writes '{CANARY}'."

    r = CliRunner().invoke(app, ["chat", "--history", str(hist), "--hypernet", str(random_hypernet_path)],
                           input="/quit\n")
    assert r.exit_code == 0 and CANARY not in r.output, r.output
    r = CliRunner().invoke(app, ["forget", str(hist)])
    assert r.exit_code == 0 and CANARY not in r.output, r.output


GOOD_LINE = json.dumps({"text": f"fine {CANARY}", "title": CANARY})
BAD_LINES = {  # each bad line carries the canary in its values; the error must name line and field, not quote it
    "rating_string": ({"text": f"a {CANARY}", "rating": f"five {CANARY}"}, "field 'rating'"),
    "text_list": ({"text": [CANARY], "title": CANARY}, "field 'text'"),
    "id_float": ({"text": CANARY, "id": 1.5}, "field 'id'"),
    "missing_text": ({"body": CANARY, "title": CANARY}, "field 'text'"),
    "bare_string": (json.dumps(f"{CANARY} at the top level"), "JSON object"),
    "prompt_without_output": ({"text": CANARY, "prompt": CANARY}, "field 'prompt'"),
    "label_empty": ({"text": CANARY, "label": ""}, "field 'label'"),
    "invalid_json": (f'{{"text": "{CANARY}",, }}', "invalid JSON"),
    "invalid_utf8": (f'{{"text": "{CANARY} caf'.encode() + b'\xe9"}', "invalid UTF-8"),
    "nul_byte": (f'{{"text": "{CANARY}'.encode() + b'\x00"}', "NUL"),
    "line_too_long": (json.dumps({"text": CANARY + "x" * (1 << 20)}), "longer than"),
    "lone_surrogate": (f'{{"text": "{CANARY}\\ud800"}}', "surrogate"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_errors_name_the_line_but_never_quote_it(case, tmp_path):
    from typer.testing import CliRunner

    from p2p_edge.cli import app

    bad, needle = BAD_LINES[case]
    raw = bad if isinstance(bad, bytes) else (bad if isinstance(bad, str) else json.dumps(bad)).encode()
    hist = tmp_path / "gina.jsonl"
    hist.write_bytes(GOOD_LINE.encode() + b"\n" + raw + b"\n")
    for debug in ([], ["--debug"]):
        r = CliRunner().invoke(app, [*debug, "personalize", str(hist), "--out", str(tmp_path / "out")])
        assert r.exit_code != 0
        msg = str(r.exception) if debug else r.stderr
        assert f"{hist}:2:" in msg and needle in msg, msg
        assert CANARY not in msg and CANARY not in r.stdout, msg
