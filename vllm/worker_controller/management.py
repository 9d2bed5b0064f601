# SPDX-License-Identifier: Apache-2.0
"""Management API: load, unload and inspect models and workers.

Bearer-token protected (``--admin-token``; generated and printed once when
not given). Loads are limited to catalog models and paths under
``--allowed-model-dir``, and ``trust_remote_code`` comes only from the
catalog: a management call must not be a way to run code that the operator
did not vet.
"""

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vllm.entrypoints.serve.utils.server_utils import AuthenticationMiddleware
from vllm.worker_controller.errors import (
    InsufficientWorkersError,
    InvalidEngineArgsError,
    ModelAlreadyLoadedError,
    ModelLoadError,
    ModelNotFoundError,
    ParkingUnavailableError,
    WorkerControllerError,
)
from vllm.worker_controller.router import ModelRouter, ModelUnavailable

# Controller errors -> HTTP status of the management API.
_STATUS = {
    InvalidEngineArgsError: 400,
    ModelNotFoundError: 404,
    ModelAlreadyLoadedError: 409,
    ModelLoadError: 422,
    ParkingUnavailableError: 409,
    InsufficientWorkersError: 503,
    ModelUnavailable: 503,
}


class LoadRequest(BaseModel):
    model: str
    name: str | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "ControllerError", "code": status}},
        status_code=status,
    )


def build_management_app(router: ModelRouter, admin_token: str) -> Any:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    controller = router.controller

    @app.post("/v1/controller/models")
    async def load(request: LoadRequest) -> JSONResponse:
        entry = router.catalog.get(request.model)
        if entry is None and not router.is_allowed(request.model):
            return _error(
                403,
                f"{request.model!r} is neither in the catalog nor under "
                "--allowed-model-dir",
            )
        if request.engine_args.get("trust_remote_code"):
            return _error(403, "trust_remote_code can be enabled only by the catalog")
        model = entry.model if entry else request.model
        engine_args = {**(entry.engine_args if entry else {}), **request.engine_args}
        name = request.name or request.model.rstrip("/").rsplit("/", 1)[-1]
        try:
            return JSONResponse(await router.add(name, model, engine_args))
        except (WorkerControllerError, ModelUnavailable) as e:
            return _error(_STATUS.get(type(e), 500), str(e))

    @app.delete("/v1/controller/models/{name}")
    async def unload(name: str) -> JSONResponse:
        try:
            await router.remove(name)
        except WorkerControllerError as e:
            return _error(_STATUS.get(type(e), 500), str(e))
        return JSONResponse({"name": name, "unloaded": True})

    @app.post("/v1/controller/models/{name}/park")
    async def park(name: str) -> JSONResponse:
        try:
            return JSONResponse(await router.park(name))
        except WorkerControllerError as e:
            return _error(_STATUS.get(type(e), 500), str(e))

    @app.post("/v1/controller/models/{name}/unpark")
    async def unpark(name: str) -> JSONResponse:
        try:
            return JSONResponse(await router.unpark(name))
        except (WorkerControllerError, ModelUnavailable) as e:
            return _error(_STATUS.get(type(e), 500), str(e))

    @app.get("/v1/controller/models")
    async def models() -> JSONResponse:
        return JSONResponse(controller.list_models())

    @app.get("/v1/controller/workers")
    async def workers() -> JSONResponse:
        workers = await asyncio.to_thread(controller.list_workers, True)
        return JSONResponse(workers)

    return AuthenticationMiddleware(app, [admin_token])
