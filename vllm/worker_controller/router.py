# SPDX-License-Identifier: Apache-2.0
"""Many models behind one OpenAI-compatible port, routed by ``model``.

Each loaded model gets vLLM's own OpenAI app (``build_app`` +
``init_app_state`` over the model's ``AsyncLLM``): protocol, chat templates,
streaming and error bodies are upstream's. This ASGI app reads the
request's ``model``, makes sure that model can serve (loading, reloading or
unparking it, with room reserved by ``placement.py``), and hands the request
to the model's app. It answers itself what spans models (``GET /v1/models``,
unknown models and routes, ``/health``, ``/metrics``), always with an
OpenAI-shaped error body: a 4xx for bad input, a 503 with ``Retry-After``
when the model cannot serve yet. A LoRA adapter's name routes to its base
model's app, which serves the adapter through upstream's LoRA support
(``adapters.py``).
"""

import asyncio
import contextlib
import json
import math
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm import __version__ as VLLM_VERSION
from vllm.logger import init_logger
from vllm.worker_controller.access import BearerAuth
from vllm.worker_controller.adapters import (
    LORA_RANKS,
    AdapterEntry,
    AdapterRegistry,
    check_adapter,
    lora_engine_args,
)
from vllm.worker_controller.compat.lora import RUNTIME_LORA_PATHS
from vllm.worker_controller.compat.serving import (
    EngineDeadError,
    EngineGenerateError,
    ModelCard,
    ModelPermission,
    build_app,
    init_app_state,
)
from vllm.worker_controller.controller import (
    LoadResult,
    ModelState,
    PreparedLoad,
    WorkerController,
)
from vllm.worker_controller.errors import (
    AdapterConflictError,
    AdapterLoadError,
    InvalidAdapterError,
    LoRANotEnabledError,
    ModelAlreadyLoadedError,
    ModelBusyError,
    ModelNotFoundError,
    ModelUnavailableError,
    ParkingUnavailableError,
    SwapUnavailableError,
    WorkerControllerError,
)
from vllm.worker_controller.metrics import ControllerMetrics
from vllm.worker_controller.placement import Placement, Reservation
from vllm.worker_controller.replicas import (
    Bounds,
    ReplicaBook,
    ReplicaScaler,
    is_replica,
    replica_name,
    split,
)
from vllm.worker_controller.request_body import (
    InvalidRequest,
    replay_body,
    requested_model,
)
from vllm.worker_controller.responses import (
    UnlessNotFound,
    engine_stopped_as_503,
    error_response,
    send_error,
    send_json,
    send_method_not_allowed,
    send_model_not_found,
    with_headers,
)
from vllm.worker_controller.routes import MODEL_ROUTES, RESPONSE_ID_PATH

logger = init_logger(__name__)

# Answered as `vllm serve` answers them: 200 with an empty body.
_HEALTH_PATHS = {"/health": ("GET", "HEAD"), "/ping": ("GET", "HEAD", "POST")}
# Longer names are no folder or catalog entry: answered as unknown.
_MAX_NAME_LEN = 255
# Automatic reloads of a failed model before it waits for an operator.
_MAX_AUTO_RELOADS = 3
_MAX_BACKOFF_S = 30.0


@dataclass
class CatalogEntry:
    """Where a model name loads from, with its own engine args."""

    model: str
    engine_args: dict[str, Any] = field(default_factory=dict)
    keep_alive_s: float | None = None
    """Seconds idle before unloading (inf: never); None: --keep-alive."""
    allow_engine_args: frozenset[str] = frozenset()
    """Engine args beyond the allowlist that the management API may set
    for this entry (see ``access.py``)."""
    preload: bool = False
    """Copy its weights into the host-RAM weight cache at server start."""
    replicas: Bounds = field(default_factory=Bounds)
    """Engines that serve it (``replicas.py``): at least ``min`` while it
    is loaded, up to ``max`` while its queue stays long."""


@dataclass
class _Wait:
    """How a request waited for its model: ``load``, ``swap`` or
    ``unpark``, and for how long. Its response says so (as Ollama's
    ``load_duration``), so a client can tell a slow model from a load."""

    kind: str
    seconds: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-vllm-wc-load-ms", str(round(self.seconds * 1000)).encode()),
            (b"x-vllm-wc-load-kind", self.kind.encode()),
        ]


@dataclass
class _Served:
    app: Any
    """The model's vLLM app (FastAPI)."""
    model: str
    keep_alive_s: float | None = None


@dataclass
class _Backoff:
    """Failed loads of one name since its last success."""

    failures: int
    error: str
    not_before: float


