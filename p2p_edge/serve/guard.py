"""The ASGI layer in front of the app: API key, Host check, body size limit, request metrics, and a last-resort
500 that logs where it failed but never an exception's message (it could quote a prompt or a history)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import traceback

from starlette.exceptions import HTTPException
from starlette.routing import Match

from .metrics import Metrics
from .schemas import error_body

log = logging.getLogger("uvicorn.error")
OPEN_PATHS = ("/health",)  # answered without the API key


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit (FastAPI lets HTTPExceptions through its body parsing)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the server's limit of {limit} bytes")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    """`Host` header without the port (`[::1]:8000` -> `::1`)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def safe_traceback(e: BaseException) -> str:
    """Where an exception was raised (files, lines, functions) and its type: no message, no local values."""
    frames = "".join(traceback.format_tb(e.__traceback__)[-6:])
    return f"{frames}{type(e).__module__}.{type(e).__qualname__} (message not logged)"


class Guard:
    def __init__(self, app, *, api_key: str | None, max_body: int, metrics: Metrics):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self._expected = f"Bearer {api_key}".encode() if api_key else None

    def route_of(self, scope) -> str:
        for route in getattr(self.app, "routes", []):
            try:
                match, _ = route.matches(scope)
            except Exception:
                continue
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [None]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await reply(send_tracked, *refusal)
                return
            await self.app(scope, self.limited(scope, receive), send_tracked)
        except BodyTooLarge as e:
            if status[0] is None:
                await reply(send_tracked, 413, e.detail, "request_too_large")
        except Exception as e:  # a bug: answer 500, log the place and the type only
            log.error("internal error in %s %s:\n%s", scope.get("method"), self.route_of(scope), safe_traceback(e))
            if status[0] is None:
                await reply(send_tracked, 500, "internal server error (the server log says where)", "internal_error")
        finally:
            self.metrics.request(scope.get("method", "?"), self.route_of(scope), status[0] or 500)

    def refusal(self, scope) -> tuple | None:
        """(status, message, code, headers) when a request is refused before the app sees it."""
        headers = dict(scope.get("headers") or [])
        if self._expected is not None:
            if scope.get("path") not in OPEN_PATHS:
                got = headers.get(b"authorization", b"")
                if not hmac.compare_digest(got, self._expected):
                    what = "missing" if not got else "wrong"
                    return (401, f"{what} API key: send 'Authorization: Bearer KEY' (the server's --api-key)",
                            "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        else:  # no key: loopback only, and a page in a browser must not reach it by DNS rebinding
            host = headers.get(b"host", b"").decode("latin-1")
            if host and not is_loopback(_host_of(host)):
                return (403, "Host header is not a loopback name (DNS rebinding protection; start the server with "
                             "--api-key to serve other names)", "forbidden_host")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "malformed Content-Length header", "invalid_request"
            if n > self.max_body:
                return 413, f"request body is over the server's limit of {self.max_body} bytes", "request_too_large"
        return None

    def limited(self, scope, receive):
        """`receive`, raising BodyTooLarge once more than max_body bytes arrived (a chunked body has no length)."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return wrapped


async def reply(send, status: int, message: str, code: str, headers=()) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
