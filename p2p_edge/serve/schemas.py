"""Request bodies of the OpenAI-compatible server, user ids, and the OpenAI error shape.

Validation errors name the field and what was expected (`field 'messages[0].content': Input should be a valid
string`), never the value sent: a prompt or a history must not come back in an error or end up in a log.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..chat import MAX_SCALE

ADAPTER_PREFIX = "p2p/"
USER_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {"message", "type", "code", "param"}}` with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
             422: "invalid_request_error"}

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ApiError.TYPES.get(status, "server_error"), "code": code,
                      "param": param}}


def check_user_id(user: Any, param: str = "user") -> str:
    """A user id names a directory under the data dir: letters, digits, '_', '.', '-', at most 64, no '..'."""
    if not isinstance(user, str) or not USER_ID.fullmatch(user) or ".." in user:
        raise ApiError(400, f"invalid user id in '{param}': use 1-64 letters, digits, '_', '.' or '-' (not starting "
                            "with '.' or '-', no '..', no path separators)", "invalid_user_id", param)
    return user


def user_of_model(model: str, base_id: str) -> str | None:
    """The user a `model` field names (`p2p/<user>`), None for the base model; unknown ids are a 404."""
    if model == base_id:
        return None
    if model.startswith(ADAPTER_PREFIX):
        return check_user_id(model[len(ADAPTER_PREFIX):], "model")
    raise ApiError(404, f"model '{_short(model)}' does not exist: use '{base_id}' or 'p2p/<user>' (GET /v1/models)",
                   "model_not_found", "model")


def _short(s: str, n: int = 80) -> str:
    """A model id echoed in an error: bounded and printable (a model id is not user content, but is untrusted)."""
    s = "".join(c if c.isprintable() else "?" for c in s[:n])
    return s + ("..." if len(s) >= n else "")


_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}  # pydantic names a Union member's error so


def field_name(loc: tuple) -> str:
    """pydantic's error location as `messages[0].content` (the leading 'body' dropped)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part not in _UNION_TAGS and "[" not in part and not part.startswith("function-"):
            out += ("." if out else "") + part
    return out


# ---------------------------------------------------------------------------------------------- request bodies

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send many optional OpenAI fields we have no use for


class Sampling(_Body):
    """What both completion endpoints share. Defaults are `p2p-edge chat`'s, not OpenAI's (tuned for a 135M model)."""

    model: str = Field(min_length=1, max_length=200)
    stream: bool = False
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=1 << 20)
    seed: Optional[int] = Field(default=None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: Union[str, list[str], None] = Field(default=None)
    n: int = Field(default=1, ge=1, le=1)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    repeat_penalty: Optional[float] = Field(default=None, ge=0.0, le=4.0, allow_inf_nan=False)
    adapter_scale: Optional[float] = Field(default=None, ge=0.0, le=MAX_SCALE, allow_inf_nan=False)
    token_prior: Optional[bool] = Field(default=None, strict=True)   # the user's token prior: None = as stored
    stream_options: Optional[dict[str, Any]] = None
    logprobs: Optional[Any] = None
    user: Optional[str] = None  # OpenAI's end-user tag: accepted and ignored (the adapter is chosen by `model`)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "field 'stop': give at most 4 non-empty strings", "invalid_value", "stop")
        return stops

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def check_unsupported(self) -> None:
        if self.logprobs not in (None, False, 0):
            raise ApiError(400, "field 'logprobs': not supported by this server", "unsupported_parameter", "logprobs")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=1 << 20)  # newer clients' max_tokens
    tools: Optional[list[Any]] = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.tools:
            raise ApiError(400, "field 'tools': tool calls are not supported by this server", "unsupported_parameter",
                           "tools")

    def llama_messages(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False
    suffix: Optional[str] = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.echo or self.suffix:
            raise ApiError(400, "fields 'echo' and 'suffix' are not supported by this server", "unsupported_parameter",
                           "echo" if self.echo else "suffix")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ApiError(400, "field 'prompt': give one string (batched prompts are not supported)",
                           "unsupported_parameter", "prompt")

    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class AdapterRequest(_Body):
    """POST /v1/adapters: personalize a user from `history` (items) or `history_path` (a file under --history-dir);
    `summary` / `no_summary` / `top_k` / `dtype` as `p2p-edge personalize` (the summary is text, never a file)."""

    model_config = ConfigDict(extra="forbid")  # a typo here (e.g. 'histroy') must not silently change the adapter
    user: str
    history: Optional[list[Any]] = Field(default=None, max_length=10_000_000)
    history_path: Optional[str] = Field(default=None, min_length=1, max_length=4096)
    summary: Optional[str] = Field(default=None, min_length=1, max_length=100_000)
    no_summary: bool = False
    top_k: Optional[int] = Field(default=None, ge=0, le=16)
    dtype: Literal["f16", "f32"] = "f16"

    def check(self) -> None:
        check_user_id(self.user)
        if (self.history is None) == (self.history_path is None):
            raise ApiError(400, "give exactly one of 'history' (a list of items) and 'history_path'",
                           "invalid_value", "history")
        if self.summary is not None and self.no_summary:
            raise ApiError(400, "'summary' and 'no_summary' exclude each other", "invalid_value", "summary")
        if self.summary is not None and not self.summary.strip():
            raise ApiError(400, "field 'summary': must not be blank", "invalid_value", "summary")
