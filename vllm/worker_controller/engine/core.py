# SPDX-License-Identifier: Apache-2.0
"""Engine host: a warm CPU-only process that runs one EngineCore at a time.

Upstream starts a fresh EngineCore process per engine, paying the imports
again. An engine host has them done and runs :class:`PooledEngineCoreProc`
(upstream's ``EngineCoreProc`` with load/unload hooks) for each lease: the
same ZMQ handshake and wire protocol to the front end, the same scheduler
and busy loop, with a :class:`RemoteExecutor` over the leased workers.
"""

import gc
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import zmq

import vllm.envs as envs
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.worker_controller.compat.engine import (
    ENGINE_CORE_DEAD,
    EngineCoreProc,
    EngineCoreRequest,
    EngineCoreRequestType,
    EngineShutdownState,
    MsgpackEncoder,
    send_engine_dead,
)
from vllm.worker_controller.compat.executor import (
    Handle,
    MessageQueue,
    make_zmq_socket,
)
from vllm.worker_controller.compat.message_queues import close_message_queue
from vllm.worker_controller.executor.remote_executor import (
    RemoteExecutor,
    WorkerLease,
)
from vllm.worker_controller.process import ControlServer, PooledProcessHandler
from vllm.worker_controller.worker.model_runner import trim_host_heap

logger = init_logger(__name__)

# The request id of the message that ends a retired engine's input thread.
_RETIRE_REQUEST_ID = "vllm-worker-controller-retire"
# The routing id upstream's EngineCore gives its input socket (engine 0).
_ENGINE_IDENTITY = (0).to_bytes(length=2, byteorder="little")
_RETIRE_TIMEOUT_S = 5.0


class PooledEngineCoreProc(EngineCoreProc):
    """``EngineCoreProc`` that can be unloaded from outside its busy loop."""

    def preprocess_add_request(self, request: EngineCoreRequest) -> Any:
        """Upstream's, except for the host's retire message: SystemExit ends
        the input socket thread that runs this, quietly (``threading``
        ignores SystemExit, and upstream catches only ``Exception`` here)."""
        if request.request_id == _RETIRE_REQUEST_ID:
            raise SystemExit
        return super().preprocess_add_request(request)

    def request_unload(self) -> None:
        """Asks the busy loop to abort in-flight requests and exit.

        Thread-safe: the same two steps upstream's SIGTERM handler takes.
        In-flight requests are aborted (``shutdown_timeout`` 0, the
        default), so clients see them finish with reason ``abort``.
        """
        self.shutdown_state = EngineShutdownState.REQUESTED
        self.input_queue.put_nowait((EngineCoreRequestType.WAKEUP, None))

    def run_until_unloaded(self) -> str | None:
        """Runs the busy loop; returns None on unload, else the failure.

        On failure the front end is told the engine is dead, as upstream's
        ``run_engine_core`` does, so its in-flight requests fail fast. On
        return the executor has let go of the workers; the rest of the
        teardown is ``tear_down``'s.
        """
        try:
            self.run_busy_loop()
        except SystemExit:
            return None
        except Exception as e:
            logger.exception("EngineCore failed while serving.")
            send_engine_dead(self)
            return f"{type(e).__name__}: {e}"
        finally:
            self.model_executor.shutdown()
        return None

    def tear_down(self) -> None:
        """Upstream's shutdown, then drops this object's state.

        Upstream's socket IO threads loop for the life of their process and
        hold this object. Dropping its state frees the scheduler, executor
        and shared-memory queues now; the threads end at
        ``EngineHost.retire_engine``, once the front end is closed.
        """
        self.shutdown()
        vars(self).clear()


