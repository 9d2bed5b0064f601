# SPDX-License-Identifier: Apache-2.0
"""The Executor inside an engine host: drives leased pooled workers.

It is ``MultiprocExecutor`` without the process spawning, as
``RayExecutorV2`` is: the broadcast ``MessageQueue`` (created by the engine
host before the workers attach) carries every ``collective_rpc`` and
``execute_model`` straight to the workers' shared memory, and each worker's
response queue carries the answer back. Upstream's ``collective_rpc``,
``execute_model``, ``sample_tokens`` and async-scheduling support are
inherited unchanged; only start-up, worker monitoring and shutdown differ,
because the workers are not this process's children and outlive it.
"""

import multiprocessing.connection
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field

from vllm.logger import init_logger
from vllm.worker_controller.compat.executor import (
    FutureWrapper,
    Handle,
    MessageQueue,
    MultiprocExecutor,
    init_parallel_sizes,
    output_rank,
)
from vllm.worker_controller.compat.message_queues import (
    close_message_queue,
    wait_until_ready,
)

logger = init_logger(__name__)

# How long the leased workers may take to reach the queues' ready barrier.
_ATTACH_TIMEOUT_S = 60.0
# RPCs whose duration is a load phase worth reporting.
_PHASES = {
    "determine_available_memory": "profile",
    "initialize_from_config": "kv_cache",
    "compile_or_warm_up_model": "compile_and_warm_up",
}


@dataclass
class WorkerLease:
    """What an engine host knows about the workers leased to its engine."""

    broadcast_mq: MessageQueue
    response_handles: list[Handle]
    worker_pids: list[int]
    phases_s: dict[str, float] = field(default_factory=dict)
    available_memory: list[int] | None = None
    """Per rank, the KV-cache budget the workers reported (or replayed)."""
    response_mqs: list[MessageQueue] = field(default_factory=list)
    """The executor's readers of the workers' answers, once it made them."""

    def close(self) -> None:
        """Closes every queue of the lease (after a failed engine start)."""
        for mq in (*self.response_mqs, self.broadcast_mq):
            close_message_queue(mq)


class RemoteExecutor(MultiprocExecutor):
    """Executor over pooled worker processes that already exist."""

    # Set by the engine host right before it constructs its EngineCore:
    # EngineCore builds the executor from the config alone, and a host
    # runs one engine at a time.
    pending_lease: WorkerLease | None = None

    def _init_executor(self) -> None:
        lease, RemoteExecutor.pending_lease = RemoteExecutor.pending_lease, None
        assert lease is not None, "RemoteExecutor runs only inside an engine host"
        # No weakref.finalize(self, self.shutdown) as upstream's: its bound
        # method would keep every past executor of this host alive.
        # EngineCore.shutdown calls shutdown.
        self.lease = lease
        self.is_failed = False
        self.failure_callback = None
        init_parallel_sizes(self)
        assert len(lease.response_handles) == self.world_size

        self.rpc_broadcast_mq = lease.broadcast_mq
        self.response_mqs = lease.response_mqs
        for handle in lease.response_handles:
            self.response_mqs.append(MessageQueue.create_from_handle(handle, 0))
        # Same barrier order as MultiprocExecutor / WorkerProc. The workers
        # have loaded and wait there already: a rank that does not come
        # fails the engine start, not hangs it.
        wait_until_ready(self.rpc_broadcast_mq, _ATTACH_TIMEOUT_S, "a leased worker")
        for rank, mq in enumerate(self.response_mqs):
            wait_until_ready(mq, _ATTACH_TIMEOUT_S, f"rank {rank}'s response queue")
        self.futures_queue = deque[FutureWrapper]()
        self.output_rank = output_rank(self)
        self.start_worker_monitor()

    def collective_rpc(self, method, *args, **kwargs):  # type: ignore[override]
        phase = _PHASES.get(method) if isinstance(method, str) else None
        if phase is None:
            return super().collective_rpc(method, *args, **kwargs)
        start = time.perf_counter()
        result = super().collective_rpc(method, *args, **kwargs)
        self.lease.phases_s[phase] = time.perf_counter() - start
        if method == "determine_available_memory":
            self.lease.available_memory = list(result)
        return result

    def start_worker_monitor(self, inline: bool = False) -> None:
        """Fails the engine fast when a leased worker dies.

        The workers are not our children, so instead of process sentinels
        we wait on pidfds. As upstream's monitor does, a death marks the
        executor failed, cancels the reads that wait on the dead rank (so
        in-flight steps raise instead of hanging) and tells the engine.
        """
        pidfds = [os.pidfd_open(pid) for pid in self.lease.worker_pids]
        stop_reader, self._stop_writer = os.pipe()
        self_ref = weakref.ref(self)

        def monitor() -> None:
            try:
                ready = multiprocessing.connection.wait([*pidfds, stop_reader])
            finally:
                for fd in (*pidfds, stop_reader):
                    os.close(fd)
            executor = self_ref()
            if stop_reader in ready or executor is None or executor.shutting_down:
                return
            logger.error("A pooled worker of this engine died; failing the engine.")
            executor.is_failed = True
            for mq in executor.response_mqs:
                mq.shutdown()
            if (callback := executor.failure_callback) is not None:
                executor.failure_callback = None
                callback()

        self.shutting_down = False
        threading.Thread(
            target=monitor, daemon=True, name="RemoteWorkerMonitor"
        ).start()

    def shutdown(self) -> None:
        """Detaches from the workers; the controller releases them."""
        if getattr(self, "shutting_down", True):
            return
        self.shutting_down = True
        os.write(self._stop_writer, b"x")
        os.close(self._stop_writer)
        for mq in (*self.response_mqs, self.rpc_broadcast_mq):
            close_message_queue(mq)
