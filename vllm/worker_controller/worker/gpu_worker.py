# SPDX-License-Identifier: Apache-2.0
"""Pooled worker: one warm process that hosts model after model in place.

The process imports torch and vLLM and initialises its device once (CUDA
context on GPU, thread binding inherited from its spawn environment on CPU),
then waits. On ``load_model`` it runs upstream's ``WorkerProc`` start-up
for the engine it is leased to: ``Worker`` + model runner, process groups,
weights, message queues (the same code ``MultiprocExecutor`` runs in a fresh
process). ``serve`` runs upstream's busy loop until the controller releases
the worker; then ``unload_model`` tears everything down and checks that
memory is back at the boot baseline, or, for a swap, ``keep_model`` keeps
the engine (compiled model, CUDA graphs, KV cache) for a checkpoint of the
same shape, whose weights ``load_model(swap=True)`` copies into it.
"""

import signal
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import zmq

from vllm.config import VllmConfig, set_current_vllm_config
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker_controller import plugin
from vllm.worker_controller.compat.cpu_shm import release_cpu_shm
from vllm.worker_controller.compat.cumem import install_pool_releasing_allocator
from vllm.worker_controller.compat.executor import (
    AsyncModelRunnerOutput,
    Handle,
    WorkerProc,
    WorkerWrapperBase,
    attach_worker_message_queues,
    set_random_seed,
)
from vllm.worker_controller.compat.message_queues import close_message_queue
from vllm.worker_controller.compat.process_state import (
    destroy_distributed_environment,
    destroy_model_parallel,
)
from vllm.worker_controller.config import make_dummy_vllm_config
from vllm.worker_controller.peer.descriptor import layout_of
from vllm.worker_controller.peer.export import export_weights
from vllm.worker_controller.peer.loaded_state import (
    NotExportableError,
    after_reload,
    keep_replaced_cpu_tensors,
)
from vllm.worker_controller.process import ControlServer, PooledProcessHandler
from vllm.worker_controller.worker import leak_debug
from vllm.worker_controller.worker.compile_cache import (
    key_compile_cache_by_architecture,
)
from vllm.worker_controller.worker.host_cache import (
    attached,
    cache_entry_of,
    route_through_host_cache,
    take_weights_load,
)
from vllm.worker_controller.worker.model_runner import (
    driver_memory_in_use,
    held_requests,
    memory_in_use,
    memory_summary,
    release_compiled_model,
    release_memory,
    release_reload_records,
    reset_process_state,
)

logger = init_logger(__name__)

# How often a cancellable wait checks for a release, in milliseconds.
_POLL_MS = 200


class WorkerReleased(Exception):
    """The controller released the worker before its engine attached."""


class PooledWorkerProc(WorkerProc):
    """``WorkerProc`` whose process outlives it.

    Upstream ties one ``WorkerProc`` to one process; here a pooled process
    builds one per lease. Construction is upstream's; only the ready
    barrier is made cancellable, because the engine host may fail before it
    reaches its side of the barrier.
    """

    def shutdown(self) -> None:
        """Upstream's teardown, after ending the async-output thread and
        closing the queues' sockets.

        Upstream's thread loops forever (its process would exit); here it
        would keep the old Worker, and its device buffers, alive. The
        queues' sockets, left to the garbage collector, would block it on
        a message that a departed engine host never took.
        """
        if (thread := getattr(self, "async_output_copy_thread", None)) is not None:
            self.async_output_queue.put(_StopOutputThread())
            thread.join(timeout=10)
        self.close_queues()
        super().shutdown()

    def close_queues(self) -> None:
        """Closes this lease's queues to the engine host (at once, not when
        garbage-collected)."""
        for mq in (self.rpc_broadcast_mq, self.worker_response_mq):
            if mq is not None:
                close_message_queue(mq)

    def wait_until_ready(self, released: threading.Event) -> None:
        """Upstream's MQ barrier, in its order, but abandonable."""
        for mq in (self.rpc_broadcast_mq, self.worker_response_mq):
            assert mq is not None
            _cancellable(mq.wait_until_ready, mq.local_socket, released)


