"""`p2p-edge serve`, the OpenAI-compatible local server.

Slow tests start the real server (`python -m p2p_edge.cli serve`, one thread, the random test hypernet, a private
data dir) on a free loopback port once for the module and talk to it with the real `openai` client and httpx:
models, adapters made over HTTP exactly as `p2p-edge personalize` makes them, streamed replies from a user's
adapter, determinism across interleaved users, concurrency, errors, and what must never be read or logged.
Fast tests check the HTTP guard, the request checks and the history-dir rules in process, with no model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import EXAMPLE_HISTORY, ROOT

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key-5b1f"
CANARY = "CANARY-ocelot-7713"  # in prompts and histories; must never reach a log or an error
SUMMARY = "Plays acoustic guitar at open mics and bakes sourdough with a starter named Gerald."
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"
MAX_BODY_MB = 1


def example_items() -> list[dict]:
    return [json.loads(line) for line in EXAMPLE_HISTORY.read_text(encoding="utf-8").splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


class Server:
    def __init__(self, url: str, home: Path, history_dir: Path, outside: Path, log: Path, proc):
        self.url, self.home, self.history_dir, self.outside = url, home, history_dir, outside
        self.log, self.proc = log, proc

    def client(self, key: str = KEY, **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=300, **kw)

    def http(self, method: str, path: str, *, key: str | None = KEY, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{self.url}{path}", headers={**headers, **kw.pop("headers", {})},
                             timeout=300, **kw)

    def adapters(self, body: dict) -> httpx.Response:
        return self.http("POST", "/v1/adapters", json=body)

    def metric(self, name: str) -> float:
        text = self.http("GET", "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"p2p_edge_{name} "))

    def user_dir(self, user: str) -> Path:
        return self.home / "users" / user


def seed_summary(home: Path, history_sha: str, base_sha: str, summary: str = SUMMARY) -> None:
    """As an earlier run would have: no test waits for the LLM to write a summary of the 34-item example."""
    from p2p_edge.paths import PROMPTS_DIR
    from p2p_edge.profile import SummaryCache

    cache = SummaryCache(home / "cache")
    cache.put(cache.key(history_sha, base_sha, (PROMPTS_DIR / "summary.txt").read_text("utf-8")), summary, history_sha)


@pytest.fixture(scope="module")
def server(random_hypernet_path, encoder_dir, base_spec, tmp_path_factory):
    from p2p_edge.serve.histories import inline_bytes

    root = tmp_path_factory.mktemp("serve")
    home, hdir, outside = root / "home", root / "histories", root / "outside"
    hdir.mkdir()
    outside.mkdir()
    shutil.copy(EXAMPLE_HISTORY, hdir / "history.jsonl")
    (outside / "secret.jsonl").write_text(json.dumps({"text": f"secret {CANARY}"}) + "\n")
    os.symlink(outside / "secret.jsonl", hdir / "escape.jsonl")
    os.symlink(outside, hdir / "elsewhere")
    seed_summary(home, sha256(EXAMPLE_HISTORY), base_spec.sha256)
    seed_summary(home, hashlib.sha256(inline_bytes(example_items())).hexdigest(), base_spec.sha256)

    port = free_port()
    env = dict(os.environ, P2P_EDGE_HOME=str(home), P2P_EDGE_ENCODER=str(encoder_dir), HF_HUB_OFFLINE="1")
    env.pop("P2P_EDGE_BASE_MODEL", None)
    env.pop("P2P_EDGE_API_KEY", None)
    log = root / "server.log"
    cmd = [sys.executable, "-m", "p2p_edge.cli", "serve", "--port", str(port), "--threads", "1", "--api-key", KEY,
           "--history-dir", str(hdir), "--hypernet", str(random_hypernet_path), "--max-loaded-adapters", "2",
           "--max-body-mb", str(MAX_BODY_MB)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", home, hdir, outside, log, proc)
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield srv
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert CANARY not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def alice(server):
    """alice's adapter, made over HTTP from examples/history.jsonl's items (its summary comes from the cache)."""
    r = server.adapters({"user": "alice", "history": example_items()})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def bob(server):
    items = [{"id": i, "text": f"Bebop night {i}: {CANARY} played a long tenor solo.", "label": "jazz"}
             for i in range(5)]
    r = server.adapters({"user": "bob", "history": items, "summary": "A jazz fan who plays tenor sax."})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def carol(server):
    """carol's adapter, made from a file in the server's --history-dir (the same bytes as examples/history.jsonl)."""
    r = server.adapters({"user": "carol", "history_path": "history.jsonl"})
    assert r.status_code == 200, r.text
    return r.json()


def chat(client, model: str, prompt: str = f"Name one hobby. {CANARY}", **kw):
    kw = {"max_tokens": 6, "temperature": 0, **kw}
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)
    return r.choices[0].message.content


# -------------------------------------------------------------------------------------------- the real server


@pytest.mark.slow
def test_models_lists_the_base_and_each_users_adapter(server, alice):
    assert {m.id for m in server.client().models.list()} >= {BASE_ID, "p2p/alice"}
    models = {m.id: m for m in server.client().models.list()}
    assert getattr(models["p2p/alice"], "parent", None) == BASE_ID
    assert server.client().models.retrieve("p2p/alice").id == "p2p/alice"


@pytest.mark.slow
def test_adapter_over_http_is_written_privately_like_the_cli(server, alice):
    d = server.user_dir("alice")
    adapter, profile = d / "adapter.gguf", d / "profile.json"
    assert alice["id"] == "p2p/alice" and alice["sha256"] == sha256(adapter)
    assert {"read", "summary", "encode", "hypernet", "write", "load", "total"} <= set(alice["timings_ms"])
    assert mode(adapter) == mode(profile) == 0o600 and mode(d) == 0o700
    prof = json.loads(profile.read_text())
    assert prof["summary_source"] == "cache" and prof["summary"] == SUMMARY  # the CLI's summary cache, same key
    assert prof["history"]["n_items"] == 34 and prof["history"]["path"] is None  # inline: no file to name
    assert not [p for p in server.home.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()
                and p.name != "server.log"]


@pytest.mark.slow
def test_history_path_gives_the_same_adapter_as_p2p_edge_personalize(server, carol, random_hypernet_path,
                                                                      encoder_dir, tmp_path):
    served = server.user_dir("carol") / "adapter.gguf"
    assert json.loads((served.parent / "profile.json").read_text())["history"]["path"] == \
        str((server.history_dir / "history.jsonl").resolve())
    env = dict(os.environ, P2P_EDGE_HOME=str(tmp_path / "home"), P2P_EDGE_ENCODER=str(encoder_dir))
    cli = subprocess.run([sys.executable, "-m", "p2p_edge.cli", "personalize", str(EXAMPLE_HISTORY), "--hypernet",
                          str(random_hypernet_path), "--summary", SUMMARY, "--threads", "1", "--out",
                          str(tmp_path / "out"), "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "out" / "adapter.gguf").read_bytes() == served.read_bytes()


@pytest.mark.slow
def test_stream_a_chat_reply_from_a_users_adapter(server, alice):
    client = server.client()
    chunks = list(client.chat.completions.create(
        model="p2p/alice", messages=[{"role": "user", "content": f"Say hello. {CANARY}"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens <= 6 and chunks[-1].usage.prompt_tokens > 0
    whole = client.chat.completions.create(
        model="p2p/alice", messages=[{"role": "user", "content": f"Say hello. {CANARY}"}], max_tokens=6, temperature=0)
    assert whole.choices[0].message.content == text and whole.model == "p2p/alice"
    raw = server.http("POST", "/v1/chat/completions", json={
        "model": "p2p/alice", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


@pytest.mark.slow
def test_completions_and_adapter_scale(server, alice):
    client = server.client()
    r = client.completions.create(model="p2p/alice", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="p2p/alice", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    # scale 0 without the token prior is the base model; the request's scale does not stick to the adapter
    base = chat(client, BASE_ID, max_tokens=8)
    assert chat(client, "p2p/alice", max_tokens=8, extra_body={"adapter_scale": 0.0, "token_prior": False}) == base
    assert chat(client, "p2p/alice", max_tokens=8) == chat(client, "p2p/alice", max_tokens=8)
    with pytest.raises(openai.BadRequestError):
        chat(client, "p2p/alice", extra_body={"adapter_scale": 9})


@pytest.mark.slow
def test_a_users_token_prior_is_used_as_stored_and_a_request_can_turn_it_off(server, alice):
    """A prior beside alice's adapter (of her history, default_on) steers her replies; "token_prior": false turns it
    off for that request; a prior of another history never rides along; removing it gives the adapter alone."""
    import numpy as np

    from p2p_edge.gguf import read_adapter
    from p2p_edge.token_prior import TokenPrior

    client = server.client()
    adapter = server.user_dir("alice") / "adapter.gguf"
    prior_file = adapter.parent / "token_prior.npz"
    base = chat(client, BASE_ID, max_tokens=8)
    from p2p_edge.runtime import vocab_tokenizer

    banana = vocab_tokenizer()[0](" banana")[0]   # the server's base model's vocabulary
    sha = read_adapter(adapter)[1]["history_sha256"]
    try:
        for history_sha, steered in ((sha, True), ("another history", False)):
            TokenPrior(np.array([banana], np.int32), np.array([40.0], np.float32), 49152,
                       {"history_sha256": history_sha, "default_on": True}).save(prior_file)
            reply = chat(client, "p2p/alice", max_tokens=8, extra_body={"adapter_scale": 0.0})
            assert ("banana" in reply.lower()) is steered and (reply == base) is not steered
            assert chat(client, "p2p/alice", max_tokens=8,
                        extra_body={"adapter_scale": 0.0, "token_prior": False}) == base
    finally:
        prior_file.unlink(missing_ok=True)
    assert chat(client, "p2p/alice", max_tokens=8, extra_body={"adapter_scale": 0.0}) == base
    with pytest.raises(openai.BadRequestError):
        chat(client, "p2p/alice", extra_body={"token_prior": "yes"})


@pytest.mark.slow
def test_a_users_reply_does_not_depend_on_other_users_requests(server, alice, bob, carol):
    client = server.client()
    alone = [chat(client, "p2p/alice", max_tokens=8) for _ in range(2)]
    assert alone[0] == alone[1]
    b_alone = chat(client, "p2p/bob", max_tokens=8)
    base = chat(client, BASE_ID, max_tokens=8)
    assert len({alone[0], b_alone, base}) == 3  # each adapter changes the reply: a mix-up would show below
    # the same conversation for bob, then alice: the KV/prompt cache of one user never serves the other
    interleaved = []
    for model in ("p2p/bob", "p2p/alice", "p2p/bob", BASE_ID, "p2p/alice"):
        interleaved.append((model, chat(client, model, max_tokens=8)))
    assert [t for m, t in interleaved if m == "p2p/alice"] == alone
    assert [t for m, t in interleaved if m == "p2p/bob"] == [b_alone, b_alone]
    assert [t for m, t in interleaved if m == BASE_ID] == [base]
    # concurrently, with a third adapter pushing the others out of the 2-slot LRU and back
    evictions = server.metric("adapter_cache_evictions_total")
    models = ["p2p/alice", "p2p/bob", "p2p/carol"] * 3
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda m: (m, chat(client, m, max_tokens=8)), models))
    assert {t for m, t in replies if m == "p2p/alice"} == {alone[0]}
    assert {t for m, t in replies if m == "p2p/bob"} == {b_alone}
    assert server.metric("adapter_cache_evictions_total") > evictions


@pytest.mark.slow
def test_eight_concurrent_clients_all_get_answers(server, alice, bob):
    def one(i: int):
        client = server.client()
        model = ["p2p/alice", "p2p/bob", BASE_ID][i % 3]
        if i % 2:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=4, stream=True) if c.choices)
        return chat(client, model, prompt=f"Hi {i}", max_tokens=4, temperature=0.8, seed=i)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    assert len(replies) == 8 and all(isinstance(r, str) for r in replies)


@pytest.mark.slow
def test_health_answers_while_a_stream_is_in_progress(server, alice):
    client = server.client()
    stream = client.chat.completions.create(model="p2p/alice", messages=[{"role": "user", "content": "Tell a story."}],
                                            max_tokens=48, temperature=0.7, seed=1, stream=True)
    it = iter(stream)
    next(it)  # the stream is open, its job has started
    # keep the model busy behind it, then ask for /health: the event loop does not wait for llama.cpp
    busy = threading.Thread(target=lambda: [chat(client, "p2p/alice", prompt=f"Story {i}", max_tokens=8)
                                            for i in range(3)])
    busy.start()
    t = time.perf_counter()
    r = server.http("GET", "/health", key=None)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert time.perf_counter() - t < 5
    rest = list(it)  # a slow reader: the reply is still complete
    assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
    stream.close()
    busy.join()


@pytest.mark.slow
def test_api_key(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    r = server.http("GET", "/v1/models", key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers.get("www-authenticate") == "Bearer"
    r = server.http("POST", "/v1/adapters", key="wrong", json={"user": "mallory", "history": [{"text": "x"}]})
    assert r.status_code == 401 and not server.user_dir("mallory").exists()
    assert server.http("GET", "/health", key=None).status_code == 200  # open, like a load balancer expects


@pytest.mark.slow
def test_unknown_models_and_users_are_404(server):
    client = server.client()
    for model in ("p2p/nobody", "gpt-4"):
        with pytest.raises(openai.NotFoundError):
            chat(client, model)
    r = server.http("DELETE", "/v1/adapters/nobody")
    assert r.status_code == 404 and set(r.json()["error"]) >= {"message", "type", "code"}


@pytest.mark.slow
@pytest.mark.parametrize("body, status, code", [
    ('{"model": "p2p/alice", "messages": [', 400, "invalid_json"),
    ('{"model": "p2p/alice", "messages": []}', 400, "invalid_value"),
    ('{"model": "p2p/alice", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400,
     "invalid_value"),
    ('{"model": "p2p/alice", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "invalid_value"),
    ('{"model": "p2p/../../etc", "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_user_id"),
    ('[1, 2]', 400, "invalid_value"),
])
def test_bad_requests_are_400_in_openais_shape(server, alice, body, status, code):
    r = server.http("POST", "/v1/chat/completions", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


@pytest.mark.slow
def test_a_bad_history_item_gives_the_clis_one_line_and_no_text(server, tmp_path):
    from p2p_edge.errors import InputError
    from p2p_edge.history import load_history

    items = [{"text": "fine"}, {"title": CANARY, "rating": CANARY, "text": f"{CANARY} text"}]
    r = server.adapters({"user": "erin", "history": items})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    f = tmp_path / "history"
    f.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    with pytest.raises(InputError) as e:
        load_history(f)
    assert msg == str(e.value).replace(str(f), "history")
    assert msg == "history:2: field 'rating': must be a finite number, got a string"
    assert CANARY not in r.text and not server.user_dir("erin").exists()
    for body, needle in [({"user": "erin", "history": []}, "no history items"),
                         ({"user": "erin"}, "exactly one of"),
                         ({"user": "erin", "histroy": [{"text": "x"}]}, "histroy"),
                         ({"user": "erin", "history": [{"text": "x"}], "summary": "x", "no_summary": True}, "exclude")]:
        r = server.adapters(body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


@pytest.mark.slow
@pytest.mark.parametrize("user", ["../evil", "a/b", "..", ".hidden", "-x", "a" * 65, "x\\y", ""])
def test_user_ids_are_checked(server, user):
    r = server.adapters({"user": user, "history": [{"text": "x"}], "summary": "s"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_user_id"
    assert not (server.home / "evil").exists() and not (server.home / "users" / "a").exists()


@pytest.mark.slow
@pytest.mark.parametrize("given", ["escape.jsonl", "elsewhere/secret.jsonl", "../outside/secret.jsonl",
                                   "{outside}/secret.jsonl", "/etc/passwd", "missing.jsonl", "."])
def test_history_path_outside_the_history_dir_is_refused(server, given):
    r = server.adapters({"user": "frank", "history_path": given.format(outside=server.outside), "no_summary": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "history_path_refused", r.text
    assert CANARY not in r.text and "root:" not in r.text and not server.user_dir("frank").exists()


@pytest.mark.slow
def test_body_over_the_limit_is_413_and_the_server_goes_on(server, alice):
    big = b'{"model": "p2p/alice", "prompt": "' + b"x" * (MAX_BODY_MB << 20) + b'"}'
    r = server.http("POST", "/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_MB * 4 + 1):
            yield b" " * (1 << 18)
        yield b"{}"

    r = server.http("POST", "/v1/adapters", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert chat(server.client(), "p2p/alice")


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_422(server, alice):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        chat(server.client(), "p2p/alice", prompt="word " * 3000)
    assert "context window" in str(e.value)
    assert chat(server.client(), "p2p/alice")


@pytest.mark.slow
def test_personalizing_again_replaces_the_loaded_adapter_and_delete_forgets_the_user(server):
    r = server.adapters({"user": "dave", "history": [{"text": "Likes trains."}], "summary": "Likes trains."})
    assert r.status_code == 200
    first = chat(server.client(), "p2p/dave", max_tokens=8)  # now loaded
    r2 = server.adapters({"user": "dave", "history": [{"text": "Likes trains."}],
                          "summary": "Loves boats, hates trains."})
    assert r2.status_code == 200 and r2.json()["sha256"] != r.json()["sha256"]
    assert chat(server.client(), "p2p/dave", max_tokens=8) != first  # the new adapter, not the cached old one
    r = server.http("GET", "/v1/adapters")
    assert any(a["id"] == "p2p/dave" and a["loaded"] for a in r.json()["data"])
    r = server.http("DELETE", "/v1/adapters/dave")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert not server.user_dir("dave").exists()
    assert "p2p/dave" not in {m.id for m in server.client().models.list()}
    with pytest.raises(openai.NotFoundError):
        chat(server.client(), "p2p/dave")


@pytest.mark.slow
def test_metrics_and_a_torch_free_process_that_logs_no_content(server, alice):
    text = server.http("GET", "/metrics").text
    for name in ("requests_total", "adapter_cache_hits_total", "adapter_cache_misses_total",
                 "adapter_cache_evictions_total", "adapter_swap_ms_sum", "personalize_ms_count",
                 "generated_tokens_total"):
        assert f"p2p_edge_{name}" in text
    assert 'route="/v1/chat/completions",status="200"' in text and server.metric("generated_tokens_total") > 0
    assert "alice" not in text and CANARY not in text
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if maps.exists():
        assert "torch" not in maps.read_text()
    assert CANARY not in server.log.read_text(errors="replace")


# ------------------------------------------------------------------------------------------ fast, in process


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_a_non_loopback_host_without_a_key_is_refused(host, monkeypatch):
    from typer.testing import CliRunner

    from p2p_edge.cli import app

    monkeypatch.delenv("P2P_EDGE_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", host])
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host") and "--api-key" in lines[0]


def test_loopback_hosts():
    from p2p_edge.serve import check_host
    from p2p_edge.serve.guard import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "localhost.evil.com"))
    check_host("0.0.0.0", "a-key")  # with a key: allowed


class _StubEngine:
    def __init__(self):
        from p2p_edge.serve.metrics import Metrics

        self.metrics, self.base_id, self.client, self.client_error = Metrics(), BASE_ID, None, "no hypernet"

    def loaded_users(self):
        return set()


@pytest.fixture
def stub_app():
    from starlette.testclient import TestClient

    from p2p_edge.serve.app import build_app

    def make(**kw):
        return TestClient(build_app(_StubEngine(), **kw), base_url="http://127.0.0.1")

    return make


def test_guard_in_process(stub_app):
    c = stub_app(api_key="k", max_body=1000)
    assert c.get("/health").status_code == 200
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["data"][0]["id"] == BASE_ID
    auth = {"Authorization": "Bearer k", "content-type": "application/json"}
    assert c.post("/v1/completions", content=b"x" * 1001, headers=auth).status_code == 413
    r = c.post("/v1/completions", content=iter([b"x" * 600, b"y" * 600]), headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = c.post("/v1/adapters", json={"user": "u", "history": [{"text": "x"}]}, headers=auth)
    assert r.status_code == 503 and "no hypernet" in r.json()["error"]["message"]
    assert c.get("/nope", headers=auth).json()["error"]["code"] == "not_found"


def test_without_a_key_only_loopback_host_names_are_served(stub_app):
    c = stub_app()
    assert c.get("/health").status_code == 200
    assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    r = c.get("/v1/models", headers={"host": "attacker.example:8000"})  # DNS rebinding
    assert r.status_code == 403


def test_an_internal_error_is_a_500_whose_log_has_no_message(stub_app, caplog):
    c = stub_app()

    def boom():
        raise RuntimeError(f"failed on {CANARY}")

    c.app.app.state.engine.loaded_users = boom
    r = c.get("/health")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error" and CANARY not in r.text
    assert "RuntimeError" in caplog.text and "boom" in caplog.text and CANARY not in caplog.text
    assert c.get("/v1/models").status_code == 200


def test_default_body_limit_is_16_mib():
    import inspect

    from p2p_edge.cli import serve
    from p2p_edge.serve.app import DEFAULT_MAX_BODY

    assert DEFAULT_MAX_BODY == 16 << 20
    assert inspect.signature(serve).parameters["max_body_mb"].default.default == 16.0


def test_history_dir_rules(tmp_path):
    from p2p_edge.serve.histories import load_from_dir, resolve_under
    from p2p_edge.serve.schemas import ApiError

    root, outside = tmp_path / "h", tmp_path / "o"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.jsonl").write_text('{"text": "hello"}\n')
    (outside / "x.jsonl").write_text('{"text": "secret"}\n')
    os.symlink(outside / "x.jsonl", root / "link.jsonl")
    os.symlink(root / "sub" / "ok.jsonl", root / "inner.jsonl")  # a symlink that stays inside is fine
    root = root.resolve()
    assert resolve_under(root, "sub/ok.jsonl") == root / "sub" / "ok.jsonl"
    assert resolve_under(root, str(root / "inner.jsonl")) == root / "sub" / "ok.jsonl"
    assert load_from_dir(root, "inner.jsonl").n_items == 1
    for bad in ("link.jsonl", "../o/x.jsonl", str(outside / "x.jsonl"), "sub", "nope.jsonl", "a\x00b"):
        with pytest.raises(ApiError) as e:
            resolve_under(root, bad)
        assert e.value.status == 400
    with pytest.raises(ApiError):
        load_from_dir(None, "sub/ok.jsonl")  # no --history-dir: no paths at all


def test_inline_history_errors_name_the_item():
    from p2p_edge.errors import InputError
    from p2p_edge.serve.histories import load_inline

    h = load_inline([{"text": "a", "label": "x"}, {"text": "b", "rating": 4}])
    assert h.n_items == 2 and h.path is None and h.label_counts == {"x": 1}
    for items, msg in [
        ([{"text": "a"}, "plain"], "history:2: each line must be a JSON object"),
        ([{"text": "a", "rating": float("nan")}], "history:1: field 'rating': must be a finite number, got NaN"),
        ([{"text": "\ud800"}], "history:1: field 'text': contains a \\u escape of an unpaired surrogate"),
        ([], "history: no history items"),
    ]:
        with pytest.raises(InputError) as e:
            load_inline(items)
        assert str(e.value).startswith(msg), str(e.value)


def test_serve_modules_do_not_import_torch():
    code = ("import sys, p2p_edge.serve, p2p_edge.serve.app, p2p_edge.serve.engine, p2p_edge.serve.completions; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', "
            "'sentence_transformers', 'optimum')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
