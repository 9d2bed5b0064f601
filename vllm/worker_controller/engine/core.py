# SPDX-License-Identifier: Apache-2.0
"""Engine host: a warm CPU-only process that runs one EngineCore at a time.

Upstream starts a fresh EngineCore process per engine, paying the imports
again. An engine host has them done and runs :class:`PooledEngineCoreProc`
(upstream's ``EngineCoreProc`` with load/unload hooks) for each lease: the
same ZMQ handshake and wire protocol to the front end, the same scheduler
and busy loop, with a :class:`RemoteExecutor` over the leased workers.
"""

import signal
from multiprocessing.connection import Connection
from typing import Any

import vllm.envs as envs
from vllm.config import VllmConfig
from vllm.distributed.device_communicators.shm_broadcast import Handle, MessageQueue
from vllm.logger import init_logger
from vllm.v1.engine import EngineCoreRequestType
from vllm.v1.engine.core import EngineCoreProc, EngineShutdownState
from vllm.worker_controller.executor.remote_executor import (
    RemoteExecutor,
    WorkerLease,
)
from vllm.worker_controller.process import ControlServer, PooledProcessHandler
from vllm.worker_controller.worker.model_runner import release_memory

logger = init_logger(__name__)


class PooledEngineCoreProc(EngineCoreProc):
    """``EngineCoreProc`` that can be unloaded from outside its busy loop."""

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
        ``run_engine_core`` does, so its in-flight requests fail fast.
        """
        try:
            self.run_busy_loop()
        except SystemExit:
            return None
        except Exception as e:
            logger.exception("EngineCore failed while serving.")
            self._send_engine_dead()
            return f"{type(e).__name__}: {e}"
        finally:
            self.shutdown()
            # Upstream's socket IO threads loop for the life of their
            # process and hold this object. Drop its state so the scheduler,
            # executor and shared-memory queues are freed now; the idle
            # threads stay (they touch the object only when a message comes,
            # and the front end is closed after an unload).
            vars(self).clear()
        return None


class EngineHost(PooledProcessHandler):
    """Control-channel handler of an engine-host process."""

    INLINE_METHODS = frozenset({"describe", "health", "stop"})

    def __init__(self, index: int):
        self.index = index
        self.state = "idle"
        self._broadcast_mq: MessageQueue | None = None
        self.engine_core: PooledEngineCoreProc | None = None

    def describe(self) -> dict[str, Any]:
        return {"baseline_bytes": 0, "device": "cpu"}

    def health(self) -> dict[str, Any]:
        return {"state": self.state}

    def prepare(self, world_size: int) -> Handle:
        """Creates the broadcast queue the workers attach to.

        The writer must own the queue, and the workers need its handle
        before the engine exists, so it is made ahead of the engine.
        """
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
    ) -> dict[str, float]:
        """Builds the EngineCore (handshake, profile, KV cache, warm-up);
        returns the durations of the executor's load phases."""
        assert self._broadcast_mq is not None, "start_engine before prepare"
        lease = WorkerLease(self._broadcast_mq, response_handles, worker_pids)
        self._broadcast_mq = None
        self.state = "starting"
        RemoteExecutor.pending_lease = lease
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
            lease.broadcast_mq.shutdown()
            self.state = "idle"
            raise
        self.state = "serving"
        return lease.phases_s

    def serve(self) -> dict[str, Any]:
        """Runs the engine until it is unloaded or fails."""
        assert self.engine_core is not None, "serve before start_engine"
        try:
            error = self.engine_core.run_until_unloaded()
        finally:
            self.engine_core = None
            release_memory()
            self.state = "idle"
        return {"error": error}

    def stop(self) -> None:
        if (engine_core := self.engine_core) is not None:
            engine_core.request_unload()


def run_engine_host(conn: Connection, index: int) -> None:
    """Entry point of an engine-host process."""
    # The controller coordinates shutdown; a terminal's Ctrl-C must not
    # kill pooled processes behind its back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ControlServer(conn, EngineHost(index)).serve_forever()
