"""(e) bad HTTP requests to the real `p2p-edge serve`: each answered in OpenAI's error shape with the right status,
never quoting the request's text, and the server still healthy after each."""

from __future__ import annotations

import json
import time

CANARY = "zebra-canary-4417"   # in every bad body: an error message must never quote it
KEY = "bench-key"


def _cases(alice: str, base_id: str) -> list[tuple[str, str, str, bytes, dict]]:
    """(case, method, path, body, headers); headers carry the API key unless the case is about it."""
    msg = [{"role": "user", "content": f"hi {CANARY}"}]
    chat = "/v1/chat/completions"
    bad_item = [{"text": "fine"}, {"text": f"{CANARY}", "rating": f"{CANARY}"}]
    return [
        ("malformed JSON", "POST", chat, b'{"model": "p2p/alice", "messages": [', {}),
        ("no messages", "POST", chat, json.dumps({"model": alice, "messages": []}).encode(), {}),
        ("temperature not a number", "POST", chat,
         json.dumps({"model": alice, "messages": msg, "temperature": CANARY}).encode(), {}),
        ("max_tokens = -1", "POST", chat, json.dumps({"model": alice, "messages": msg, "max_tokens": -1}).encode(), {}),
        ("a JSON array for a body", "POST", chat, b"[1, 2]", {}),
        ("user id with a path in it", "POST", chat,
         json.dumps({"model": "p2p/../../etc", "messages": msg}).encode(), {}),
        ("bad history item (rating is text)", "POST", "/v1/adapters",
         json.dumps({"user": "erin", "history": bad_item}).encode(), {}),
        ("unknown field in /v1/adapters", "POST", "/v1/adapters",
         json.dumps({"user": "erin", "histroy": bad_item}).encode(), {}),
        ("history_path without --history-dir", "POST", "/v1/adapters",
         json.dumps({"user": "erin", "history_path": "/etc/passwd"}).encode(), {}),
        ("no API key", "POST", chat, json.dumps({"model": alice, "messages": msg}).encode(), {"auth": None}),
        ("wrong API key", "POST", chat, json.dumps({"model": alice, "messages": msg}).encode(), {"auth": "nope"}),
        ("unknown user's model", "POST", chat, json.dumps({"model": "p2p/nobody", "messages": msg}).encode(), {}),
        ("unknown model id", "POST", chat, json.dumps({"model": "gpt-9", "messages": msg}).encode(), {}),
        ("DELETE an unknown user", "DELETE", "/v1/adapters/nobody", b"", {}),
        ("body over --max-body-mb (1 MiB)", "POST", chat,
         json.dumps({"model": alice, "messages": [{"role": "user", "content": CANARY * 80_000}]}).encode(), {}),
        ("prompt longer than the context", "POST", chat,
         json.dumps({"model": base_id, "messages": [{"role": "user", "content": "word " * 5000}]}).encode(), {}),
    ]


def bad_http_requests(tmp, log) -> list[dict]:
    import httpx

    from bench.serve import Server

    server = Server(tmp / "serve-home", lru=4, threads=1, log_path=tmp / "serve.log",
                    extra_args=["--api-key", KEY, "--max-body-mb", "1"])
    rows = []
    try:
        server.wait_ready()
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, timeout=300) as http:
            base_id = http.get("/v1/models", headers=auth).json()["data"][0]["id"]
            items = [{"text": "Loved this capo, holds the strings well.", "rating": 5}]
            r = http.post("/v1/adapters", headers=auth, json={"user": "alice", "history": items, "summary": "A guitarist."})
            r.raise_for_status()
            for case, method, path, body, opts in _cases("p2p/alice", base_id):
                headers = {"content-type": "application/json"}
                if "auth" not in opts:
                    headers.update(auth)
                elif opts["auth"] is not None:
                    headers["Authorization"] = f"Bearer {opts['auth']}"
                t0 = time.perf_counter()
                r = http.request(method, path, content=body, headers=headers)
                ms = (time.perf_counter() - t0) * 1e3
                try:
                    err = r.json().get("error", {})
                    shaped = isinstance(err, dict) and {"message", "type", "code"} <= set(err)
                except ValueError:
                    err, shaped = {}, False
                message = str(err.get("message", r.text[:200]))
                healthy = http.get("/health").status_code == 200
                rows.append({"case": case, "status": r.status_code, "code": err.get("code"), "openai_shape": shaped,
                             "message": message[:160], "quotes_request": CANARY in r.text, "ms": round(ms, 1),
                             "healthy_after": healthy})
                log(f"  {case}: {r.status_code} {err.get('code')}")
    finally:
        server.stop()
    if CANARY in (tmp / "serve.log").read_text(errors="replace"):
        rows.append({"case": "server log", "status": "-", "code": "-", "openai_shape": True,
                     "message": "the log quotes a request", "quotes_request": True, "ms": 0, "healthy_after": True})
    return rows
