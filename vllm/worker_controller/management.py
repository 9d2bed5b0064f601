# SPDX-License-Identifier: Apache-2.0
"""Management API: load, unload and inspect models and workers.

Bearer-token protected (``--admin-token``, else a generated one in a 0600
file). Loads are limited to catalog models and paths under
``--allowed-model-dir``, and their engine args to ``access.py``'s allowlist
(plus what the catalog entry allows): a management call must not be a way
to read files, open sockets or run code that the operator did not vet.
Every answer, errors included, is JSON in the OpenAI error shape.
"""

import asyncio
import socket
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from vllm.worker_controller.access import BearerAuth, check_engine_args
from vllm.worker_controller.errors import (
    AdapterConflictError,
    AdapterLoadError,
    EngineArgNotAllowedError,
    InsufficientWorkersError,
    InvalidAdapterError,
    InvalidEngineArgsError,
    ModelAlreadyLoadedError,
    ModelBusyError,
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    ParkingUnavailableError,
    PeerExportError,
    PeerExportRequestError,
    PoolTooSmallError,
    WorkerControllerError,
)
from vllm.worker_controller.replicas import is_replica
from vllm.worker_controller.responses import error_response
from vllm.worker_controller.router import ModelRouter

# Controller errors -> HTTP status; the most specific class wins (a
# PoolTooSmallError is an InsufficientWorkersError that waiting cannot fix).
_STATUS: dict[type[Exception], int] = {
    InvalidEngineArgsError: 400,
    InvalidAdapterError: 400,
    AdapterConflictError: 409,
    AdapterLoadError: 422,
    PoolTooSmallError: 400,
    EngineArgNotAllowedError: 403,
    ModelNotFoundError: 404,
    ModelAlreadyLoadedError: 409,
    ModelBusyError: 409,
    ParkingUnavailableError: 409,
    PeerExportError: 409,
    PeerExportRequestError: 400,
    ModelLoadError: 422,
    InsufficientWorkersError: 503,
    ModelUnavailableError: 503,
}
# Error ``type`` per status: the openai client's exception class names, as
# vLLM's own error bodies use them.
_KIND = {
    400: "BadRequestError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class LoadRequest(BaseModel):
    # A misspelt field would otherwise load the model without it.
    model_config = ConfigDict(extra="forbid")

    model: str
    name: str | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=1)
    """Engines to serve the model (unload it with DELETE)."""


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """What clients send as ``model``."""
    base: str
    """The model it adapts: a name the server can load."""
    path: str
    """The adapter's folder (PEFT: adapter_config.json and weights)."""


class ExportRequest(BaseModel):
    """A peer load's request for one rank's weights (``peer/client.py``)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = 0
    transport: Literal["auto", "shm", "gloo", "cuda_ipc", "nccl"] = "auto"
    host: str | None = None
    """The target's ``host_identity()``: same node, same shared memory."""


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return error_response(status, message, _KIND.get(status, "ControllerError"), param)