class EngineBuildMemo:
    """Upstream's ``WorkerWrapperBase``, remembering what building the
    engine on it produced, so that an engine swapped onto it skips that work.

    The engine host's EngineCore builds its engine through three RPCs to
    the workers: profile (``determine_available_memory``), KV cache
    (``initialize_from_config``) and compile / CUDA-graph capture
    (``compile_or_warm_up_model``). The first engine on this Worker runs
    them and they are recorded; after a swap (same architecture, same
    engine args, weights copied into the same parameter storage) the new
    EngineCore asks again and gets the recorded answers: the KV cache, the
    compiled model and the captured graphs are the ones already there.
    """

    def __init__(self, wrapper: WorkerWrapperBase, kv_budget: int | None = None):
        self.wrapper = wrapper
        self.replay = False
        self._available_memory: int | None = kv_budget
        """The KV-cache budget: measured, or the one an earlier engine of
        this shape measured on this device (``kv_budget``)."""
        self._kv_cache_configs: list[Any] | None = None
        self._compilation_times: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapper, name)

    def determine_available_memory(self) -> int:
        """Upstream's profile, unless the budget is known. Skipping it on
        GPU skips only the measurement: the first forward, which compiles
        the model, then runs in the warm-up (which compiles and captures
        anyway)."""
        if self._available_memory is None:
            self._available_memory = self.wrapper.determine_available_memory()
        elif not self.replay:
            logger.info(
                "Skipped memory profiling: KV-cache budget %.2f GiB, as measured "
                "for an engine of this shape on this device before",
                self._available_memory / 2**30,
            )
        return self._available_memory

    def initialize_from_config(self, kv_cache_configs: list[Any]) -> None:
        if not self.replay:
            self.wrapper.initialize_from_config(kv_cache_configs)
            self._kv_cache_configs = kv_cache_configs
        elif kv_cache_configs != self._kv_cache_configs:
            raise RuntimeError(
                "The swapped-in engine's KV cache layout differs from the kept one"
            )

    def compile_or_warm_up_model(self) -> Any:
        if not self.replay or self._compilation_times is None:
            self._compilation_times = self.wrapper.compile_or_warm_up_model()
        else:
            # Upstream's warm-up ends by re-seeding; a swapped-in engine
            # must start from the same random state as a fresh one.
            worker = self.wrapper.worker
            set_random_seed(worker.model_config.seed)
        return self._compilation_times


class _StopOutputThread(AsyncModelRunnerOutput):
    """Queued last; upstream's loop catches ``Exception`` from
    ``get_output``, so ``SystemExit`` ends the thread (quietly)."""

    def get_output(self):
        raise SystemExit


def _cancellable(fn, sock: zmq.Socket, released: threading.Event) -> None:
    sock.setsockopt(zmq.RCVTIMEO, _POLL_MS)
    try:
        while True:
            try:
                return fn()
            except zmq.Again:
                if released.is_set():
                    raise WorkerReleased() from None
    finally:
        sock.setsockopt(zmq.RCVTIMEO, -1)


