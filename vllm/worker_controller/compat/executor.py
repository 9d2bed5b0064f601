# SPDX-License-Identifier: Apache-2.0
"""Upstream's executor and worker-process internals that pooled processes
reuse: ``WorkerProc`` built in a process that outlives it, and
``MultiprocExecutor`` without the spawning."""

# The shared-memory queue between an engine and its workers (and its handle).
from vllm.distributed.device_communicators.shm_broadcast import Handle, MessageQueue

# Addresses for the process group, the engine's sockets and the handshake.
from vllm.utils.network_utils import (
    get_distributed_init_method,
    get_loopback_ip,
    get_open_port,
    get_open_zmq_ipc_path,
    make_zmq_socket,
)

# What upstream's warm-up calls last: a swapped-in engine re-seeds with it.
from vllm.utils.torch_utils import set_random_seed

# Built per lease in a pooled process / subclassed without the spawning.
from vllm.v1.executor.multiproc_executor import (
    FutureWrapper,
    MultiprocExecutor,
    WorkerProc,
)

# What WorkerProc's async-output thread takes from its queue (``get_output``).
from vllm.v1.outputs import AsyncModelRunnerOutput

# The wrapper whose ``.worker`` is the Worker (EngineBuildMemo wraps it).
from vllm.v1.worker.worker_base import WorkerWrapperBase

__all__ = [
    "AsyncModelRunnerOutput",
    "FutureWrapper",
    "Handle",
    "MessageQueue",
    "MultiprocExecutor",
    "WorkerProc",
    "WorkerWrapperBase",
    "attach_worker_message_queues",
    "get_distributed_init_method",
    "get_loopback_ip",
    "get_open_port",
    "get_open_zmq_ipc_path",
    "init_parallel_sizes",
    "make_zmq_socket",
    "output_rank",
    "set_random_seed",
]


def attach_worker_message_queues(
    proc: WorkerProc, input_shm_handle: Handle, vllm_config
) -> None:
    """Gives a built ``WorkerProc`` the queues of a new engine (a swap).
    Relies on: ``WorkerProc._init_message_queues(input_shm_handle,
    vllm_config)`` setting ``rpc_broadcast_mq`` and ``worker_response_mq``."""
    proc._init_message_queues(input_shm_handle, vllm_config)


def init_parallel_sizes(executor: MultiprocExecutor) -> None:
    """Relies on: ``MultiprocExecutor._get_parallel_sizes()`` setting
    ``world_size`` (and the other sizes) from the config."""
    executor._get_parallel_sizes()


def output_rank(executor: MultiprocExecutor) -> int:
    """Relies on: ``MultiprocExecutor._get_output_rank()``."""
    return executor._get_output_rank()
