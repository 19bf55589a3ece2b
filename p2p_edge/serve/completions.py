"""POST /v1/chat/completions and /v1/completions: OpenAI's request and response shapes, `stream: true` as
server-sent events ending with `data: [DONE]`.

The request's model job runs on the engine's worker thread and hands its pieces to the event loop through an
asyncio queue: the loop never waits on llama.cpp, a slow reader never holds the model (the job does not wait for
the client), and a client that leaves stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import InputError, ModelFileError
from .engine import Engine, Generation, adapter_path
from .schemas import ApiError, ChatRequest, CompletionRequest, Sampling, user_of_model

# `p2p-edge chat`'s sampling defaults (a 135M model rambles at OpenAI's temperature 1 and no repeat penalty).
DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context


class _Pipe:
    """Worker thread -> event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def emit(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (server shutting down)
            pass


def _params(req: Sampling, max_tokens: int | None, stops: list[str]) -> dict:
    return {
        "max_tokens": max_tokens,
        "temperature": DEFAULTS["temperature"] if req.temperature is None else req.temperature,
        "top_p": DEFAULTS["top_p"] if req.top_p is None else req.top_p,
        "repeat_penalty": DEFAULTS["repeat_penalty"] if req.repeat_penalty is None else req.repeat_penalty,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "presence_penalty": req.presence_penalty or 0.0,
        "seed": req.seed,
        "stop": stops,
    }


def as_api_error(e: BaseException) -> BaseException:
    """What the worker raised, as the request's answer (anything else stays an internal error)."""
    if isinstance(e, InputError):
        return ApiError(400, str(e), "invalid_value")
    if isinstance(e, ModelFileError):
        return ApiError(500, str(e), "model_file_error")
    return e


def _check_model(engine: Engine, model: str) -> str | None:
    user = user_of_model(model, engine.base_id)
    if user is not None and not adapter_path(user).is_file():
        raise ApiError(404, f"model 'p2p/{user}' does not exist: no adapter stored for user '{user}' "
                            "(create it with POST /v1/adapters)", "model_not_found", "model")
    return user


def add_routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        body.check_unsupported()
        stops = body.stops()
        user = _check_model(request.app.state.engine, body.model)
        params = _params(body, body.max_completion_tokens or body.max_tokens, stops)
        return await _respond(request, body, user, params, chat=body.llama_messages(), prompt=None)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        body.check_unsupported()
        stops = body.stops()
        user = _check_model(request.app.state.engine, body.model)
        params = _params(body, body.max_tokens or COMPLETIONS_MAX_TOKENS, stops)
        return await _respond(request, body, user, params, chat=None, prompt=body.prompt_text())


async def _respond(request: Request, body: Sampling, user, params: dict, *, chat, prompt):
    engine: Engine = request.app.state.engine
    pipe = _Pipe()
    g = Generation(user=user, scale=body.adapter_scale, chat=chat, prompt=prompt, params=params, emit=pipe.emit,
                   prior=body.token_prior)
    fmt = _Format(body.model, chat=chat is not None)
    engine.submit(engine.generate, g)
    try:
        first = await pipe.queue.get()  # the job ran: its adapter is active and its first token out (or it failed)
        if first[0] == "error":
            raise as_api_error(first[1])
        if body.stream:
            return StreamingResponse(_sse(pipe, g, fmt, first, body.include_usage()), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        texts, event = [], first
        while event[0] == "text":
            texts.append(event[1])
            event = await pipe.queue.get()
        if event[0] == "error":
            raise as_api_error(event[1])
        return JSONResponse(fmt.whole("".join(texts), *event[1]))
    except BaseException:
        g.cancelled.set()
        raise


async def _sse(pipe: _Pipe, g: Generation, fmt: "_Format", first, include_usage: bool):
    try:
        if fmt.chat:
            yield fmt.event(fmt.chunk({"role": "assistant", "content": ""}, None))
        event = first
        while True:
            kind, value = event
            if kind == "text":
                yield fmt.event(fmt.chunk(value, None))
            elif kind == "end":
                finish, n_prompt, n_completion = value
                yield fmt.event(fmt.chunk({} if fmt.chat else "", finish))
                if include_usage:
                    yield fmt.event({**fmt.chunk({} if fmt.chat else "", None), "choices": [],
                                     "usage": _usage(n_prompt, n_completion)})
                break
            else:  # failed mid-stream: the status line is sent already, so the error is an event
                err = as_api_error(value)
                if not isinstance(err, ApiError):
                    raise err
                yield fmt.event(err.body())
                break
            event = await pipe.queue.get()
        yield "data: [DONE]\n\n"
    finally:
        g.cancelled.set()  # the client left (or all is sent): a generation still running stops at its next token


def _usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


class _Format:
    """OpenAI's response objects for one request."""

    def __init__(self, model: str, *, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def chunk(self, piece, finish: str | None) -> dict:
        if self.chat:
            delta = piece if isinstance(piece, dict) else {"content": piece}
            return {**self._head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**self._head("text_completion"),
                "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}

    def whole(self, text: str, finish: str, n_prompt: int, n_completion: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(n_prompt, n_completion)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": _usage(n_prompt, n_completion)}

    @staticmethod
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
