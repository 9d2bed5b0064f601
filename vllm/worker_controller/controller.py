# SPDX-License-Identifier: Apache-2.0
"""WorkerController: the pool, leases, model registry and lifecycle.

``load`` builds the engine's ``VllmConfig`` with vLLM's ``EngineArgs``,
leases workers and an engine host, has the workers build upstream's Worker
in place and load weights, starts a ``PooledEngineCoreProc`` on the host
(profile, KV cache, warm-up), plays the front-end side of upstream's ZMQ
handshake, and attaches vLLM's own ``AsyncLLM`` to the engine. After that
the controller is off the request path. ``unload`` reverses it and returns
every process to the pool; a dead process fails its model fast and is
respawned while the rest of the pool keeps serving. On GPU, ``park`` frees a
model's device memory but keeps its processes and (in pinned host memory)
its weights, so ``unpark`` brings it back in a fraction of a second. A
``load`` with ``swap_from`` takes over an idle engine of the same shape:
its processes keep the compiled model, CUDA graphs and KV cache, and only
the new checkpoint's weights are copied in.
"""

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import zmq

from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.worker_controller.compat.engine import (
    EngineZmqAddresses,
    shutdown_engine_client,
)
from vllm.worker_controller.compat.executor import (
    get_distributed_init_method,
    get_loopback_ip,
    get_open_port,
)
from vllm.worker_controller.config import ControllerSettings, build_engine_config
from vllm.worker_controller.device_memory import claimed, fits
from vllm.worker_controller.engine_handshake import (
    EngineHandshake,
    new_engine_addresses,
    notify_engine_dead,
)
from vllm.worker_controller.engine_metrics import EngineMetrics
from vllm.worker_controller.errors import (
    InsufficientWorkersError,
    InvalidEngineArgsError,
    ModelAlreadyLoadedError,
    ModelBusyError,
    ModelLoadError,
    ModelNotFoundError,
    ParkingUnavailableError,
    PeerExportError,
    PeerExportRequestError,
    PoolTooSmallError,
    RemoteCallError,
    SwapUnavailableError,
    WorkerControllerError,
)
from vllm.worker_controller.executor.proxy_executor import ProxyExecutor
from vllm.worker_controller.executor.remote_executor import RemoteExecutor
from vllm.worker_controller.peer import shm as peer_shm
from vllm.worker_controller.peer.descriptor import host_identity
from vllm.worker_controller.peer_routing import (
    reads_a_checkpoint,
    route_through_peer,
    weights_key,
)
from vllm.worker_controller.pool import (
    Lease,
    PooledProcess,
    ProcessKind,
    ProcessPool,
    ProcessState,
)
from vllm.worker_controller.weight_cache import WeightCache
from vllm.worker_controller.worker.compile_cache import engine_shape_key
from vllm.worker_controller.worker.host_cache import route_through_host_cache

logger = init_logger(__name__)

# A load phase running longer than this gets a progress line this often.
_PROGRESS_EVERY_S = 5.0


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    PARKING = "parking"
    PARKED = "parked"
    """Device memory freed; processes kept, weights in pinned host memory."""
    UNPARKING = "unparking"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True)
class LoadResult:
    """What ``load`` reports: where the model runs and where time went."""

    name: str
    model: str
    worker_pids: list[int]
    engine_host_pid: int
    timings_s: dict[str, float]
    """Wall time per phase: config (EngineArgs -> VllmConfig), lease,
    weights (workers: Worker, process group, model runner, weights),
    engine_init (EngineCore on the host, handshake included) with its parts
    profile, kv_cache and compile_and_warm_up, client (AsyncLLM), total;
    a swap also has stop_previous (the engine it took over stopping), a
    load that copies a loaded model's weights peer_export (the source
    publishing them; the copy itself is in weights)."""
    brought_up: str = "load"
    """``load`` (new engine) or ``swap`` (weights into a kept engine)."""
    weights_load: dict[str, Any] | None = None
    """Rank 0's weight copy: ``source`` (``disk``, ``host_cache`` or
    ``peer``, then with ``transport`` and ``peer``), ``bytes``, ``seconds``,
    ``gb_per_s``; ``fallback``: why a peer load read the checkpoint."""


@dataclass(frozen=True)
class PreparedLoad:
    """A validated load: the engine's config, built before any process is
    leased or any model evicted for it."""

    vllm_config: VllmConfig
    config_s: float
    engine_key: str | None = None
    """Engines with equal keys can be swapped into each other (None: this
    one cannot; see ``compile_cache.engine_shape_key``)."""

    @property
    def world_size(self) -> int:
        return self.vllm_config.parallel_config.world_size

    @property
    def gpu_memory_utilization(self) -> float:
        return self.vllm_config.cache_config.gpu_memory_utilization


@dataclass(frozen=True)
class UnloadResult:
    name: str
    timings_s: dict[str, float]
    workers: list[dict[str, Any]]
    """Per rank: pid, unload report (memory figures) and whether recycled."""


