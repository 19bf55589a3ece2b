"""The FastAPI app: models, adapters, health and metrics routes, and errors in OpenAI's shape.

`build_app` returns the ASGI app to serve: the FastAPI app behind `Guard` (API key, Host check, body limit,
request metrics). Routes that touch the model hand their work to the engine's worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import InputError, ModelFileError
from .completions import add_routes as add_completion_routes
from .completions import as_api_error
from .engine import Engine, adapter_path, file_sha256, stored_users
from .guard import Guard
from .histories import load_from_dir, load_inline
from .schemas import ADAPTER_PREFIX, AdapterRequest, ApiError, check_user_id, error_body, field_name

DEFAULT_MAX_BODY = 16 << 20


def build_app(engine: Engine, *, api_key: str | None = None, history_dir: Path | None = None,
              max_body: int = DEFAULT_MAX_BODY):
    kw = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:  # FastAPI's OpenTelemetry: nothing leaves, nothing logged
        kw["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                           "auto_configure": False}
    app = FastAPI(title="p2p-edge", docs_url=None, redoc_url=None, openapi_url=None, **kw)
    app.state.engine = engine
    app.state.history_dir = Path(history_dir).resolve() if history_dir is not None else None
    app.state.started = int(time.time())
    _errors(app)
    add_completion_routes(app)
    _routes(app)
    return Guard(app, api_key=api_key, max_body=max_body, metrics=engine.metrics)


# -------------------------------------------------------------------------------------------------------- errors


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(400, "malformed JSON in the request body", "invalid_json"), 400)
        param = field_name(tuple(first.get("loc", ())))
        ctype = request.headers.get("content-type", "")
        if not param and "json" not in ctype:
            msg = "the request body must be a JSON object sent with 'Content-Type: application/json'"
        elif not param:
            msg = f"the request body must be a JSON object ({first.get('msg', 'invalid')})"
        else:
            msg = f"field '{param}': {first.get('msg', 'invalid value')}"  # pydantic's msg names no input value
        return JSONResponse(error_body(400, msg, "invalid_value", param or None), 400)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # Guard logs it (place and type only)
        return JSONResponse(error_body(500, "internal server error (the server log says where)", "internal_error"), 500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        msg = "no such route: see GET /v1/models" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(e.status_code, msg, codes.get(e.status_code, "http_error")), e.status_code,
                            headers=getattr(e, "headers", None))


# -------------------------------------------------------------------------------------------------------- routes


def _model(id_: str, created: int, parent: str | None = None) -> dict:
    doc = {"id": id_, "object": "model", "created": created, "owned_by": "p2p-edge"}
    if parent is not None:
        doc["parent"] = parent
    return doc


def _mtime(p: Path) -> int:
    try:
        return int(p.stat().st_mtime)
    except OSError:
        return 0


def _models(engine: Engine, started: int) -> list[dict]:
    return [_model(engine.base_id, started)] + [
        _model(ADAPTER_PREFIX + u, _mtime(adapter_path(u)), engine.base_id) for u in stored_users()]


def _adapter_doc(user: str, loaded: set[str]) -> dict:
    path = adapter_path(user)
    try:
        sha, size = file_sha256(path), path.stat().st_size
    except OSError:
        raise ApiError(404, f"no adapter stored for user '{user}'", "user_not_found", "user") from None
    return {"id": ADAPTER_PREFIX + user, "object": "adapter", "user": user, "created": _mtime(path), "sha256": sha,
            "bytes": size, "loaded": user in loaded}


def _routes(app: FastAPI) -> None:
    state = app.state

    @app.get("/health")
    async def health():
        e: Engine = state.engine
        return {"status": "ok", "model": e.base_id, "adapters_loaded": len(e.loaded_users()),
                "personalize": e.client is not None}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": await run_in_threadpool(_models, state.engine, state.started)}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        for m in await run_in_threadpool(_models, state.engine, state.started):
            if m["id"] == model_id:
                return m
        raise ApiError(404, "no such model (GET /v1/models lists them)", "model_not_found", "model")

    @app.get("/v1/adapters")
    async def list_adapters():
        loaded = state.engine.loaded_users()
        docs = await run_in_threadpool(lambda: [_adapter_doc(u, loaded) for u in stored_users()])
        return {"object": "list", "data": docs}

    @app.get("/v1/adapters/{user}")
    async def get_adapter(user: str):
        check_user_id(user)
        return await run_in_threadpool(_adapter_doc, user, state.engine.loaded_users())

    @app.delete("/v1/adapters/{user}")
    async def delete_adapter(user: str):
        check_user_id(user)
        engine: Engine = state.engine
        await _on_worker(engine, engine.forget, user)
        return {"id": ADAPTER_PREFIX + user, "object": "adapter", "user": user, "deleted": True}

    @app.post("/v1/adapters")
    async def create_adapter(body: AdapterRequest):
        body.check()
        engine: Engine = state.engine
        if engine.client is None:
            raise ApiError(503, f"personalization is unavailable on this server: {engine.client_error}",
                           "personalization_unavailable")
        t = time.perf_counter()
        try:  # validated off the event loop and off the model's thread
            if body.history is not None:
                history = await run_in_threadpool(load_inline, body.history)
            else:
                history = await run_in_threadpool(load_from_dir, state.history_dir, body.history_path)
        except InputError as e:  # the CLI's one line: source, line, field, the kind of a bad value
            raise ApiError(400, str(e), "invalid_history", "history" if body.history is not None else "history_path")
        read_ms = (time.perf_counter() - t) * 1e3
        return await _on_worker(engine, lambda: engine.personalize(
            body.user, history, summary=body.summary, no_summary=body.no_summary, top_k=body.top_k,
            dtype=body.dtype, read_ms=read_ms))


async def _on_worker(engine: Engine, fn, *args):
    try:
        return await asyncio.wrap_future(engine.submit(fn, *args))
    except (InputError, ModelFileError) as e:
        raise as_api_error(e) from None


def history_dir_arg(path: Path | None) -> Path | None:
    """--history-dir, checked at start-up: an existing directory (resolved, so symlinks cannot move it later)."""
    if path is None:
        return None
    from ..errors import P2PError

    if not Path(path).is_dir():
        raise P2PError(f"--history-dir {path}: not a directory")
    return Path(os.path.realpath(path))