class PooledWorker(PooledProcessHandler):
    """Control-channel handler of a pooled worker process."""

    INLINE_METHODS = frozenset(
        {
            "describe",
            "health",
            "release",
            "attach_cached_weights",
            "forget_cached_weights",
        }
    )
    # Copies a peer's weights out while the engine serves on the main thread.
    THREAD_METHODS = frozenset({"export_weights"})

    def __init__(self, index: int, device_index: int | None):
        self.index = index
        self.device_index = device_index
        self.baseline_bytes = memory_in_use()
        self.driver_baseline_bytes = driver_memory_in_use(device_index)
        self.proc: PooledWorkerProc | None = None
        self.state = "idle"
        self._released = threading.Event()
        self._keep = False
        """Whether the lease being released keeps its engine for a swap."""
        self._next_weights: tuple[str, str | None] | None = None
        """The checkpoint a swap brings in (and its host-cache entry),
        loaded as soon as the engine is kept (while the engine host tears
        the old engine down)."""
        self.loads = 0
        self._export_lock = threading.Lock()
        """Held while an export reads the model: an unload waits for it."""

    def describe(self) -> dict[str, Any]:
        return {
            "baseline_bytes": self.baseline_bytes,
            "device": str(current_platform.device_type)
            + ("" if self.device_index is None else f":{self.device_index}"),
        }

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "memory_bytes": memory_in_use(),
            "driver_memory_bytes": driver_memory_in_use(self.device_index),
            "loads": self.loads,
        }

    def load_model(
        self,
        vllm_config: VllmConfig,
        rank: int,
        distributed_init_method: str,
        input_shm_handle: Handle,
        is_driver_worker: bool,
        swap: bool = False,
        kv_budget: int | None = None,
    ) -> dict[str, Any]:
        """Builds Worker + runner, joins the engine's group, loads weights;
        with ``swap``, copies the weights into the kept engine instead.
        ``kv_budget``: the KV-cache bytes an earlier engine of this shape
        measured on this device, so that this one skips profiling."""
        self._released.clear()
        self._keep = False
        self.state = "loading"
        start = time.perf_counter()
        if swap:
            self._attach_swapped(vllm_config, input_shm_handle)
            return self._loaded(start)
        if self.proc is not None:  # kept for a swap that did not happen
            self.unload_model()
            self.state = "loading"
        # A pool loads many checkpoints of few architectures: let them share
        # one compiled artifact (see compile_cache).
        key_compile_cache_by_architecture(vllm_config)
        try:
            self.proc = PooledWorkerProc(
                vllm_config=vllm_config,
                local_rank=rank,
                rank=rank,
                distributed_init_method=distributed_init_method,
                input_shm_handle=input_shm_handle,
                shared_worker_lock=None,
                is_driver_worker=is_driver_worker,
            )
        except BaseException:
            self.unload_model()
            raise
        self.proc.worker = EngineBuildMemo(self.proc.worker, kv_budget)
        return self._loaded(start)

    def attach_cached_weights(self, entry: str) -> None:
        """Maps (and pins) a host-cache entry the controller just filled,
        in the background: pinning takes time, better spent before a load
        needs the entry than during it."""
        threading.Thread(
            target=attached.get, args=(entry,), name="WCAttachWeights", daemon=True
        ).start()

    def forget_cached_weights(self, entry: str) -> None:
        """Unmaps an entry the controller evicted (its memory is freed once
        no process maps it)."""
        attached.forget(entry)

    def export_weights(
        self,
        transport: str = "auto",
        target_host: str | None = None,
        bind_host: str = "127.0.0.1",
        expires_in_s: float = 300.0,
    ) -> dict[str, Any]:
        """Publishes this rank's loaded parameters for a peer load
        (``peer/export.py``): a descriptor the target loader copies with.
        Runs on its own thread; the engine keeps serving."""
        with self._export_lock:
            proc = self.proc
            if proc is None or self.state != "serving":
                raise NotExportableError(f"worker {self.index} holds no ready model")
            worker = proc.worker
            worker = getattr(worker, "wrapper", worker).worker
            config = worker.vllm_config
            parallel = config.parallel_config
            return export_weights(
                worker.get_model(),
                model_name=str(config.model_config.served_model_name),
                checkpoint=config.model_config.model,
                layout=layout_of(
                    worker.rank,
                    parallel.tensor_parallel_size,
                    parallel.pipeline_parallel_size,
                    config.model_config.dtype,
                    config.model_config.quantization,
                ),
                transport=transport,
                target_host=target_host,
                bind_host=bind_host,
                expires_in_s=expires_in_s,
            )

    def _reload_weights(self, path: str, cache_entry: str | None) -> None:
        """Loads a checkpoint into the kept model's parameters, in place
        (upstream's ``reload_weights``: layerwise, so processed and tied
        weights end up where the captured graphs read them), from the host
        cache if ``cache_entry`` holds it."""
        assert self.proc is not None
        worker = self.proc.worker.wrapper.worker
        route_through_host_cache(worker.vllm_config.load_config, cache_entry)
        with set_current_vllm_config(worker.vllm_config):
            worker.reload_weights(weights_path=path)
        after_reload(worker.get_model())

    def _attach_swapped(
        self, vllm_config: VllmConfig, input_shm_handle: Handle
    ) -> None:
        """Makes the kept engine the new model's: its weights (unless the
        release loaded them already), its name, the new engine's queues."""
        proc = self.proc
        if proc is None or not isinstance(proc.worker, EngineBuildMemo):
            raise RuntimeError("no kept engine to swap weights into")
        worker = proc.worker.wrapper.worker
        try:
            if worker.model_config.model != vllm_config.model_config.model:
                self._reload_weights(
                    vllm_config.model_config.model,
                    cache_entry_of(vllm_config.load_config),
                )
            worker.model_config.served_model_name = (
                vllm_config.model_config.served_model_name
            )
            attach_worker_message_queues(proc, input_shm_handle, vllm_config)
        except BaseException:
            self.unload_model()
            raise
        proc.worker.replay = True

    def _loaded(self, start: float) -> dict[str, Any]:
        assert self.proc is not None
        self.loads += 1
        if leak_debug.enabled():
            logger.info("After load_model: %s", leak_debug.pool_report())
        assert self.proc.worker_response_mq is not None
        runner = self.proc.worker.wrapper.worker.model_runner
        return {
            "response_handle": self.proc.worker_response_mq.export_handle(),
            "load_s": time.perf_counter() - start,
            "weights_load": take_weights_load(),
            # What parking this model would pin in host memory.
            "weights_bytes": int(getattr(runner, "model_memory_usage", 0)),
        }

    def serve(self) -> dict[str, Any]:
        """Runs upstream's busy loop until released, then unloads.

        The reply doubles as the controller's notice that the worker is
        free again, and carries the unload report.
        """
        assert self.proc is not None, "serve before load_model"
        self.state = "serving"
        try:
            self.proc.wait_until_ready(self._released)
            self.proc.worker_busy_loop()
        except (WorkerReleased, RuntimeError) as e:
            # A released broadcast queue raises RuntimeError("cancelled").
            if not self._released.is_set():
                logger.error("Worker busy loop ended unexpectedly: %s", e)
        if self._keep and self._engine_idle():
            return self.keep_model()
        return self.unload_model()

    def release(
        self,
        keep: bool = False,
        weights_path: str | None = None,
        cache_entry: str | None = None,
    ) -> None:
        """Ends the busy loop (or the ready barrier) of the current lease;
        ``keep``: keep the engine for a swap instead of unloading, and load
        ``weights_path`` into it right away (from host-cache entry
        ``cache_entry`` if given)."""
        self._keep = keep
        self._next_weights = (
            None if weights_path is None else (weights_path, cache_entry)
        )
        self._released.set()
        proc = self.proc
        if proc is not None and proc.rpc_broadcast_mq is not None:
            proc.rpc_broadcast_mq.shutdown()

    def _engine_idle(self) -> bool:
        """Whether the runner holds no request state (the engine stopped
        idle), so that a next engine can start on it as on a fresh one."""
        proc = self.proc
        if proc is None or not isinstance(proc.worker, EngineBuildMemo):
            return False
        return held_requests(proc.worker.wrapper.worker.model_runner) == 0

    def keep_model(self) -> dict[str, Any]:
        """Detaches from the stopped engine's queues, keeping the Worker,
        its model, KV cache and graphs for the next checkpoint, whose
        weights it then loads (if the release named them)."""
        proc = self.proc
        assert proc is not None
        proc.close_queues()
        proc.rpc_broadcast_mq = proc.worker_response_mq = None
        self.state = "kept"
        logger.info("Worker %d keeps its engine for a swap", self.index)
        if (weights := self._next_weights) is not None:
            try:
                self._reload_weights(*weights)
            except Exception as e:
                logger.error(
                    "Loading %s into the kept engine failed: %s", weights[0], e
                )
                return self.unload_model()
        return {
            "kept": True,
            "memory_bytes": memory_in_use(),
            "weights_load": take_weights_load(),
        }

    def _log_driver_memory(self, when: str) -> None:
        used = driver_memory_in_use(self.device_index)
        if used is not None and self.driver_baseline_bytes is not None:
            growth = (used - self.driver_baseline_bytes) >> 20
            logger.info("Driver memory %s: %d MiB over boot", when, growth)

    def unload_model(self) -> dict[str, Any]:
        """Full reset, then the memory check against the boot baseline."""
        self.state = "unloading"
        start = time.perf_counter()
        with self._export_lock:  # an export in progress reads the model
            proc, self.proc = self.proc, None
        probes: dict[str, weakref.ref] = {}
        debug = leak_debug.enabled()
        if proc is not None:
            if isinstance(proc.worker, EngineBuildMemo):
                proc.worker = proc.worker.wrapper
            worker = getattr(proc.worker, "worker", None)
            probes = leak_debug.leak_probes(worker)
            release_compiled_model(worker)
            release_reload_records(worker)
            if debug and self.device_index is not None:
                logger.info("Before teardown: %s", leak_debug.pool_report())
                self._log_driver_memory("before teardown")
            proc.shutdown()
            del proc, worker
            if debug:
                self._log_driver_memory("after WorkerProc.shutdown")
        # Idempotent; needed when a load failed after joining its group.
        destroy_model_parallel()
        destroy_distributed_environment()
        if freed := release_cpu_shm():
            logger.debug("Released %d CPU all-reduce mappings", freed)
        reset_process_state()
        if debug:
            self._log_driver_memory("after the process-state reset")
        # Memory figures alone can miss a leak (untouched pages are not in
        # RSS); a surviving runner, model or KV tensor cannot hide.
        leaked = [what for what, ref in probes.items() if ref() is not None]
        if leaked and debug:
            leak_debug.report_survivors(probes)
        in_use = memory_in_use()
        driver = driver_memory_in_use(self.device_index)
        logger.info("Worker %d unloaded: %s", self.index, memory_summary())
        self.state = "idle"
        return {
            "unload_s": time.perf_counter() - start,
            "baseline_bytes": self.baseline_bytes,
            "memory_bytes": in_use,
            "growth_bytes": in_use - self.baseline_bytes,
            "driver_growth_bytes": (
                None
                if driver is None or self.driver_baseline_bytes is None
                else driver - self.driver_baseline_bytes
            ),
            "leaked": leaked,
        }


def run_pooled_worker(conn: Connection, index: int, device_index: int | None) -> None:
    """Entry point of a pooled worker process.

    Imports are already done when this runs (spawn imported this module to
    find it); what is left is the device and the baseline measurement.
    """
    # The controller coordinates shutdown: a terminal's Ctrl-C, or a
    # SIGTERM sent to the server's whole process group, must not kill pooled
    # processes behind its back (they exit when the controller's pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Models loaded here can be peers' sources (on CPU at the cost of
    # keeping their loaded weights), and loads can take a peer's weights.
    keep_replaced_cpu_tensors(True)
    plugin.register()
    boot_config = make_dummy_vllm_config()
    with set_current_vllm_config(boot_config):
        if device_index is not None:
            import torch

            current_platform.set_device(torch.device(f"cuda:{device_index}"))
            torch.zeros(1, device=f"cuda:{device_index}")  # creates the context
            install_pool_releasing_allocator()
    release_memory()
    ControlServer(conn, PooledWorker(index, device_index)).serve_forever()
