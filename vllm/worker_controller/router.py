# SPDX-License-Identifier: Apache-2.0
"""Many models behind one OpenAI-compatible port, routed by ``model``.

Each loaded model gets vLLM's own OpenAI app (``build_app`` +
``init_app_state`` over the model's ``AsyncLLM``): protocol, chat templates,
streaming and error bodies are upstream's. This ASGI app only reads the
request's ``model``, hands the request to that model's app, and answers what
spans models (``GET /v1/models``, unknown models, ``/health``).
"""

import asyncio
import json
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from vllm.entrypoints.openai.api_server import build_app, init_app_state
from vllm.entrypoints.openai.engine.protocol import ErrorInfo, ErrorResponse
from vllm.logger import init_logger
from vllm.worker_controller.controller import WorkerController

logger = init_logger(__name__)


@dataclass
class _Served:
    app: FastAPI
    model: str


class ModelRouter:
    """ASGI app: dispatches OpenAI requests to per-model vLLM apps."""

    def __init__(self, controller: WorkerController, args: Namespace):
        self.controller = controller
        self.args = args
        self._served: dict[str, _Served] = {}

    async def add(self, name: str, model: str, engine_args: dict[str, Any]) -> dict:
        """Loads ``model`` as ``name`` and builds its OpenAI app."""
        loaded = await asyncio.to_thread(
            self.controller.load, model, name, **engine_args
        )
        client = self.controller.engine_client(name)
        tasks = await client.get_supported_tasks()
        args = Namespace(**{**vars(self.args), "model": model})
        args.served_model_name = [name]
        app = build_app(args, tasks, client.model_config)
        await init_app_state(client, app.state, args, tasks)
        self._served[name] = _Served(app, model)
        return {"name": name, "timings_s": loaded.timings_s}

    async def remove(self, name: str) -> None:
        self._served.pop(name, None)
        await asyncio.to_thread(self.controller.unload, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do here
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await _json(send, 200, {"status": "ok"})
        elif path == "/v1/models" and method == "GET":
            await _json(send, 200, {"object": "list", "data": self._model_cards()})
        elif method == "POST" and path.startswith("/v1/"):
            await self._dispatch(scope, receive, send)
        else:
            await _error(send, 404, f"Not found: {method} {path}", "NotFoundError")

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        try:
            name = json.loads(body)["model"]
        except (ValueError, KeyError, TypeError):
            await _error(
                send,
                400,
                "Request body must be JSON with a 'model' field",
                "BadRequestError",
                param="model",
            )
            return
        served = self._served.get(name)
        if served is None:
            await _error(
                send,
                404,
                f"The model `{name}` does not exist.",
                "NotFoundError",
                param="model",
            )
            return
        await served.app(scope, _replay(body, receive), send)

    def _model_cards(self) -> list[dict[str, Any]]:
        states = {m["name"]: m["state"] for m in self.controller.list_models()}
        return [
            {
                "id": name,
                "object": "model",
                "owned_by": "vllm",
                "root": served.model,
                "state": states.get(name, "unknown"),
            }
            for name, served in self._served.items()
        ]


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Yields the already-read body once, then the client's own messages
    (so that upstream's disconnect checks still see real disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _json(send: Send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _error(
    send: Send, status: int, message: str, kind: str, param: str | None = None
) -> None:
    """An OpenAI-style error body, as vLLM's own handlers produce."""
    error = ErrorResponse(
        error=ErrorInfo(message=message, type=kind, param=param, code=status)
    )
    await _json(send, status, error.model_dump())