@dataclass(eq=False)
class _Model:
    name: str
    model: str
    state: ModelState = ModelState.LOADING
    vllm_config: VllmConfig | None = None
    workers: list[PooledProcess] = field(default_factory=list)
    host: PooledProcess | None = None
    engine_client: AsyncLLM | None = None
    addresses: EngineZmqAddresses | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    death: str | None = None
    """Which pooled process of this model died, and how."""
    engine_start: Future | None = None
    """The host's ``start_engine`` call, while the engine builds itself."""
    weights_bytes: int = 0
    engine_key: str | None = None
    brought_up: str = "load"
    """How its engine came up: ``load``, ``swap`` or ``unpark``."""
    weights_load: dict[str, Any] | None = None
    asleep: bool = False
    """Parked: its device memory is unmapped (set until unpark starts)."""
    released: threading.Event = field(default_factory=threading.Event)
    """Set once the model's processes are back in the pool."""

    @property
    def gpu_memory_utilization(self) -> float:
        assert self.vllm_config is not None
        return self.vllm_config.cache_config.gpu_memory_utilization


class WorkerController:
    """A warm pool of vLLM processes that load and unload models in place.

    Thread-safe; every method blocks until its work is done. Use it as a
    context manager, or call :meth:`start` and :meth:`shutdown`.
    """

    def __init__(self, settings: ControllerSettings | None = None, **kwargs: Any):
        self.settings = settings or ControllerSettings(**kwargs)
        self.pool = ProcessPool(self.settings, on_lost=self._on_process_lost)
        self.proxy = ProxyExecutor(
            self.settings.load_timeout_s, self.settings.release_timeout_s
        )
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self.engine_metrics = EngineMetrics()
        """vLLM's engine metrics, a registry per model (``log_stats``)."""
        self._zmq = zmq.Context()
        self._peer_files: dict[str, float] = {}
        """Shared-memory files exported for peer loads, by export time."""
        self._kv_budgets: dict[tuple, list[int]] = {}
        """KV-cache budgets measured per engine shape and devices: later
        engines of that shape there skip vLLM's memory profiling."""
        self.weight_cache = (
            WeightCache(
                self.settings.weight_cache_bytes,
                on_admit=lambda entry: self._tell_workers(
                    "attach_cached_weights", entry=entry
                ),
                on_evict=lambda entry: self._tell_workers(
                    "forget_cached_weights", entry=entry
                ),
                root=self.settings.weight_cache_dir,
            )
            if self.settings.weight_cache_bytes > 0
            else None
        )

    def start(self) -> "WorkerController":
        self.pool.start()
        return self

    def __enter__(self) -> "WorkerController":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ load

    def prepare(
        self, model: str, name: str | None = None, **engine_args: Any
    ) -> PreparedLoad:
        """Validates a load without touching the pool: the engine's
        ``VllmConfig`` from vLLM's ``EngineArgs``, and whether the pool has
        enough workers at all.

        Raises :class:`InvalidEngineArgsError`, :class:`PoolTooSmallError`,
        or :class:`ModelLoadError` (phase ``config``: e.g. no such path, an
        unsupported architecture).
        """
        name = name or model
        start = time.perf_counter()
        try:
            config = build_engine_config(model, name, engine_args, RemoteExecutor)
        except InvalidEngineArgsError:
            raise
        except TypeError as e:  # vLLM raises these for bad argument types
            raise InvalidEngineArgsError(str(e)) from e
        except Exception as e:
            raise ModelLoadError(name, "config", str(e)) from e
        world_size = config.parallel_config.world_size
        pool_size = self.pool.count(ProcessKind.WORKER)
        if world_size > pool_size:
            raise PoolTooSmallError(
                f"Model {name!r} needs {world_size} workers (tensor x pipeline "
                f"parallel size); this pool has {pool_size}"
            )
        return PreparedLoad(
            config, time.perf_counter() - start, engine_shape_key(config, engine_args)
        )

    def load(
        self,
        model: str,
        name: str | None = None,
        *,
        prepared: PreparedLoad | None = None,
        lease: Lease | None = None,
        swap_from: str | None = None,
        **engine_args: Any,
    ) -> LoadResult:
        """Loads ``model`` (path) as ``name``; returns when it can serve.

        ``engine_args`` are fields of vLLM's ``EngineArgs``. A caller that
        validated the load (``prepare``) passes what that returned, and one that
        reserved processes (placement) passes its ``lease``, which this
        load then owns. With ``swap_from``, the idle model of that name,
        whose engine has the same shape, is unloaded and its engine kept
        for this one (:class:`SwapUnavailableError` if it cannot be). On
        failure the pool is cleaned up before the error is raised: a
        :class:`ModelLoadError` naming the phase, or one of
        :class:`InvalidEngineArgsError`, :class:`ModelAlreadyLoadedError`,
        :class:`InsufficientWorkersError`, :class:`ModelBusyError`.
        """
        name = name or model
        with self._lock:
            if name in self._models:
                existing = self._models[name]
                if lease is not None:
                    self.pool.give_back(lease.processes)
                raise ModelAlreadyLoadedError(
                    f"A model named {name!r} is already loaded "
                    f"({existing.state.value}); unload it first"
                )
            record = self._models[name] = _Model(name, model)
        start = time.perf_counter()
        try:
            prepared_here = prepared is None
            if prepared is None:
                prepared = self.prepare(model, name, **engine_args)
            record.vllm_config = prepared.vllm_config
            record.engine_key = prepared.engine_key
            record.timings_s["config"] = prepared.config_s
            cache_entry = self._route_weights(record)
            swap = swap_from is not None
            peer_files = [] if swap else self._route_to_peer(record)
            if swap_from is not None:
                with self._phase(record, "stop_previous"):
                    lease, record.weights_load = self._take_engine(
                        swap_from, prepared.engine_key, model, cache_entry
                    )
            record.brought_up = "swap" if swap else "load"
            try:
                self._load(record, lease, swap)
            finally:
                # Taken (and unlinked) by the target, or not needed now.
                self._discard_exports(peer_files)
            with self._lock:
                # The engine may have died after its handshake: not READY.
                assert record.host is not None and record.host.serving is not None
                if record.host.serving.done():
                    raise ModelLoadError(
                        name,
                        "client",
                        record.death or "the engine stopped while starting",
                    )
                record.state = ModelState.READY
        except BaseException:
            if record.workers or record.host:
                self._release(record)
            elif lease is not None:
                self.pool.give_back(lease.processes)
            self.engine_metrics.drop(name)
            with self._lock:
                del self._models[name]
            raise
        weights_load = record.weights_load or {}
        if self.weight_cache is not None and weights_load.get("source") == "disk":
            self.weight_cache.admit_in_background(model)
        # The config phase may have run before (prepare): it counts too.
        record.timings_s["total"] = (
            time.perf_counter() - start + (0.0 if prepared_here else prepared.config_s)
        )
        logger.info(
            "Model %r ready in %.2f s (%s)",
            name,
            record.timings_s["total"],
            ", ".join(f"{k} {v:.2f}s" for k, v in record.timings_s.items()),
        )
        return LoadResult(
            name=name,
            model=model,
            worker_pids=[w.pid for w in record.workers],
            engine_host_pid=record.host.pid,
            timings_s=dict(record.timings_s),
            brought_up=record.brought_up,
            weights_load=record.weights_load,
        )

    def _route_weights(self, record: _Model) -> str | None:
        """Has the load read its weights through the host-cache loader
        (from the cache, if it holds the checkpoint); returns the entry."""
        assert record.vllm_config is not None
        cache = self.weight_cache
        entry = cache.lookup(record.model) if cache is not None else None
        if not route_through_host_cache(record.vllm_config.load_config, entry):
            return None
        return entry

    def _route_to_peer(self, record: _Model) -> list[str]:
        """Has the load copy its weights from another loaded model of the
        same checkpoint and layout, if there is one that can export them
        (``ControllerSettings.peer_transport``); else leaves the load as
        it is. Returns the shared-memory files exported for it."""
        transport = self.settings.peer_transport
        config = record.vllm_config
        assert config is not None
        if transport == "off" or not reads_a_checkpoint(config.load_config):
            return []
        key = weights_key(config)
        with self._lock:
            sources = [
                r.name
                for r in self._models.values()
                if r is not record
                and (
                    r.state == ModelState.READY
                    or (r.state == ModelState.PARKED and not r.asleep)
                )
                and r.vllm_config is not None
                and weights_key(r.vllm_config) == key
            ]
        for source in sources:
            start = time.perf_counter()
            try:
                descriptors = [
                    self.export_weights(source, rank, transport, host_identity())
                    for rank in range(config.parallel_config.world_size)
                ]
            except WorkerControllerError as e:
                logger.info(
                    "Model %r cannot give %r its weights: %s", source, record.name, e
                )
                continue
            route_through_peer(config.load_config, descriptors)
            record.timings_s["peer_export"] = time.perf_counter() - start
            logger.info(
                "Loading %r: weights from loaded model %r (%s)",
                record.name,
                source,
                descriptors[0]["transport"],
            )
            return [d["shm_path"] for d in descriptors if d.get("shm_path")]
        return []

    def _discard_exports(self, paths: list[str]) -> None:
        """Removes exported shared-memory files (gone already is fine)."""
        for path in paths:
            peer_shm.discard(path)
            with self._lock:
                self._peer_files.pop(path, None)

    def export_weights(
        self,
        name: str,
        rank: int = 0,
        transport: str = "auto",
        target_host: str | None = None,
        bind_host: str = "127.0.0.1",
    ) -> dict[str, Any]:
        """Publishes rank ``rank`` of model ``name``'s loaded weights for a
        peer load (another pooled model, or a ``wc_peer`` loader elsewhere):
        the transfer descriptor. The model keeps serving. ``target_host``:
        the target's ``host_identity`` (same node: shared memory or CUDA
        IPC); ``bind_host``: where a broadcast's source listens.

        Raises :class:`ModelNotFoundError`, :class:`PeerExportError` (not
        ready, or its loaded weights are not kept) or
        :class:`PeerExportRequestError` (no such rank, unsuitable transport).
        """
        with self._lock:
            record = self._get(name)
            if not (
                record.state == ModelState.READY
                or (record.state == ModelState.PARKED and not record.asleep)
            ):
                raise PeerExportError(
                    f"Model {name!r} is {record.state.value}"
                    + (" with its device memory freed" if record.asleep else "")
                    + ": it cannot give its weights now"
                )
            if not 0 <= rank < len(record.workers):
                raise PeerExportRequestError(
                    f"Model {name!r} has ranks 0..{len(record.workers) - 1}, not {rank}"
                )
            worker = record.workers[rank]
        try:
            descriptor = worker.channel.call(
                "export_weights",
                timeout=self.settings.load_timeout_s,
                transport=transport,
                target_host=target_host,
                bind_host=bind_host,
                expires_in_s=self.settings.peer_expires_s,
            )
        except RemoteCallError as e:
            if e.error_type == "TransportUnavailableError":
                raise PeerExportRequestError(e.remote_message) from None
            raise PeerExportError(
                f"Model {name!r} cannot give its weights: {e.remote_message}"
            ) from None
        except WorkerControllerError as e:  # the worker died meanwhile
            raise PeerExportError(f"Model {name!r}: {e}") from None
        if path := descriptor.get("shm_path"):
            # The source unlinks it when it expires; we at shutdown, if the
            # pool stops first (its workers exit without cleaning up).
            now = time.monotonic()
            with self._lock:
                self._peer_files = {
                    p: t
                    for p, t in self._peer_files.items()
                    if now - t < self.settings.peer_expires_s
                }
                self._peer_files[path] = now
        return descriptor

    def _tell_workers(self, method: str, **kwargs: Any) -> None:
        """Sends an inline call to every live worker, not waiting."""
        for p in self.pool.processes():
            if p.kind == ProcessKind.WORKER and not p.channel.lost:
                p.channel.call_async(method, **kwargs)

    def _take_engine(
        self,
        name: str,
        engine_key: str | None,
        weights: str,
        cache_entry: str | None,
    ) -> tuple[Lease, dict[str, Any] | None]:
        """Unloads the idle model ``name`` but keeps its engine, into which
        the workers load ``weights`` (from host-cache ``cache_entry`` if
        given); returns its processes, whose workers hold the engine, and
        rank 0's weight-copy figures. ``SwapUnavailableError``
        if it is not an idle model of that shape (nothing changed) or its
        workers could not keep the engine (it is unloaded)."""
        with self._lock:
            record = self._get(name)
            if (
                record.state not in (ModelState.READY, ModelState.PARKED)
                or record.asleep
                or engine_key is None
                or record.engine_key != engine_key
            ):
                raise SwapUnavailableError(
                    f"Model {name!r} ({record.state.value}) cannot be swapped out"
                )
            record.state = ModelState.UNLOADING
        try:
            released = self._release(record, True, weights, cache_entry)
        finally:
            self.engine_metrics.drop(name)
            with self._lock:
                del self._models[name]
        if released.kept is None:
            raise SwapUnavailableError(
                f"Model {name!r} was unloaded but its engine could not be kept"
            )
        logger.info("Model %r unloaded, its engine kept for a swap", name)
        return released.kept, (released.workers[0] or {}).get("weights_load")

    def _load(self, record: _Model, lease: Lease | None, swap: bool = False) -> None:
        timings = record.timings_s
        config = record.vllm_config
        assert config is not None
        world_size = config.parallel_config.world_size
        with self._phase(record, "lease"):
            if lease is None:
                used = claimed(self.device_claims().values())
                share = record.gpu_memory_utilization
                workers = self.pool.lease(
                    ProcessKind.WORKER,
                    world_size,
                    prefer=lambda p: fits(used, p.device_index, share),
                )
                try:
                    (host,) = self.pool.lease(ProcessKind.ENGINE_HOST, 1)
                except BaseException:
                    self.pool.give_back(workers)
                    raise
                lease = Lease(workers, host)
            assert len(lease.workers) == world_size
            record.workers, record.host = lease.workers, lease.host
            for p in lease.processes:
                p.model = record.name
            if record.workers[0].device_index is not None:
                # Rank i runs on the device of the i-th leased worker.
                config.parallel_config.assigned_physical_gpu_ids = [
                    w.device_index for w in record.workers
                ]
        host = lease.host
        budget_key = self._kv_budget_key(record)
        with self._phase(record, "weights"):
            handle = host.channel.call(
                "prepare", timeout=self.settings.boot_timeout_s, world_size=world_size
            )
            port = get_open_port()
            if not swap:  # a swap keeps the group of the engine it reuses
                for w in record.workers:
                    w.dist_ident = str(port)
            replies = self.proxy.load_workers(
                record.workers,
                config,
                get_distributed_init_method(get_loopback_ip(), port),
                handle,
                swap,
                self._kv_budgets.get(budget_key),
            )
            host.queues = [handle]
            for w, r in zip(record.workers, replies, strict=True):
                w.queues = [r["response_handle"]]
            record.weights_bytes = sum(r["weights_bytes"] for r in replies)
            # A swap's weights were copied as its workers were released.
            record.weights_load = replies[0]["weights_load"] or record.weights_load
        with self._phase(record, "engine_init"):
            started = self._start_engine(
                record, [r["response_handle"] for r in replies]
            )
        timings.update(started["phases"])
        if budget_key is not None and started["available_memory"]:
            self._kv_budgets[budget_key] = started["available_memory"]
        addresses = record.addresses
        assert addresses is not None
        with self._phase(record, "client"):
            record.engine_client = AsyncLLM.from_vllm_config(
                config,
                client_addresses={
                    "input_address": addresses.inputs[0],
                    "output_address": addresses.outputs[0],
                },
                # Ours replace upstream's loggers (a registry per model).
                stat_loggers=self.engine_metrics.stat_loggers(record.name)
                if self.settings.log_stats
                else None,
                disable_log_stats=True,
            )
        assert host.serving is not None
        host.serving.add_done_callback(lambda f: self._on_engine_exit(record, f))

    @contextmanager
    def _phase(self, record: _Model, phase: str) -> Iterator[None]:
        """Times one load phase, logs it, and names it in any failure.

        Phases that run long get a progress line every few seconds, so a
        slow load (weights, compile) is visibly alive.
        """
        start = time.perf_counter()
        done = threading.Event()

        def progress() -> None:
            while not done.wait(_PROGRESS_EVERY_S):
                logger.info(
                    "Loading %r: %s running for %.0f s",
                    record.name,
                    phase,
                    time.perf_counter() - start,
                )

        threading.Thread(target=progress, daemon=True).start()
        try:
            yield
        except (
            InvalidEngineArgsError,
            InsufficientWorkersError,
            ModelBusyError,
            ModelLoadError,
        ):
            raise
        except Exception as e:
            raise ModelLoadError(record.name, phase, str(e)) from e
        finally:
            done.set()
        record.timings_s[phase] = time.perf_counter() - start
        logger.info(
            "Loading %r: %s took %.2f s", record.name, phase, record.timings_s[phase]
        )

    def _kv_budget_key(self, record: _Model) -> tuple | None:
        """What a measured KV-cache budget holds for: the engine's shape on
        the same devices (GPU only: on CPU the "profile" is the warm-up)."""
        devices = tuple(w.device_index for w in record.workers)
        if record.engine_key is None or None in devices:
            return None
        return (record.engine_key, devices)

    def _start_engine(self, record: _Model, response_handles: list) -> dict:
        """Starts EngineCore on the host and answers its handshake
        (``engine_handshake``)."""
        assert record.host is not None and record.vllm_config is not None
        record.addresses = new_engine_addresses()
        handshake = EngineHandshake(self._zmq, record.addresses)
        started: Future = Future()
        try:
            started = record.engine_start = record.host.channel.call_async(
                "start_engine",
                vllm_config=record.vllm_config,
                handshake_address=handshake.address,
                response_handles=response_handles,
                worker_pids=[w.pid for w in record.workers],
                log_stats=self.settings.log_stats,
            )
            handshake.answer(started, self.settings.load_timeout_s)
            result = started.result(self.settings.load_timeout_s)
        except BaseException:
            if not started.done():
                self.pool.recycle(record.host, "engine start did not finish")
            raise
        finally:
            handshake.close()
        record.host.serving = record.host.channel.call_async("serve")
        return result

    # ---------------------------------------------------------------- unload

    def unload(self, name: str) -> UnloadResult:
        """Stops the model's engine and returns its processes to the pool.

        In-flight requests are aborted (they finish with reason ``abort``).
        A failed model is unloaded the same way.
        """
        with self._lock:
            record = self._get(name)
            if record.state in (ModelState.LOADING, ModelState.UNLOADING):
                raise ModelBusyError(
                    f"Model {name!r} is {record.state.value}; try again when done"
                )
            was_serving = record.state in (ModelState.READY, ModelState.PARKED)
            record.state = ModelState.UNLOADING
        start = time.perf_counter()
        if was_serving:
            reports = self._release(record).workers
        else:
            record.released.wait(self.settings.release_timeout_s)
            reports = []
        self.engine_metrics.drop(name)
        with self._lock:
            del self._models[name]
        elapsed = time.perf_counter() - start
        logger.info("Model %r unloaded in %.2f s", name, elapsed)
        return UnloadResult(name, {"total": elapsed}, reports)

    def _release(
        self,
        record: _Model,
        keep: bool = False,
        weights: str | None = None,
        cache_entry: str | None = None,
    ) -> "_Released":
        """Stops the engine (if any) and gives every process back; with
        ``keep``, its workers keep the engine (and load ``weights`` into
        it, from host-cache ``cache_entry`` if given) and the processes
        stay leased (the lease is returned, with the workers' reports) if
        every one of them could.

        Once the engine has stopped, the workers unload (or load the next
        weights) while the engine host tears the engine down.

        Safe on partially loaded models; runs once per model.
        """
        if record.released.is_set():
            return _Released([])
        if record.asleep:
            # Upstream's CuMem allocator frees a block by unmapping it, which
            # sleep has already done: a parked model's workers cannot free
            # their tensors in place. New processes replace them.
            for w in record.workers:
                self.pool.recycle(w, "its parked model was unloaded")
        host = record.host
        host_clean = True
        if host is not None and host.serving is not None:
            host.channel.call_async("stop")
            host_clean = self.proxy.wait(host, host.serving) is not None
        self.proxy.release_workers(record.workers, keep, weights, cache_entry)
        self._close_client(record)
        if host_clean and host is not None and host.serving is not None:
            host_clean = self._retire_engine(host, record)
        released = self.proxy.wait_released(record.workers)
        if keep:
            if host_clean and all((r or {}).get("kept") for r in released):
                assert host is not None
                for p in (*record.workers, host):
                    p.serving = None  # its next load's, once it serves
                record.released.set()
                return _Released(released, Lease(record.workers, host))
            # A rank stopped mid-request or failed: no swap, a full unload.
            released = [
                self.proxy.unload_kept(w) if (r or {}).get("kept") else r
                for w, r in zip(record.workers, released, strict=True)
            ]
        reports = self._return_workers(record.workers, released)
        if host is not None:
            self._give_back_or_recycle(host, host_clean, "its engine did not stop")
        record.released.set()
        return _Released(reports)

    def _return_workers(
        self, workers: list[PooledProcess], released: list[dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """Gives back each worker that returned to its boot state, recycles
        the others; returns the per-rank reports."""
        tolerance = self.settings.memory_tolerance_bytes
        reports = []
        for w, report in zip(workers, released, strict=True):
            if w.loading is not None and not w.loading.done():
                # Its load never answered (timed out, or stuck waiting for
                # a failed peer): it cannot be trusted to be idle.
                self.pool.recycle(w, "its load did not finish")
                reports.append({"pid": w.pid, "recycled": True})
                continue
            w.last_unload = report
            # A worker whose load failed has already torn itself down.
            driver_growth = (report or {}).get("driver_growth_bytes") or 0
            clean = w.serving is None or (
                report is not None
                and report["growth_bytes"] <= tolerance
                and driver_growth <= self.settings.driver_memory_tolerance_bytes
                and not report["leaked"]
            )
            if report is not None and not clean:
                logger.warning(
                    "Worker %s did not get back to its boot state: %.1f MiB "
                    "above baseline (tolerance %.1f MiB; %.1f MiB by the "
                    "driver's count), still alive: %s",
                    w.name,
                    report["growth_bytes"] / 2**20,
                    tolerance / 2**20,
                    driver_growth / 2**20,
                    report["leaked"] or "nothing",
                )
            self._give_back_or_recycle(w, clean, "did not return to its boot state")
            reports.append({"pid": w.pid, "recycled": not clean, **(report or {})})
        return reports

    def _retire_engine(self, host: PooledProcess, record: _Model) -> bool:
        """Has the host end the stopped engine's socket threads (after the
        front end closed); False if it could not."""
        assert record.addresses is not None
        try:
            return host.channel.call(
                "retire_engine",
                timeout=self.settings.release_timeout_s,
                input_address=record.addresses.inputs[0],
                output_address=record.addresses.outputs[0],
            )
        except Exception as e:
            logger.error("%s could not retire its engine: %s", host.name, e)
            return False

    def _give_back_or_recycle(self, p: PooledProcess, clean: bool, why: str) -> None:
        if p.state == ProcessState.DEAD or p.channel.lost:
            return
        if clean:
            self.pool.give_back([p])
        else:
            self.pool.recycle(p, why)

    def _close_client(self, record: _Model) -> None:
        """Shuts the model's AsyncLLM after its last outputs arrived."""
        client, record.engine_client = record.engine_client, None
        if client is None:
            return
        deadline = time.monotonic() + self.settings.unload_drain_s
        while (
            not client.errored
            and client.output_processor.has_unfinished_requests()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        shutdown_engine_client(client)

    # ------------------------------------------------------- park / unpark

    def can_park(self, name: str) -> bool:
        """Whether ``park`` would succeed now: the model is ready, was loaded
        with sleep mode, and its weights fit the host-RAM budget."""
        try:
            with self._lock:
                self._check_parkable(self._get(name))
        except WorkerControllerError:
            return False
        return True

    def _check_parkable(self, record: _Model) -> None:
        # A model parked with its memory kept may still free it.
        if record.state != ModelState.READY and not (
            record.state == ModelState.PARKED and not record.asleep
        ):
            raise ParkingUnavailableError(
                f"Model {record.name!r} is {record.state.value}, not ready"
            )
        assert record.vllm_config is not None
        if not record.vllm_config.model_config.enable_sleep_mode:
            raise ParkingUnavailableError(
                f"Model {record.name!r} was loaded without sleep mode "
                "(enable_sleep_mode, CUDA only); unload it instead"
            )
        parked = sum(r.weights_bytes for r in self._models.values() if r.asleep)
        if parked + record.weights_bytes > self.settings.park_memory_bytes:
            raise ParkingUnavailableError(
                f"Parking {record.name!r} needs {record.weights_bytes / 2**30:.2f} "
                f"GiB of host memory; {parked / 2**30:.2f} of "
                f"{self.settings.park_memory_bytes / 2**30:.2f} GiB are taken"
            )

    async def park(self, name: str, keep_memory: bool = False) -> dict[str, float]:
        """Frees the model's device memory, keeping its processes and, in
        pinned host memory, its weights (vLLM's sleep mode, level 1).

        With ``keep_memory`` the model is parked but its device memory stays
        mapped until it is needed (``park`` again, by placement): while
        nothing else needs that memory, unparking is a state change instead
        of re-mapping the whole KV cache (0.6 s for 127 GiB on an H200).

        A coroutine: run it on the event loop that serves the model's
        ``AsyncLLM``. Requests still in flight are aborted.
        """
        with self._lock:
            record = self._get(name)
            self._check_parkable(record)
            if keep_memory:
                if record.state == ModelState.READY:
                    record.state = ModelState.PARKED
                    logger.info("Model %r parked, its device memory kept", name)
                return {"park": 0.0}
            record.state = ModelState.PARKING
        assert record.engine_client is not None
        start = time.perf_counter()
        try:
            await record.engine_client.sleep(level=1)
        except Exception as e:
            self._fail(record, f"parking failed: {e}")
            raise
        elapsed = time.perf_counter() - start
        with self._lock:
            record.asleep = True
            record.state = ModelState.PARKED
        logger.info("Model %r parked in %.3f s", name, elapsed)
        return {"park": elapsed}

    async def unpark(self, name: str) -> dict[str, float]:
        """Maps the model's device memory again and copies its weights back;
        it serves as before (same CUDA graphs, same addresses).

        The caller makes room on the model's devices first (``placement``).
        """
        with self._lock:
            record = self._get(name)
            if record.state != ModelState.PARKED:
                raise ParkingUnavailableError(
                    f"Model {name!r} is {record.state.value}, not parked"
                )
            if not record.asleep:  # parked with its memory kept
                record.state = ModelState.READY
                record.brought_up = "unpark"
                record.timings_s = {"unpark": 0.0, "total": 0.0}
                return {"unpark": 0.0}
            record.state = ModelState.UNPARKING
            record.asleep = False
        assert record.engine_client is not None
        start = time.perf_counter()
        try:
            await record.engine_client.wake_up()
        except Exception as e:
            # Some of its memory may still be unmapped: its workers are
            # replaced, not torn down in place (see _release).
            record.asleep = True
            self._fail(record, f"unparking failed: {e}")
            raise
        elapsed = time.perf_counter() - start
        with self._lock:
            record.state = ModelState.READY
            record.brought_up = "unpark"
            record.timings_s = {"unpark": elapsed, "total": elapsed}
        logger.info("Model %r unparked in %.3f s", name, elapsed)
        return {"unpark": elapsed}

    def device_claims(self) -> dict[str, dict[int, float]]:
        """Per awake engine: the share of each device's memory it claims
        (its ``gpu_memory_utilization``; nothing on CPU)."""
        claims: dict[str, dict[int, float]] = {}
        with self._lock:
            for r in self._models.values():
                if r.asleep or r.vllm_config is None or r.released.is_set():
                    continue
                claims[r.name] = {
                    w.device_index: r.gpu_memory_utilization
                    for w in r.workers
                    if w.device_index is not None
                }
        return claims

    def swappable(self, engine_key: str | None) -> list[str]:
        """Idle models with their device memory mapped (ready, or parked
        keeping it) whose engine a load of this shape could take over
        (``load(swap_from=...)``)."""
        if engine_key is None:
            return []
        with self._lock:
            return [
                r.name
                for r in self._models.values()
                if r.state in (ModelState.READY, ModelState.PARKED)
                and not r.asleep
                and r.engine_key == engine_key
            ]

    def devices(self, name: str) -> list[int | None]:
        """The devices of a loaded model's ranks."""
        with self._lock:
            return [w.device_index for w in self._get(name).workers]

    # -------------------------------------------------------------- failures

    def _on_engine_exit(self, record: _Model, serving: Future) -> None:
        """The host's busy loop ended; unexpected unless unloading."""
        with self._lock:
            if record.state not in (ModelState.READY, ModelState.PARKED):
                return  # unloading, or load() sees it and fails
            record.state = ModelState.FAILED
        try:
            error = serving.result()["error"] or "engine stopped unexpectedly"
        except Exception as e:
            error = str(e)
            # The host died before it could tell the front end: do it here
            # so in-flight requests fail instead of hanging.
            assert record.addresses is not None
            notify_engine_dead(self._zmq, record.addresses.outputs[0])
        self._fail(record, record.death or error)

    def _fail(self, record: _Model, error: str) -> None:
        """Marks a model failed and gives its processes back, off-thread."""
        with self._lock:
            record.state = ModelState.FAILED
            record.error = error
        logger.error("Model %r failed: %s", record.name, error)
        threading.Thread(
            target=self._release, args=(record,), name="WCFailModel", daemon=True
        ).start()

    def _on_process_lost(self, p: PooledProcess) -> None:
        """A pooled process died; fail the model it served, if any."""
        with self._lock:
            record = self._models.get(p.model) if p.model else None
            if record is not None and record.death is None:
                record.death = _death_reason(p)
        if record is None or record.host is None or p is record.host:
            return  # the host's own death resolves its serve future
        if record.engine_start is not None and not record.engine_start.done():
            # The engine may be waiting for this rank (its queues' ready
            # barrier has no timeout): the host cannot be trusted to finish.
            self.pool.recycle(record.host, f"a rank of its engine died ({p.name})")
        elif record.host.serving is not None:
            # The engine notices through its worker monitor and exits;
            # _on_engine_exit does the rest. Ask it to stop in any case.
            record.host.channel.call_async("stop")

    # ------------------------------------------------------------ listings

    def engine_client(self, name: str) -> AsyncLLM:
        """vLLM's own async engine client for a loaded model."""
        with self._lock:
            record = self._get(name)
            if record.engine_client is None:
                raise WorkerControllerError(f"Model {name!r} is {record.state.value}")
            return record.engine_client

    def failure(self, name: str) -> str | None:
        """Why a model stopped serving (which process died, or the
        engine's error), if it did."""
        with self._lock:
            record = self._models.get(name)
            return None if record is None else record.death or record.error

    def list_models(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "name": r.name,
                    "model": r.model,
                    "state": r.state.value,
                    "weights_bytes": r.weights_bytes,
                    "worker_pids": [w.pid for w in r.workers],
                    "engine_host_pid": r.host.pid if r.host else None,
                    "brought_up": r.brought_up,
                    "timings_s": dict(r.timings_s),
                    "weights_load": r.weights_load,
                    "device_memory": "released" if r.asleep else "held",
                    "max_model_len": (
                        r.vllm_config.model_config.max_model_len
                        if r.vllm_config is not None
                        else None
                    ),
                    "error": r.error,
                }
                for r in self._models.values()
            ]

    def list_workers(self, with_health: bool = False) -> list[dict[str, Any]]:
        """Every pooled process; ``with_health`` also asks each one for its
        current state and memory (one control-channel round trip each)."""
        procs = self.pool.processes()
        health = (
            self.proxy.health(procs, timeout=5.0)
            if with_health
            else [None] * len(procs)
        )
        return [
            {
                "kind": p.kind.value,
                "index": p.index,
                "pid": p.pid,
                "device": p.device,
                "state": p.state.value,
                "model": p.model,
                "boot_s": p.boot_s,
                "baseline_bytes": p.baseline_bytes,
                "last_unload": p.last_unload,
                **({"health": h} if with_health else {}),
            }
            for p, h in zip(procs, health, strict=True)
        ]

    def shutdown(self) -> None:
        """Unloads every model and stops every pooled process."""
        for name in [m["name"] for m in self.list_models()]:
            try:
                self.unload(name)
            except WorkerControllerError as e:
                logger.warning("Unloading %r at shutdown failed: %s", name, e)
        self.pool.shutdown()
        self._discard_exports(list(self._peer_files))
        if self.weight_cache is not None:
            self.weight_cache.close()
        self._zmq.term()

    def state(self, name: str) -> ModelState | None:
        with self._lock:
            record = self._models.get(name)
            return None if record is None else record.state

    def _get(self, name: str) -> _Model:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(f"No model named {name!r} is loaded") from None


@dataclass(frozen=True)
class _Released:
    """What releasing a model's processes gave: the unload reports of its
    workers, or (when its engine was kept for a swap) their lease."""

    workers: list[dict[str, Any] | None]
    kept: Lease | None = None


def _death_reason(p: PooledProcess) -> str:
    """'worker-2 (pid 123) died: SIGKILL', from the exit code."""
    code = p.proc.exitcode
    if code is None:
        how = "its control channel closed"
    elif code < 0:
        try:
            how = signal.Signals(-code).name
        except ValueError:
            how = f"signal {-code}"
    else:
        how = f"exit code {code}"
    return f"{p.name} (pid {p.pid}) died: {how}"
