# SPDX-License-Identifier: Apache-2.0
"""The controller's executor over the control channels of pooled processes.

Only control traffic crosses a channel (load, serve, release, start/stop
engine, health); per-step traffic goes engine host -> workers over vLLM's
shared-memory ``MessageQueue`` and never passes through the controller.
:class:`ProxyExecutor` speaks to the ranks of one engine through their
channels (``process.ControlChannel``), the way upstream executors
``collective_rpc`` their workers.
"""

from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger
from vllm.worker_controller.errors import RemoteCallError, WorkerLostError

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.worker_controller.compat.executor import Handle
    from vllm.worker_controller.pool import PooledProcess

logger = init_logger(__name__)

# How long the other ranks of a load may still finish once one failed.
_PEER_GRACE_S = 10.0


class ProxyExecutor:
    """Sends load / serve / release / health to the ranks of one engine.

    Stateless apart from timeouts: the pool owns the processes and their
    channels, the controller decides which ranks form which engine.
    """

    def __init__(self, load_timeout_s: float, release_timeout_s: float):
        self.load_timeout_s = load_timeout_s
        self.release_timeout_s = release_timeout_s

    def load_workers(
        self,
        workers: Sequence["PooledProcess"],
        vllm_config: "VllmConfig",
        distributed_init_method: str,
        input_shm_handle: "Handle",
        swap: bool = False,
        kv_budgets: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Builds upstream's Worker + model runner in place on every rank
        (``swap``: copies the weights into the engine each rank kept;
        ``kv_budgets``: per rank, a KV-cache budget measured before).

        Every rank that loads starts serving (its ``serving`` future is
        set), so a caller cleaning up after a failed peer can release it.
        Returns each rank's reply: its response-queue handle and timings.
        """
        tp_size = vllm_config.parallel_config.tensor_parallel_size
        futures = [
            w.channel.call_async(
                "load_model",
                vllm_config=vllm_config,
                rank=rank,
                distributed_init_method=distributed_init_method,
                input_shm_handle=input_shm_handle,
                is_driver_worker=rank % tp_size == 0,
                swap=swap,
                kv_budget=None if kv_budgets is None else kv_budgets[rank],
            )
            for rank, w in enumerate(workers)
        ]
        for w, f in zip(workers, futures, strict=True):
            w.loading = f
        # One failed rank fails the load now: its peers would wait for it
        # in the process group's rendezvous until the load timeout.
        _, pending = wait(futures, self.load_timeout_s, FIRST_EXCEPTION)
        if pending and len(pending) < len(futures):
            _, pending = wait(pending, _PEER_GRACE_S)
        for w, f in zip(workers, futures, strict=True):
            if f.done():
                w.loading = None
                if f.exception() is None:
                    w.serving = w.channel.call_async("serve")
        if failed := [f.exception() for f in futures if f.done() and f.exception()]:
            raise failed[0]
        if pending:
            raise TimeoutError(f"{len(pending)} rank(s) did not finish loading")
        return [f.result() for f in futures]

    def release_workers(
        self,
        workers: Sequence["PooledProcess"],
        keep: bool = False,
        weights: str | None = None,
        cache_entry: str | None = None,
    ) -> None:
        """Ends the workers' busy loops: they unload, or (``keep``) keep
        their engine and load ``weights`` into it (from host-cache
        ``cache_entry`` if given)."""
        for w in workers:
            if w.serving is not None and not w.channel.lost:
                w.channel.call_async(
                    "release",
                    keep=keep,
                    weights_path=weights,
                    cache_entry=cache_entry,
                )

    def wait_released(
        self, workers: Sequence["PooledProcess"]
    ) -> list[dict[str, Any] | None]:
        """Each released rank's unload report (or its word that it kept its
        engine); None for a rank that never loaded, died, or did not answer.
        """
        return [self.wait(w, w.serving) for w in workers]

    def unload_kept(self, p: "PooledProcess") -> dict[str, Any] | None:
        """Tears down the engine a worker kept; its unload report."""
        return self.wait(p, p.channel.call_async("unload_model"))

    def wait(self, p: "PooledProcess", future: Future | None) -> dict[str, Any] | None:
        """The result of a ``serve`` call, or None if there is none."""
        if future is None:
            return None
        try:
            return future.result(self.release_timeout_s)
        except FutureTimeoutError:
            logger.error("%s did not finish releasing in time", p.name)
        except WorkerLostError:
            pass  # already dead; the pool respawns it
        except RemoteCallError as e:
            logger.error("%s failed while releasing: %s", p.name, e)
        return None

    @staticmethod
    def health(procs: Sequence["PooledProcess"], timeout: float) -> list[dict | None]:
        """Each process's own view (state, memory now); None if it is gone
        or too busy to answer in time."""
        futures = [p.channel.call_async("health") for p in procs]
        replies: list[dict | None] = []
        for f in futures:
            try:
                replies.append(f.result(timeout))
            except (FutureTimeoutError, WorkerLostError, RemoteCallError):
                replies.append(None)
        return replies