def _usage(model: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a model runs and what it holds there: its workers' devices and
    their memory above their boot baselines (device memory on GPU, RSS on
    CPU; None if a worker did not report it). What an operator looks at
    before deciding what to unload (``vllm-wc ps``)."""
    pids = set(model["worker_pids"])
    own = [w for w in workers if w["kind"] == "worker" and w["pid"] in pids]
    held = [(w.get("health") or {}).get("memory_bytes") for w in own]
    memory = None
    if own and all(isinstance(b, int) for b in held):
        memory = sum(
            max(0, b - (w["baseline_bytes"] or 0))
            for b, w in zip(held, own, strict=True)
        )
    return {"devices": [w["device"] for w in own], "memory_bytes": memory}


def build_management_app(router: ModelRouter, admin_token: str) -> ASGIApp:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    controller = router.controller

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()
        )
        return _error(400, f"Invalid request: {problems}")

    @app.exception_handler(WorkerControllerError)
    async def controller_error(request: Request, exc: WorkerControllerError):
        # Every route's own failures (most specific class wins in _STATUS).
        status = next((_STATUS[c] for c in type(exc).__mro__ if c in _STATUS), 500)
        retry_after = (
            exc.retry_after_s if isinstance(exc, ModelUnavailableError) else None
        )
        return error_response(
            status, str(exc), _KIND[status], retry_after_s=retry_after
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # Unknown route (404) or method (405, with its Allow header):
        # FastAPI's own answer would be {"detail": ...}.
        response = _error(
            exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"
        )
        response.headers.update(exc.headers or {})
        return response

    @app.post("/v1/controller/models")
    async def load(request: LoadRequest) -> JSONResponse:
        entry = router.catalog.get(request.model)
        if entry is None and not router.is_allowed(request.model):
            return _error(
                403,
                f"{request.model!r} is neither in the catalog nor under "
                "--allowed-model-dir",
                "model",
            )
        model = entry.model if entry else request.model
        engine_args = {**(entry.engine_args if entry else {}), **request.engine_args}
        name = request.name or request.model.rstrip("/").rsplit("/", 1)[-1]
        # Before anything is evicted for it.
        check_engine_args(
            request.engine_args, entry.allow_engine_args if entry else frozenset()
        )
        return JSONResponse(await router.add(name, model, engine_args))

    @app.delete("/v1/controller/models/{name}")
    async def unload(name: str) -> JSONResponse:
        await router.remove(name)
        return JSONResponse({"name": name, "unloaded": True})

    @app.post("/v1/controller/models/{name}/park")
    async def park(name: str, free_memory: bool = False) -> JSONResponse:
        return JSONResponse(await router.park(name, keep_memory=not free_memory))

    @app.post("/v1/controller/models/{name}/unpark")
    async def unpark(name: str) -> JSONResponse:
        return JSONResponse(await router.unpark(name))

    @app.post("/v1/controller/models/{name}/scale")
    async def scale(name: str, request: ScaleRequest) -> JSONResponse:
        return JSONResponse(await router.scaler.scale(name, request.replicas))

    @app.post("/v1/controller/adapters")
    async def add_adapter(request: AdapterRequest) -> JSONResponse:
        if not router.is_allowed(request.path):
            return _error(
                403, f"{request.path!r} is not under --allowed-model-dir", "path"
            )
        path = str(Path(request.path).resolve())  # what was checked
        return JSONResponse(await router.add_adapter(request.name, request.base, path))

    @app.delete("/v1/controller/adapters/{name}")
    async def remove_adapter(name: str) -> JSONResponse:
        return JSONResponse(await router.remove_adapter(name))

    @app.get("/v1/controller/adapters")
    async def adapters() -> JSONResponse:
        return JSONResponse(router.list_adapters())

    @app.post("/v1/controller/models/{name}/weights/export")
    async def export_weights(
        name: str, body: ExportRequest, request: Request
    ) -> JSONResponse:
        # A broadcast's source listens where this request came in: the
        # target reached that address already.
        bind_host = socket.gethostbyname(request.url.hostname or "127.0.0.1")
        descriptor = await asyncio.to_thread(
            controller.export_weights,
            name,
            body.rank,
            body.transport,
            body.host,
            bind_host,
        )
        return JSONResponse(descriptor)

    @app.get("/v1/controller/models")
    async def models(usage: bool = False) -> JSONResponse:
        # ?usage=true: figures that change by the second and cost a round
        # trip to each process; without it, a listing that stays equal
        # while nothing happens (what scripts compare).
        # Replicas' records are listed under their model.
        listed = [
            {**m, "replicas": router.scaler.describe(m["name"], usage)}
            for m in controller.list_models()
            if not is_replica(m["name"])
        ]
        if not usage:
            return JSONResponse(listed)
        workers = await asyncio.to_thread(controller.list_workers, True)
        return JSONResponse(
            [
                {**m, **_usage(m, workers), "idle_s": router.idle_s(m["name"])}
                for m in listed
            ]
        )

    @app.get("/v1/controller/weight-cache")
    async def weight_cache() -> JSONResponse:
        cache = controller.weight_cache
        return JSONResponse(
            {
                "budget_bytes": 0 if cache is None else cache.budget_bytes,
                "entries": [] if cache is None else cache.entries(),
            }
        )

    @app.get("/v1/controller/workers")
    async def workers() -> JSONResponse:
        workers = await asyncio.to_thread(controller.list_workers, True)
        return JSONResponse(workers)

    return BearerAuth(app, [admin_token], credential="admin token")
