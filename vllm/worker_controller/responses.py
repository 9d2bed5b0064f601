# SPDX-License-Identifier: Apache-2.0
"""OpenAI-shaped error answers for everything the front door says itself,
and the headers it adds to a model's answers.

vLLM's own apps answer model requests; what spans models (routing, auth,
capacity, the management API) answers here, in the same body shape as
vLLM's ``ErrorResponse``, so a client needs one error parser. ``503``s say
when to come back (``Retry-After``) where waiting helps.
"""

import json
import math
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Send

from vllm.worker_controller.compat.serving import ErrorInfo, ErrorResponse


def error_body(
    status: int, message: str, kind: str, param: str | None = None
) -> dict[str, Any]:
    """The body vLLM's handlers produce: ``{"error": {message, type, ...}}``."""
    error = ErrorResponse(
        error=ErrorInfo(message=message, type=kind, param=param, code=status)
    )
    return error.model_dump()


def retry_headers(retry_after_s: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds (at least 1), if waiting helps."""
    if retry_after_s is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(retry_after_s)))}


def error_response(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    """The same error as a Starlette response (for FastAPI handlers)."""
    return JSONResponse(
        error_body(status, message, kind, param),
        status_code=status,
        headers=retry_headers(retry_after_s),
    )


async def send_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    """A whole JSON response on a raw ASGI ``send``, serialised as
    Starlette's ``JSONResponse`` (upstream's) serialises it."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def send_error(
    send: Send,
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """An OpenAI-shaped error on a raw ASGI ``send``."""
    await send_json(
        send,
        status,
        error_body(status, message, kind, param),
        {**retry_headers(retry_after_s), **(headers or {})},
    )


def with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``headers`` added to the response's start."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


class UnlessNotFound:
    """An ASGI ``send`` that passes an answer on unless it is a 404, which
    it keeps (another model's app may know what this one does not)."""

    def __init__(self, send: Send):
        self._send = send
        self.status: int | None = None
        self.kept: list[dict] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        if self.status == 404:
            self.kept.append(message)
        else:
            await self._send(message)


def engine_stopped_as_503(send: Send, stopped: Callable[[], str | None]) -> Send:
    """Upstream's serving layer answers a request whose engine died with a
    500 (its own ``try``/``except`` turns ``EngineDeadError`` into one).
    Where the model's engine has in fact stopped, that is no server bug: the
    answer becomes a 503 with the reason and ``Retry-After``, since the
    model is loaded again on the next request."""
    replaced = False

    async def checked(message: dict) -> None:
        nonlocal replaced
        if replaced:
            return  # the rest of upstream's 500
        if (
            message["type"] == "http.response.start"
            and message["status"] == 500
            and (why := stopped()) is not None
        ):
            replaced = True
            await send_error(send, 503, why, "ServiceUnavailableError", retry_after_s=1)
            return
        await send(message)

    return checked


async def send_model_not_found(send: Send, name: str) -> None:
    shown = name if len(name) <= 100 else name[:100] + "..."
    await send_error(
        send, 404, f"The model `{shown}` does not exist.", "NotFoundError", "model"
    )


async def send_method_not_allowed(
    send: Send, method: str, path: str, allow: str
) -> None:
    await send_error(
        send,
        405,
        f"Method {method} not allowed for {path}",
        "MethodNotAllowedError",
        headers={"allow": allow},
    )
