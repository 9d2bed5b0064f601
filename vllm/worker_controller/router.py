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
import math
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.openai.api_server import build_app, init_app_state
from vllm.entrypoints.openai.engine.protocol import ErrorInfo, ErrorResponse
from vllm.entrypoints.serve.utils.server_utils import AuthenticationMiddleware
from vllm.logger import init_logger
from vllm.worker_controller.controller import ModelState, WorkerController
from vllm.worker_controller.errors import (
    ModelAlreadyLoadedError,
    ParkingUnavailableError,
    WorkerControllerError,
)
from vllm.worker_controller.metrics import ControllerMetrics

logger = init_logger(__name__)


@dataclass
class CatalogEntry:
    """Where a model name loads from, with its own engine args."""

    model: str
    engine_args: dict[str, Any] = field(default_factory=dict)
    keep_alive_s: float | None = None
    """Seconds idle before unloading (inf: never); None: --keep-alive."""


@dataclass
class _Served:
    app: ASGIApp
    model: str
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    keep_alive_s: float | None = None


class ModelUnavailable(Exception):
    """No worker could be freed for a model within the wait budget."""


class ModelRouter:
    """ASGI app: dispatches OpenAI requests to per-model vLLM apps.

    A request for a model that is not loaded but lies under
    ``allowed_model_dir`` loads it first (concurrent requests share one
    load), and one for a parked model unparks it. Room is made from the
    least recently used idle models: one is parked (if the controller's
    host-RAM budget allows) or unloaded when device memory or
    ``max_loaded_models`` runs out, and unloaded when processes run out.
    """

    def __init__(
        self,
        controller: WorkerController,
        args: Namespace,
        engine_args: dict[str, Any],
        allowed_model_dir: Path | None = None,
        max_loaded_models: int | None = None,
        load_wait_s: float = 30.0,
        catalog: dict[str, CatalogEntry] | None = None,
        keep_alive_s: float = math.inf,
    ):
        self.controller = controller
        self.args = args
        self.engine_args = engine_args
        self.allowed_model_dir = allowed_model_dir
        self.max_loaded_models = max_loaded_models
        self.load_wait_s = load_wait_s
        self.catalog = catalog or {}
        self.keep_alive_s = keep_alive_s
        self.metrics = ControllerMetrics()
        self._served: dict[str, _Served] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._unparking: dict[str, asyncio.Task] = {}
        self._openai: ASGIApp = self._openai_endpoints
        if args.api_key:
            self._openai = AuthenticationMiddleware(self._openai, args.api_key)
        self._management: ASGIApp | None = None

    def set_management(self, app: ASGIApp) -> None:
        self._management = app

    def resolve(self, name: str) -> CatalogEntry | None:
        """Where a model name may be loaded from: the catalog, else a folder
        of that name under the allowed directory, else nowhere."""
        if name in self.catalog:
            return self.catalog[name]
        if self.allowed_model_dir is None or "/" in name or name.startswith("."):
            return None
        path = self.allowed_model_dir / name
        if not (path / "config.json").is_file():
            return None
        return CatalogEntry(model=str(path))

    def is_allowed(self, model: str) -> bool:
        if self.allowed_model_dir is None:
            return False
        root = self.allowed_model_dir.resolve()
        return Path(model).resolve().is_relative_to(root)

    async def add(
        self, name: str, model: str, engine_args: dict[str, Any] | None = None
    ) -> dict:
        """Loads ``model`` as ``name`` (making room first) and serves it."""
        if name in self._served:  # before evicting anything for it
            raise ModelAlreadyLoadedError(f"A model named {name!r} is already loaded")
        args = {**self.engine_args, **(engine_args or {})}
        await self._make_room(
            args.get("gpu_memory_utilization", EngineArgs.gpu_memory_utilization),
            args.get("tensor_parallel_size", self.args.tensor_parallel_size),
        )
        try:
            loaded = await asyncio.to_thread(self.controller.load, model, name, **args)
        except Exception:
            self.metrics.failures.inc()
            raise
        self.metrics.observe_load(loaded.timings_s)
        client = self.controller.engine_client(name)
        tasks = await client.get_supported_tasks()
        args = Namespace(**{**vars(self.args), "model": model})
        args.served_model_name = [name]
        app = build_app(args, tasks, client.model_config)
        await init_app_state(client, app.state, args, tasks)
        keep_alive = self.catalog.get(name, CatalogEntry(model)).keep_alive_s
        self._served[name] = _Served(app, model, keep_alive_s=keep_alive)
        return {"name": name, "model": model, "timings_s": loaded.timings_s}

    async def remove(self, name: str) -> None:
        self._served.pop(name, None)
        await asyncio.to_thread(self.controller.unload, name)
        self.metrics.unloads.inc()

    async def evict(self, name: str) -> None:
        """Parks an idle model if the host-RAM budget allows, else unloads it."""
        self.metrics.evictions.inc()
        if self.controller.can_park(name):
            await self.park(name)
        else:
            await self.remove(name)

    async def park(self, name: str) -> dict:
        served = self._served.get(name)
        if served is not None and served.in_flight:
            raise ParkingUnavailableError(
                f"Model {name!r} has {served.in_flight} requests in flight"
            )
        timings = await self.controller.park(name)
        self.metrics.parks.inc()
        return {"name": name, "state": ModelState.PARKED.value, "timings_s": timings}

    async def unpark(self, name: str) -> dict:
        """Makes room on the model's devices, then unparks it (one unpark
        however many requests wait for it)."""
        if name not in self._unparking:
            self._unparking[name] = asyncio.create_task(self._unpark(name))
            self._unparking[name].add_done_callback(
                lambda _: self._unparking.pop(name, None)
            )
        return await asyncio.shield(self._unparking[name])

    async def _unpark(self, name: str) -> dict:
        if (state := self.controller.state(name)) != ModelState.PARKED:
            what = state.value if state else "not loaded"
            raise ParkingUnavailableError(f"Model {name!r} is {what}, not parked")
        client = self.controller.engine_client(name)
        await self._make_room(
            client.vllm_config.cache_config.gpu_memory_utilization, 0, name
        )
        timings = await self.controller.unpark(name)
        self.metrics.unparks.inc()
        return {"name": name, "state": ModelState.READY.value, "timings_s": timings}

    async def expire_idle(self, period_s: float = 1.0) -> None:
        """Parks or unloads awake models idle for longer than their
        keep-alive (forever: never)."""
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            for name, served in list(self._served.items()):
                keep_alive = served.keep_alive_s
                if keep_alive is None:
                    keep_alive = self.keep_alive_s
                if (
                    not served.in_flight
                    and now - served.last_used >= keep_alive
                    and self.controller.state(name) == ModelState.READY
                ):
                    logger.info("Idle for %.0f s: %r makes room", keep_alive, name)
                    await self.evict(name)

    async def _ensure_loaded(self, name: str, entry: CatalogEntry) -> _Served:
        """One load per name, however many requests wait for it."""
        if name not in self._loading:
            self._loading[name] = asyncio.create_task(
                self.add(name, entry.model, entry.engine_args)
            )
            self._loading[name].add_done_callback(
                lambda _: self._loading.pop(name, None)
            )
        await asyncio.shield(self._loading[name])
        return self._served[name]

    async def _make_room(
        self, gpu_memory_utilization: float, workers: int, unparking: str | None = None
    ) -> None:
        """Frees what one more awake engine needs, LRU idle models first.

        ``workers``: processes a new engine leases (0 when ``unparking``, which
        keeps its own). Waits up to ``load_wait_s`` for busy models to idle.
        """
        deadline = time.monotonic() + self.load_wait_s
        while shortage := self._shortage(gpu_memory_utilization, workers, unparking):
            states, unload = shortage
            idle = [
                (s.last_used, n)
                for n, s in self._served.items()
                if not s.in_flight and self.controller.state(n) in states
            ]
            if idle:
                name = min(idle)[1]
                logger.info("Making room: least recently used model %r", name)
                if unload:
                    self.metrics.evictions.inc()
                    await self.remove(name)
                else:
                    await self.evict(name)
            elif time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            else:
                raise ModelUnavailable("all loaded models are busy")

    def _shortage(
        self, gpu_memory_utilization: float, workers: int, unparking: str | None
    ) -> tuple[set[ModelState], bool] | None:
        """What must go for one more awake engine: (states of the models
        that may make room, whether they must be unloaded), or None."""
        ready = {ModelState.READY}
        awake = sum(
            self.controller.state(n)
            in (ModelState.LOADING, ModelState.READY, ModelState.UNPARKING)
            for n in self._served
        )
        if self.max_loaded_models is not None and awake >= self.max_loaded_models:
            return ready, False
        idle = sum(
            w["kind"] == "worker" and w["state"] == "idle"
            for w in self.controller.list_workers()
        )
        if idle < workers:  # only an unload gives processes back
            return {ModelState.READY, ModelState.PARKED, ModelState.FAILED}, True
        if not self.controller.has_room(gpu_memory_utilization, workers, unparking):
            return ready, False
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do here
        path = scope["path"]
        if path == "/health":
            await _json(send, 200, {"status": "ok"})
        elif path == "/metrics":
            body = self.metrics.render(self.controller)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif path.startswith("/v1/controller") and self._management is not None:
            await self._management(scope, receive, send)
        else:
            await self._openai(scope, receive, send)

    async def _openai_endpoints(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" and method == "GET":
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
        while self.controller.state(name) == ModelState.PARKING:
            await asyncio.sleep(0.02)
        if served is not None and self.controller.state(name) == ModelState.PARKED:
            try:
                await self.unpark(name)
            except (WorkerControllerError, ModelUnavailable) as e:
                await _unavailable(send, name, f"is parked and cannot unpark now: {e}")
                return
        if served is None and (entry := self.resolve(name)) is not None:
            try:
                served = await self._ensure_loaded(name, entry)
            except WorkerControllerError as e:
                logger.error("Loading %r on request failed: %s", name, e)
                await _error(
                    send, 500, f"The model `{name}` failed to load: {e}", "LoadError"
                )
                return
            except ModelUnavailable as e:
                await _unavailable(send, name, f"cannot be loaded now: {e}")
                return
        if served is None:
            await _error(
                send,
                404,
                f"The model `{name}` does not exist.",
                "NotFoundError",
                param="model",
            )
            return
        served.in_flight += 1
        served.last_used = time.monotonic()
        try:
            await served.app(scope, _replay(body, receive), send)
        finally:
            served.in_flight -= 1
            served.last_used = time.monotonic()

    def _model_cards(self) -> list[dict[str, Any]]:
        states = {m["name"]: m["state"] for m in self.controller.list_models()}
        cards = {
            name: {"root": served.model, "state": states.get(name, "unknown")}
            for name, served in self._served.items()
        }
        for name in self._loading:
            cards.setdefault(name, {"root": None, "state": "loading"})
        for name, entry in self.catalog.items():
            cards.setdefault(name, {"root": entry.model, "state": "available"})
        if self.allowed_model_dir is not None:
            for path in sorted(self.allowed_model_dir.glob("*/config.json")):
                cards.setdefault(
                    path.parent.name, {"root": str(path.parent), "state": "available"}
                )
        return [
            {"id": name, "object": "model", "owned_by": "vllm", **card}
            for name, card in cards.items()
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


async def _json(
    send: Send, status: int, payload: dict, headers: list | None = None
) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _unavailable(send: Send, name: str, why: str) -> None:
    """503 with Retry-After: the model exists but cannot serve yet."""
    await _error(
        send,
        503,
        f"The model `{name}` {why}",
        "ServiceUnavailableError",
        param="model",
        headers=[(b"retry-after", b"5")],
    )


async def _error(
    send: Send,
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    headers: list | None = None,
) -> None:
    """An OpenAI-style error body, as vLLM's own handlers produce."""
    error = ErrorResponse(
        error=ErrorInfo(message=message, type=kind, param=param, code=status)
    )
    await _json(send, status, error.model_dump(), headers)