class ModelStoppedError(EngineDeadError):
    """Ends a model's in-flight requests (unload, drain): an
    ``EngineDeadError`` so that ``AsyncLLM.generate`` passes it through and
    upstream's streams end with an error event."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


class _BodyTooLarge(Exception):
    pass


async def _no_eviction(name: str, unload: bool) -> None:
    """The eviction of a load that may take only free room."""
    raise ModelUnavailableError(
        f"no free room (loading a replica evicts no model, here {name!r})",
        retry_after_s=5.0,
    )


class ModelRouter:
    """ASGI app: dispatches OpenAI requests to per-model vLLM apps.

    A request for a model that is not loaded but is known (the catalog, a
    folder under ``allowed_model_dir``, or a model loaded before, e.g. one
    that failed) loads it first (concurrent requests share one load; failed
    loads back off and stop after a few), and one for a parked model
    unparks it. Room comes from :class:`Placement`.
    """

    def __init__(
        self,
        controller: WorkerController,
        args: Namespace,
        engine_args: dict[str, Any],
        allowed_model_dir: Path | None = None,
        max_loaded_models: int | None = None,
        load_wait_s: float = 30.0,
        catalog: dict[str, CatalogEntry | AdapterEntry] | None = None,
        keep_alive_s: float = math.inf,
        api_keys: list[str] | None = None,
        max_body_bytes: int = 32 << 20,
        replica_scale_up_queue: float = 8.0,
        replica_scale_up_after_s: float = 10.0,
        replica_idle_s: float = 60.0,
    ):
        self.controller = controller
        self.args = args
        self.engine_args = engine_args
        self.allowed_model_dir = allowed_model_dir
        self.load_wait_s = load_wait_s
        catalog = catalog or {}
        self.catalog = {n: e for n, e in catalog.items() if isinstance(e, CatalogEntry)}
        self.adapters = AdapterRegistry(
            {n: e for n, e in catalog.items() if isinstance(e, AdapterEntry)}
        )
        self._adapter_changes = asyncio.Lock()
        self.keep_alive_s = keep_alive_s
        self.max_body_bytes = max_body_bytes
        self.metrics = ControllerMetrics()
        self.placement = Placement(controller, max_loaded_models, load_wait_s)
        self._served: dict[str, _Served] = {}
        self._origins: dict[str, CatalogEntry] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._unparking: dict[str, asyncio.Task] = {}
        self._backoff: dict[str, _Backoff] = {}
        self.replicas = ReplicaBook()
        for name, entry in self.catalog.items():
            if entry.replicas != Bounds():
                self.replicas.bounds[name] = entry.replicas
        self.scaler = ReplicaScaler(
            self, replica_scale_up_queue, replica_scale_up_after_s, replica_idle_s
        )
        self.placement.evict_first = self.scaler.is_extra
        self._openai: ASGIApp = self._openai_endpoints
        if api_keys:
            self._openai = BearerAuth(self._openai, api_keys)
        self._management: ASGIApp | None = None

    def set_management(self, app: ASGIApp) -> None:
        self._management = app

    # ------------------------------------------------------------ lookup

    def resolve(self, name: str) -> CatalogEntry | None:
        """Where a model name may be loaded from: the catalog, a folder of
        that name under the allowed directory, or where it was loaded from
        before; else nowhere."""
        if name in self.catalog:
            return self.catalog[name]
        if (
            self.allowed_model_dir is not None
            and len(name) <= _MAX_NAME_LEN
            and "/" not in name
            and "\0" not in name
            and not name.startswith(".")
        ):
            try:
                if (self.allowed_model_dir / name / "config.json").is_file():
                    return CatalogEntry(model=str(self.allowed_model_dir / name))
            except OSError:  # e.g. a name the file system refuses
                pass
        return self._origins.get(name)

    def is_allowed(self, model: str) -> bool:
        if self.allowed_model_dir is None or "\0" in model:
            return False
        try:
            root = self.allowed_model_dir.resolve()
            return Path(model).resolve().is_relative_to(root)
        except OSError:
            return False

    # --------------------------------------------------------- lifecycle

    async def add(
        self,
        name: str,
        model: str,
        engine_args: dict[str, Any] | None = None,
        may_evict: bool = True,
    ) -> dict:
        """Loads ``model`` as ``name`` and serves it. Everything that can
        be checked is checked before anything is evicted for it (nothing
        is, unless ``may_evict``: replicas take only free room); a failed
        model of that name is replaced."""
        if name in self._loading:
            raise ModelBusyError(f"Model {name!r} is being loaded")
        task = self._loading[name] = asyncio.create_task(
            self._add_pinned(name, model, engine_args or {}, may_evict)
        )
        task.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(task)

    async def precompile(self) -> None:
        """Loads and unloads one catalog model of each engine shape
        (``--precompile``), so that no first request waits for Dynamo and
        Inductor: the compile caches, the measured KV-cache budget and the
        weight cache are warm. A model that fails is logged and skipped."""
        shapes: set[str] = set()
        for name, entry in self.catalog.items():
            try:
                args = self._engine_args(name, entry.engine_args)
                prepared = await asyncio.to_thread(
                    self.controller.prepare, entry.model, name, **args
                )
                if prepared.engine_key in shapes:
                    continue
                if prepared.engine_key is not None:
                    shapes.add(prepared.engine_key)
                logger.info("Precompiling %r", name)
                await self.add(name, entry.model, entry.engine_args)
            except WorkerControllerError as e:
                logger.warning("Precompiling %r failed: %s", name, e)
                continue
            await self.remove(name, "was precompiled")

    async def _add_pinned(
        self, name: str, model: str, engine_args: dict[str, Any], may_evict: bool
    ) -> dict:
        """``_add`` with the model pinned until it serves: between its
        reservation's end and its app's start, a load that makes room
        would otherwise take a model that no request has pinned yet (one
        loaded over the management API) and stop the engine its app is
        being built on."""
        with self.placement.pin(name):
            return await self._add(name, model, engine_args, may_evict)

    async def _add(
        self,
        name: str,
        model: str,
        engine_args: dict[str, Any],
        may_evict: bool = True,
    ) -> dict:
        state = self.controller.state(name)
        if state == ModelState.FAILED:
            logger.info("Replacing failed model %r", name)
            await self.remove(name, with_replicas=False)
        elif state is not None:
            raise ModelAlreadyLoadedError(
                f"A model named {name!r} is already loaded ({state.value})"
            )
        if self.adapters.get(name) is not None:
            raise ModelAlreadyLoadedError(f"{name!r} is the name of a LoRA adapter")
        try:
            args = self._engine_args(name, engine_args)
            prepared = await asyncio.to_thread(
                self.controller.prepare, model, name, **args
            )
            loaded = await self._load_reserved(name, model, prepared, may_evict)
        except ModelUnavailableError:
            raise  # no room now: not the model's failure
        except WorkerControllerError:
            self.metrics.failures.inc()
            raise
        self.metrics.observe_load(loaded.timings_s)
        origin = self.catalog.get(name) or CatalogEntry(model, engine_args)
        try:
            app = await self._build_app(name, model)
        except BaseException:
            await asyncio.to_thread(self.controller.unload, name)
            raise
        self._served[name] = _Served(app, model, keep_alive_s=origin.keep_alive_s)
        self._origins[name] = origin
        self._backoff.pop(name, None)
        return {
            "name": name,
            "model": model,
            "brought_up": loaded.brought_up,
            "weights_load": loaded.weights_load,
            "timings_s": loaded.timings_s,
        }

    def _engine_args(self, name: str, engine_args: dict[str, Any]) -> dict[str, Any]:
        """The engine args a load of ``name`` gets: the command line's, the
        load's own, and LoRA if adapters name it as their base."""
        args = {**self.engine_args, **engine_args}
        if adapters := self.adapters.of_base(split(name)[0]):
            args = lora_engine_args(args, (a.rank for a in adapters.values()))
        return args

    async def _load_reserved(
        self, name: str, model: str, prepared: PreparedLoad, may_evict: bool = True
    ) -> LoadResult:
        """Reserves room (evicting, or choosing an engine to swap into),
        then loads. A swap that cannot happen leaves its victim unloaded or
        as it was, and the reservation is made again."""
        evict = self._evict if may_evict else _no_eviction
        while True:
            reservation = await self.placement.reserve_load(name, prepared, evict)
            try:
                if reservation.swap_from is not None:
                    try:
                        return await self._swap(reservation, model, prepared)
                    except SwapUnavailableError as e:
                        logger.warning("No swap for %r (%s): loading it anew", name, e)
                        continue
                async with self.placement.exclusive(reservation):
                    return await asyncio.to_thread(
                        self.controller.load,
                        model,
                        name,
                        prepared=prepared,
                        lease=reservation.take_lease(),
                    )
            finally:
                self.placement.release(reservation)

    async def _swap(
        self, reservation: Reservation, model: str, prepared: PreparedLoad
    ) -> LoadResult:
        """Loads ``model`` into the kept engine of the idle model the
        reservation names, which stops serving first (its next request
        loads it again). Under the devices' lock: a swap maps nothing new,
        but one that cannot keep the engine unloads it, freeing memory
        that another engine's profile must not see go."""
        victim = reservation.swap_from
        assert victim is not None
        served = self._served.pop(victim, None)
        try:
            async with self.placement.exclusive(reservation):
                loaded = await asyncio.to_thread(
                    self.controller.load,
                    model,
                    reservation.name,
                    prepared=prepared,
                    swap_from=victim,
                )
        except SwapUnavailableError:
            if served is not None and self.controller.state(victim) == ModelState.READY:
                self._served[victim] = served  # untouched: it serves on
            raise
        self.metrics.evictions.inc()
        self.metrics.unloads.inc()
        self.metrics.swaps.inc()
        return loaded

    async def _build_app(self, name: str, model: str) -> ASGIApp:
        """vLLM's OpenAI app over the model's ``AsyncLLM``, with an engine
        death answered as 503 (upstream's handler shuts a one-model server
        down, and reads ``app.state.server``, which only it has)."""
        client = self.controller.engine_client(name)
        tasks = await client.get_supported_tasks()
        args = Namespace(**{**vars(self.args), "model": model})
        # A replica's app answers as its model.
        args.served_model_name = [split(name)[0]]
        app = build_app(args, tasks, client.model_config)
        await init_app_state(client, app.state, args, tasks)

        async def engine_error(request: Request, exc: Exception) -> Response:
            message = str(exc) if isinstance(exc, ModelStoppedError) else None
            why = message or self._stopped(name) or str(exc)
            return error_response(503, why, "ServiceUnavailableError", retry_after_s=1)

        app.add_exception_handler(EngineDeadError, engine_error)
        app.add_exception_handler(EngineGenerateError, engine_error)
        # build_app has built the middleware stack, which copied the
        # handlers: without a rebuild, upstream's still answer (and crash).
        app.middleware_stack = None
        return app

    def _stopped(self, name: str) -> str | None:
        """Why the model's engine no longer serves (None while it does)."""
        state = self.controller.state(name)
        try:
            errored = self.controller.engine_client(name).errored
        except WorkerControllerError:
            errored = True  # its client is closed: unloaded or released
        if state == ModelState.READY and not errored:
            return None
        why = self.controller.failure(name) or (
            f"it is {state.value}" if state else "it was unloaded"
        )
        return (
            f"The model `{split(name)[0]}` stopped serving ({why}); it is "
            "loaded again on the next request"
        )

    async def remove(
        self, name: str, why: str = "was unloaded", with_replicas: bool = True
    ) -> None:
        """Unloads ``name`` (and, ``with_replicas``, its other replicas);
        its in-flight requests end with an error (an SSE error event where
        the response has started)."""
        if with_replicas:
            await self._leave(name, why)
        else:
            await self._unload(name, why)

    async def _leave(
        self, name: str, why: str, park: bool = False, keep_memory: bool = False
    ) -> None:
        """Unloads ``name``, or parks it where ``park`` and allowed; a model
        takes its other replicas along, holding ``scaler.changing(name)``
        so that the scaler neither re-adds a replica it is losing nor
        reloads it from one."""
        if is_replica(name):
            await self._unload(name, why)
            return
        async with self.scaler.changing(name):
            for index in self.scaler.indices(name)[1:]:
                with contextlib.suppress(ModelNotFoundError):
                    await self._unload(replica_name(name, index), why)
            if park and self.controller.can_park(name):
                await self.park(name, keep_memory=keep_memory)
            else:
                await self._unload(name, why)

    async def _unload(self, name: str, why: str) -> None:
        if self._served.pop(name, None) is not None:
            self.end_requests(name, f"The model `{name}` {why}")
        async with self.placement.devices_exclusive(self._devices(name)):
            await asyncio.to_thread(self.controller.unload, name)
        self.placement.forget(name)
        self.metrics.unloads.inc()

    def end_requests(self, name: str, message: str) -> None:
        """Fails the model's in-flight requests with ``message``."""
        try:
            client = self.controller.engine_client(name)
        except WorkerControllerError:
            return
        client.output_processor.propagate_error(ModelStoppedError(message))

    def end_all_requests(self, why: str) -> None:
        """Fails every model's in-flight requests (a drain's deadline)."""
        for name in list(self._served):
            self.end_requests(name, f"The request to `{name}` ended: {why}")

    async def _evict(self, name: str, unload: bool) -> None:
        """Parks an idle model if that is enough and allowed, else unloads
        (a replica: unloads; a model's other replicas go first)."""
        self.metrics.evictions.inc()
        await self._leave(name, "was unloaded to make room", park=not unload)

    def _devices(self, name: str) -> list[int | None]:
        try:
            return self.controller.devices(name)
        except ModelNotFoundError:
            return []  # the controller's own call answers for it

    async def _expire(self, name: str, unload: bool) -> None:
        """Keep-alive's eviction: parks keeping the device memory (freed
        only if placement needs it), else unloads."""
        await self._leave(
            name, "was unloaded after its keep-alive", park=not unload, keep_memory=True
        )

    async def park(self, name: str, keep_memory: bool = False) -> dict:
        """Parks ``name``; ``keep_memory``: its device memory stays mapped
        until another engine needs it (see ``WorkerController.park``)."""
        if pins := self.placement.pins(name):
            raise ParkingUnavailableError(
                f"Model {name!r} has {pins} requests in flight"
            )
        async with self.placement.devices_exclusive(self._devices(name)):
            timings = await self.controller.park(name, keep_memory)
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
        reservation = await self.placement.reserve_unpark(name, self._evict)
        try:
            async with self.placement.exclusive(reservation):
                timings = await self.controller.unpark(name)
        finally:
            self.placement.release(reservation)
        self.metrics.unparks.inc()
        return {"name": name, "state": ModelState.READY.value, "timings_s": timings}

    def idle_s(self, name: str) -> float | None:
        """Seconds since a request last needed ``name`` (0 while one does);
        None unless it is ready or parked (what keep-alive counts)."""
        if self.controller.state(name) not in (ModelState.READY, ModelState.PARKED):
            return None
        return self.placement.idle_s(name)

    async def expire_idle(self, period_s: float = 1.0) -> None:
        """Parks or unloads awake models idle for longer than their
        keep-alive (forever: never)."""
        while True:
            await asyncio.sleep(period_s)
            for name, served in list(self._served.items()):
                if is_replica(name):
                    continue  # the scaler's (replicas.py)
                keep_alive = served.keep_alive_s
                if keep_alive is None:
                    keep_alive = self.keep_alive_s
                if (
                    self.controller.state(name) == ModelState.READY
                    and self.placement.idle_s(name) >= keep_alive
                ):
                    logger.info("Idle for %.0f s: %r makes room", keep_alive, name)
                    try:
                        await self.placement.evict_idle(name, False, self._expire)
                    except WorkerControllerError as e:
                        logger.warning("Expiring %r failed: %s", name, e)

    async def _ensure_ready(self, name: str) -> tuple[_Served, _Wait | None]:
        """Waits until ``name`` can serve: loads, reloads (a failed model)
        or unparks it as needed; returns it with how the request waited
        (None: it did not); raises what the client should be told."""
        start = time.monotonic()
        deadline = start + self.load_wait_s
        reloads = 0
        kind: str | None = None
        while True:
            state = self.controller.state(name)
            served = self._served.get(name)
            if state == ModelState.READY and served is not None:
                if kind is None:
                    return served, None
                wait = _Wait(kind, time.monotonic() - start)
                self.metrics.observe_wait(wait.kind, wait.seconds)
                return served, wait
            if state == ModelState.PARKED and served is not None:
                kind = "unpark"
                await self.unpark(name)
            elif name in self._loading:
                kind = (await asyncio.shield(self._loading[name]))["brought_up"]
            elif (
                state in (None, ModelState.FAILED)
                and not self.placement.settling(name)
                and reloads < 2  # it died again at once: let the client retry
            ):
                reloads += 1
                loaded = await self._reload(name, state)
                kind = loaded["brought_up"] if loaded else "load"
            elif time.monotonic() < deadline:
                # Parking, unloading, unparking (another request's).
                kind = kind or ("unpark" if state == ModelState.UNPARKING else "load")
                await asyncio.sleep(0.05)
            else:
                what = state.value if state else "being unloaded"
                raise ModelUnavailableError(
                    f"The model `{name}` is {what}", retry_after_s=2
                )

    async def _reload(self, name: str, state: ModelState | None) -> dict | None:
        """Loads ``name`` again from where it may be loaded from; returns
        the load's report, or None if another request's load is under way."""
        entry = self.resolve(name)
        if entry is None:
            if state == ModelState.FAILED:
                raise ModelUnavailableError(
                    f"The model `{name}` failed "
                    f"({self.controller.failure(name)}) and cannot be reloaded "
                    "on demand: load it through the management API",
                    retry_after_s=None,
                )
            raise ModelNotFoundError(f"The model `{name}` does not exist.")
        backoff = self._backoff.get(name)
        if backoff is not None:
            if backoff.failures >= _MAX_AUTO_RELOADS:
                raise ModelUnavailableError(
                    f"The model `{name}` failed to load {backoff.failures} times "
                    f"(last: {backoff.error}); load it again through the "
                    "management API",
                    retry_after_s=None,
                )
            if (wait := backoff.not_before - time.monotonic()) > 0:
                raise ModelUnavailableError(
                    f"The model `{name}` failed to load ({backoff.error}); "
                    f"next attempt in {wait:.0f} s",
                    retry_after_s=wait,
                )
        if state == ModelState.FAILED:
            logger.info(
                "Reloading failed model %r (%s)", name, self.controller.failure(name)
            )
        try:
            return await self.add(name, entry.model, entry.engine_args)
        except ModelBusyError:
            return None  # another request started it; the caller waits for it
        except (ModelUnavailableError, ModelAlreadyLoadedError):
            raise  # no room, or a race with a management load: not a failure
        except WorkerControllerError as e:
            failures = backoff.failures + 1 if backoff else 1
            self._backoff[name] = _Backoff(
                failures,
                str(e),
                time.monotonic() + min(2.0**failures, _MAX_BACKOFF_S),
            )
            logger.error("Loading %r on request failed: %s", name, e)
            raise ModelUnavailableError(
                f"The model `{name}` failed to load: {e}",
                retry_after_s=min(2.0**failures, _MAX_BACKOFF_S)
                if failures < _MAX_AUTO_RELOADS
                else None,
            ) from e

    # -------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # No route takes WebSockets (routes.NOT_ROUTED): refused before
            # the handshake, which the client sees as a 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return  # lifespan: nothing to do here
        try:
            body = await self._read_body(scope, receive)
        except _BodyTooLarge:
            await send_error(
                send,
                413,
                f"Request body larger than {self.max_body_bytes / 2**20:g} MiB "
                "(--max-request-body-mb)",
                "RequestEntityTooLargeError",
            )
            return
        receive = replay_body(body, receive)
        path, method = scope["path"], scope["method"]
        if path in _HEALTH_PATHS:
            if method not in _HEALTH_PATHS[path]:
                allow = ", ".join(_HEALTH_PATHS[path])
                await send_method_not_allowed(send, method, path, allow)
            else:
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b""})
        elif path == "/version" and method in ("GET", "HEAD"):
            await send_json(send, 200, {"version": VLLM_VERSION})
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

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole request body, refused beyond the size limit (before
        reading it when the client announces its length)."""
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise _BodyTooLarge
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # disconnected: the app sees it on its next receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _openai_endpoints(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                await send_method_not_allowed(send, method, path, "GET")
                return
            cards = self._model_cards()
            if path == "/v1/models":
                await send_json(send, 200, {"object": "list", "data": cards})
                return
            name = path.removeprefix("/v1/models/")
            if card := next((c for c in cards if c["id"] == name), None):
                await send_json(send, 200, card)
            else:
                await send_model_not_found(send, name)
            return
        body = (await receive())["body"]
        if by_id := RESPONSE_ID_PATH.match(path):
            allowed = "POST" if by_id["cancel"] else "GET"
            if method != allowed:
                await send_method_not_allowed(send, method, path, allowed)
            else:
                await self._dispatch_by_response_id(scope, body, receive, send)
            return
        methods = MODEL_ROUTES.get(path)
        if methods is None:
            await send_error(send, 404, f"Not found: {method} {path}", "NotFoundError")
        elif method not in methods:
            await send_method_not_allowed(send, method, path, ", ".join(methods))
        else:
            await self._dispatch(scope, body, receive, send)

    async def _dispatch(
        self, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        name = await requested_model(scope, body)
        if name is None:  # as `vllm serve`: the one (base) model there is
            names = [c["id"] for c in self._model_cards() if c["parent"] is None]
            if len(names) != 1:
                await send_error(
                    send,
                    400,
                    "The request names no 'model' and this server has "
                    f"{len(names)}: {', '.join(names[:20]) or 'none'}",
                    "BadRequestError",
                    "model",
                )
                return
            name = names[0]
        if isinstance(name, InvalidRequest):
            await send_error(send, 400, name.message, "BadRequestError", "model")
            return
        # An adapter's request is its base's: loaded, pinned and used.
        adapter = self.adapters.get(name)
        base = adapter.base if adapter is not None else name
        if not self._known(base):
            await send_model_not_found(send, base)
            return
        if scope["path"] == "/v1/load_lora_adapter" and (
            taken := self._runtime_name_taken(body, base)
        ):
            await send_error(send, 400, taken, "BadRequestError", "lora_name")
            return
        with self.placement.pin(base):
            # A ready replica with the fewest requests in flight; adapters
            # are served by replica 0 (``adapters.py`` attaches to it).
            target = base if adapter is not None else self.scaler.pick(base)
            try:
                if target != base:
                    served, wait = self._served[target], None
                else:
                    served, wait = await self._ensure_ready(base)
                if adapter is not None:
                    await self._attach(name, adapter, served)
            except ModelNotFoundError:
                await send_model_not_found(send, name)
                return
            except (AdapterConflictError, AdapterLoadError) as e:
                conflict = isinstance(e, AdapterConflictError)
                await send_error(
                    send,
                    409 if conflict else 422,
                    str(e),
                    "ConflictError" if conflict else "UnprocessableEntityError",
                    "model",
                )
                return
            except ModelUnavailableError as e:
                await send_error(
                    send,
                    503,
                    str(e),
                    "ServiceUnavailableError",
                    "model",
                    retry_after_s=e.retry_after_s,
                )
                return
            except WorkerControllerError as e:
                await send_error(
                    send,
                    503,
                    f"The model `{name}` cannot serve now: {e}",
                    "ServiceUnavailableError",
                    "model",
                    retry_after_s=5,
                )
                return
            if not _serves(served.app, scope):
                await send_error(
                    send,
                    404,
                    f"The model `{name}` does not serve {scope['path']}",
                    "NotFoundError",
                )
                return
            if wait is not None:
                send = with_headers(send, wait.headers())
            with (
                self.placement.pin(target),
                self.replicas.use(target),
                self.metrics.in_flight(*split(target)),
            ):
                await served.app(
                    scope,
                    replay_body(body, receive),
                    engine_stopped_as_503(send, lambda: self._stopped(target)),
                )
            if scope["path"] in RUNTIME_LORA_PATHS:
                self.adapters.learn_runtime(base, served.app)

    def _known(self, name: str) -> bool:
        """Whether a request may name ``name`` as a model (not an adapter;
        not a replica's record)."""
        if is_replica(name):
            return False
        return (
            self.controller.state(name) is not None
            or name in self._loading
            or self.resolve(name) is not None
        )

    def _runtime_name_taken(self, body: bytes, base: str) -> str | None:
        """Why upstream's /v1/load_lora_adapter may not take this
        ``lora_name`` here (a model's name, or an adapter that is not a
        run-time one of this base): names route across models."""
        lora_name = json.loads(body).get("lora_name")
        if not isinstance(lora_name, str):
            return None  # upstream's validation answers
        entry = self.adapters.get(lora_name)
        if entry is None and not self._known(lora_name):
            return None
        if entry is not None and entry.origin == "runtime" and entry.base == base:
            return None
        return f"`{lora_name}` already names a model or adapter"

    async def _attach(
        self, name: str, entry: AdapterEntry, served: _Served, registered: bool = True
    ) -> None:
        """Has the (pinned, ready) base's app serve the adapter."""
        client = self.controller.engine_client(entry.base)
        if client.vllm_config.lora_config is None:
            raise LoRANotEnabledError(
                f"The base model `{entry.base}` of adapter `{name}` is loaded "
                "without LoRA (enable_lora): unload it, and its next load "
                "enables LoRA"
            )
        await self.adapters.attach(name, entry, served.app, registered)

    # ---------------------------------------------------------- adapters

    async def add_adapter(self, name: str, base: str, path: str) -> dict[str, Any]:
        """Registers a LoRA adapter of ``base`` (the management API; the
        caller checked that ``path`` is allowed). Checked before anything
        changes: the name is free, the base is a known model, the folder
        passes upstream's checks within the base's ``max_lora_rank``; a
        ready base's engine loads it at once (so that broken weights fail
        here), any other base's on the adapter's first request. Nothing is
        loaded or evicted for it."""
        async with self._adapter_changes:
            if not name or len(name) > _MAX_NAME_LEN or "\0" in name:
                raise InvalidAdapterError(f"Invalid adapter name {name[:100]!r}")
            if self.adapters.get(name) is not None or self._known(name):
                raise AdapterConflictError(f"`{name}` already names a model or adapter")
            if self.adapters.get(base) is not None:
                raise InvalidAdapterError(f"`{base}` is an adapter, not a base model")
            if not self._known(base):
                raise ModelNotFoundError(f"The base model `{base}` does not exist.")
            state = self.controller.state(base)
            if base in self._loading or state in (
                ModelState.LOADING,
                ModelState.UNLOADING,
            ):
                raise AdapterConflictError(
                    f"The base model `{base}` is being loaded or unloaded; try again"
                )
            served = self._served.get(base)
            with self.placement.pin(base):
                if state in (None, ModelState.FAILED) or served is None:
                    origin = self.resolve(base)
                    if origin is None:  # known only as a loaded model
                        raise ModelNotFoundError(f"The base model `{base}` is gone.")
                    base_path = origin.model
                    # As its next load will get them (before its adapters'
                    # ranks are fitted: this one counts too).
                    args = {**self.engine_args, **origin.engine_args}
                    if args.get("enable_lora") is False:
                        raise LoRANotEnabledError(
                            f"The base model `{base}` sets enable_lora: false"
                        )
                    max_rank = args.get("max_lora_rank", LORA_RANKS[-1])
                else:
                    base_path = served.model
                    lora = self.controller.engine_client(base).vllm_config.lora_config
                    if lora is None:
                        raise LoRANotEnabledError(
                            f"The base model `{base}` is loaded without LoRA "
                            "(enable_lora): unload it first, and its next load "
                            "enables LoRA"
                        )
                    max_rank = lora.max_lora_rank
                rank = await asyncio.to_thread(check_adapter, path, max_rank, base_path)
                entry = AdapterEntry(base, path, "management", rank)
                if state == ModelState.READY and served is not None:
                    await self._attach(name, entry, served, registered=False)
                self.adapters.add(name, entry)
        return {**entry.describe(name), "state": self._adapter_state(entry)}

    async def remove_adapter(self, name: str) -> dict[str, Any]:
        """Unregisters a management or run-time adapter; its base's app
        stops serving it (requests running with it finish)."""
        async with self._adapter_changes:
            entry = self.adapters.get(name)
            if entry is None:
                raise ModelNotFoundError(f"No adapter named {name!r}")
            if entry.origin == "catalog":
                raise AdapterConflictError(
                    f"Adapter {name!r} is defined by the model catalog"
                )
            self.adapters.remove(name)
            if (served := self._served.get(entry.base)) is not None:
                await self.adapters.detach(name, served.app)
        return {"name": name, "removed": True}

    def list_adapters(self) -> list[dict[str, Any]]:
        return [
            {**entry.describe(name), "state": self._adapter_state(entry)}
            for name, entry in self.adapters.items()
        ]

    def _adapter_state(self, entry: AdapterEntry) -> str:
        """An adapter is in its base's state (``available`` if not loaded)."""
        state = self.controller.state(entry.base)
        if entry.base in self._loading and state is None:
            return "loading"
        return state.value if state is not None else "available"

    async def _dispatch_by_response_id(
        self, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        """Retrieving or cancelling a stored response: it lives in the app
        of the model that made it (upstream's in-memory store), and the
        request names only its id. Each loaded model's app is asked in
        turn; the first that does not answer 404 answers (streams too).
        None knows it: the last one's 404, as `vllm serve` words it. No
        model is loaded, unparked or pinned for this: a model unloaded
        since has lost its store."""
        kept: list[dict] = []
        for served in list(self._served.values()):
            if not _serves(served.app, scope):
                continue
            attempt = UnlessNotFound(send)
            await served.app(scope, replay_body(body, receive), attempt)
            if attempt.status != 404:
                return
            kept = attempt.kept
        if not kept:
            response_id = RESPONSE_ID_PATH.match(scope["path"])["id"]
            await send_error(
                send,
                404,
                f"Response with id '{response_id}' not found.",
                "invalid_request_error",
                "response_id",
            )
        for message in kept:
            await send(message)

    def _model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards (``max_model_len`` once the model is loaded),
        plus each model's ``state``: loaded or not, every model that a
        request may name."""
        listed = {
            m["name"]: m
            for m in self.controller.list_models()
            if not is_replica(m["name"])
        }
        states = {name: m["state"] for name, m in listed.items()}
        cards = {
            name: {"root": served.model, "state": states.get(name, "unknown")}
            for name, served in self._served.items()
            if not is_replica(name)
        }
        for name, state in states.items():
            cards.setdefault(name, {"root": None, "state": state})
        for name in self._loading:
            if is_replica(name):
                continue
            cards.setdefault(name, {"root": None, "state": "loading"})
        for name, entry in self.catalog.items():
            cards.setdefault(name, {"root": entry.model, "state": "available"})
        if self.allowed_model_dir is not None:
            for path in sorted(self.allowed_model_dir.glob("*/config.json")):
                if self.adapters.get(path.parent.name) is not None:
                    continue  # a catalog adapter's name shadows the folder
                cards.setdefault(
                    path.parent.name, {"root": str(path.parent), "state": "available"}
                )
        models = [
            {
                **ModelCard(
                    id=name,
                    root=card["root"],
                    max_model_len=listed.get(name, {}).get("max_model_len"),
                    permission=[ModelPermission()],
                ).model_dump(),
                "state": card["state"],
            }
            for name, card in cards.items()
        ]
        # Adapters, as upstream lists them (`parent`: the base), in their
        # base's state; an adapter whose base is unknown is not listed.
        for name, entry in self.adapters.items():
            if name in cards or entry.base not in cards:
                continue
            models.append(
                {
                    **ModelCard(
                        id=name,
                        root=entry.path,
                        parent=entry.base,
                        max_model_len=listed.get(entry.base, {}).get("max_model_len"),
                        permission=[ModelPermission()],
                    ).model_dump(),
                    "state": cards[entry.base]["state"],
                }
            )
        return models


def _serves(app: Any, scope: Scope) -> bool:
    """Whether a model's app has a route for this request (its tasks decide
    which it has, as under `vllm serve`)."""
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)