class EngineHost(PooledProcessHandler):
    """Control-channel handler of an engine-host process."""

    INLINE_METHODS = frozenset({"describe", "health", "stop"})

    def __init__(self, index: int):
        self.index = index
        self.state = "idle"
        self._broadcast_mq: MessageQueue | None = None
        self.engine_core: PooledEngineCoreProc | None = None
        self._stopped: PooledEngineCoreProc | None = None
        """The engine that stopped serving, until its teardown ran."""
        self._retiring: (
            tuple[queue.Queue, threading.Thread, list[threading.Thread]] | None
        ) = None
        """The last engine's output queue, output thread and the threads it
        started, until retired."""

    def describe(self) -> dict[str, Any]:
        return {"baseline_bytes": 0, "device": "cpu"}

    def health(self) -> dict[str, Any]:
        return {"state": self.state}

    def prepare(self, world_size: int) -> Handle:
        """Creates the broadcast queue the workers attach to.

        The writer must own the queue, and the workers need its handle
        before the engine exists, so it is made ahead of the engine.
        """
        if self._broadcast_mq is not None:  # a load that failed before start
            close_message_queue(self._broadcast_mq)
        self._broadcast_mq = MessageQueue(
            world_size,
            world_size,
            max_chunk_bytes=envs.VLLM_MQ_MAX_CHUNK_BYTES_MB * 1024 * 1024,
        )
        return self._broadcast_mq.export_handle()

    def start_engine(
        self,
        vllm_config: VllmConfig,
        handshake_address: str,
        response_handles: list[Handle],
        worker_pids: list[int],
        log_stats: bool,
    ) -> dict[str, Any]:
        """Builds the EngineCore (handshake, profile, KV cache, warm-up);
        returns the durations of the executor's load phases (``phases``)
        and each rank's KV-cache budget (``available_memory``)."""
        assert self._broadcast_mq is not None, "start_engine before prepare"
        lease = WorkerLease(self._broadcast_mq, response_handles, worker_pids)
        self._broadcast_mq = None
        self.state = "starting"
        RemoteExecutor.pending_lease = lease
        before = set(threading.enumerate())
        try:
            self.engine_core = PooledEngineCoreProc(
                vllm_config=vllm_config,
                local_client=True,
                handshake_address=handshake_address,
                executor_class=RemoteExecutor,
                log_stats=log_stats,
            )
        except BaseException:
            RemoteExecutor.pending_lease = None
            lease.close()
            self.state = "idle"
            raise
        threads = [t for t in threading.enumerate() if t not in before]
        core = self.engine_core
        self._retiring = (core.output_queue, core.output_thread, threads)
        self.state = "serving"
        return {"phases": lease.phases_s, "available_memory": lease.available_memory}

    def serve(self) -> dict[str, Any]:
        """Runs the engine until it is unloaded or fails.

        Replies once the engine has stopped and let go of its workers; its
        teardown (a full garbage collection, ~0.3 s) runs after the reply,
        while the controller releases the workers (a swap loads the next
        checkpoint into them meanwhile).
        """
        core = self.engine_core
        assert core is not None, "serve before start_engine"
        try:
            error = core.run_until_unloaded()
        finally:
            self._stopped, self.engine_core = core, None
        return {"error": error}

    def after_reply(self) -> None:
        core, self._stopped = self._stopped, None
        if core is None:
            return
        try:
            core.tear_down()
        finally:
            # Upstream's shutdown has just unfrozen the heap and collected
            # it in full. Freezing what survived makes the next engine's
            # start-up collection (``freeze_gc_heap``) scan only what is
            # new: a full pass costs ~0.3 s, on a swap's path. The next
            # shutdown unfreezes it all again, so nothing stays uncollected
            # beyond one engine. (A worker's ``release_memory`` would also
            # give this CPU-only process a CUDA context of its own.)
            gc.freeze()
            trim_host_heap()
            self.state = "idle"

    def retire_engine(self, input_address: str, output_address: str) -> bool:
        """Ends the last engine's socket threads once its front end closed;
        returns whether they ended.

        Upstream's EngineCore IO threads run for the life of their process:
        the output thread until it sends ENGINE_CORE_DEAD, the input thread
        forever. Standing in for the closed front end, the host binds its two
        addresses (the engine's sockets reconnect to them), lets the output
        thread send ENGINE_CORE_DEAD, and sends the input thread the request
        that ends it (``PooledEngineCoreProc.preprocess_add_request``).
        """
        if self._retiring is None:
            return True
        output_queue, output_thread, threads = self._retiring
        self._retiring = None
        message = (
            EngineCoreRequestType.ADD.value,
            *MsgpackEncoder().encode(
                EngineCoreRequest(
                    request_id=_RETIRE_REQUEST_ID,
                    prompt_token_ids=None,
                    mm_features=None,
                    sampling_params=None,
                    pooling_params=None,
                    arrival_time=0.0,
                    lora_request=None,
                    cache_salt=None,
                    data_parallel_rank=None,
                )
            ),
        )
        deadline = time.monotonic() + _RETIRE_TIMEOUT_S
        ctx = zmq.Context()
        try:
            pull = make_zmq_socket(ctx, output_address, zmq.PULL, bind=True, linger=0)
            accepted = pull.get_monitor_socket(zmq.EVENT_ACCEPTED)
            router = make_zmq_socket(ctx, input_address, zmq.ROUTER, bind=True)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # The output thread sends its last message and closes at once:
            # its socket must have reconnected to us first, or the message
            # waits out the socket's linger (4 s) and the thread with it.
            if output_thread.is_alive():  # a failed engine's has ended
                accepted.poll(_RETIRE_TIMEOUT_S * 1000)
                output_queue.put_nowait(ENGINE_CORE_DEAD)
            while time.monotonic() < deadline:
                try:  # fails until the input socket has reconnected
                    router.send_multipart((_ENGINE_IDENTITY, *message), zmq.NOBLOCK)
                    break
                except zmq.ZMQError:
                    time.sleep(0.02)
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        finally:
            ctx.destroy(linger=0)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            logger.warning("Threads of the last engine did not end: %s", alive)
        return not alive

    def stop(self) -> None:
        if (engine_core := self.engine_core) is not None:
            engine_core.request_unload()


def run_engine_host(conn: Connection, index: int) -> None:
    """Entry point of an engine-host process."""
    # The controller coordinates shutdown: a terminal's Ctrl-C, or a
    # SIGTERM sent to the server's whole process group, must not kill pooled
    # processes behind its back (they exit when the controller's pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ControlServer(conn, EngineHost(index)).serve_forever()
