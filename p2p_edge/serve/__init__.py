"""`p2p-edge serve`: an OpenAI-compatible HTTP server on this machine, one LoRA adapter per user.

    GET  /v1/models                  the base model and one `p2p/<user>` per stored adapter
    POST /v1/chat/completions        OpenAI's shapes; `model: "p2p/<user>"` picks that user's adapter
    POST /v1/completions             (stream: true -> server-sent events ending with `data: [DONE]`)
    POST /v1/adapters                {"user", "history": [items] | "history_path"} -> personalize, as the CLI does
    GET  /v1/adapters, DELETE /v1/adapters/<user> (= p2p-edge forget --user)
    GET  /health, GET /metrics       (Prometheus text)

Needs the `serve` extra (fastapi, uvicorn). Imports no torch: modules here are the client's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import P2PError

__all__ = ["serve", "check_host"]


def check_host(host: str, api_key: str | None) -> None:
    """Only loopback without a key: anything else on the network would reach every user's adapter and data."""
    from .guard import is_loopback

    if not is_loopback(host) and not api_key:
        raise P2PError(f"--host {host} is not a loopback address: refusing to serve it without --api-key KEY "
                       "(or bind 127.0.0.1)")


def serve(*, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_loaded_adapters: int = 64,
          threads: int | None = None, history_dir: Path | None = None, hypernet: Path | None = None,
          base_model: Path | None = None, max_body: int | None = None, log=print) -> None:
    """Load the models, then serve until Ctrl-C / SIGTERM. Exceptions are logged by place and type only, also with
    --debug: their messages could quote a prompt or a history."""
    check_host(host, api_key)
    try:
        import uvicorn

        from .app import DEFAULT_MAX_BODY, build_app, history_dir_arg
        from .engine import Engine, stored_users
    except ImportError as e:
        raise P2PError(f"serve needs the serve extra: pip install 'p2p-edge[serve]' ({e})") from None
    history_dir = history_dir_arg(history_dir)
    if hypernet is not None and not Path(hypernet).is_file():
        raise P2PError(f"{hypernet}: hypernet not found")
    engine = Engine(base_model=base_model, hypernet=hypernet, threads=threads, max_loaded=max_loaded_adapters,
                    need_hypernet=hypernet is not None)
    app = build_app(engine, api_key=api_key, history_dir=history_dir, max_body=max_body or DEFAULT_MAX_BODY)
    shown = f"[{host}]" if ":" in host else host
    log(f"p2p-edge serve: http://{shown}:{port}/v1 · base model {engine.base_id} · "
        f"{len(stored_users())} stored adapter(s), up to {engine.max_loaded} loaded"
        + ("" if engine.client else f" · personalization unavailable: {engine.client_error}")
        + (" · API key required" if api_key else ""))
    config = uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
