# SPDX-License-Identifier: Apache-2.0
"""Configs: the model-less boot config, controller settings, engine configs.

A pooled process must exist before any model is known, so it boots with
``VllmConfig()`` (vLLM 0.26 allows ``model_config=None``: every post-init
path guards for it). The real config of an engine is built once, in the
controller, from vLLM's own ``EngineArgs``, and travels to the engine host
and to every rank, as ``MultiprocExecutor`` sends it to fresh processes.
"""

import dataclasses
import os
from dataclasses import dataclass, field

import pydantic

from vllm.config import VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.usage.usage_lib import UsageContext
from vllm.worker_controller.errors import InvalidEngineArgsError

# Engine-arg fields the controller owns: the executor is always ours, and
# the model and name are arguments of ``load`` itself.
_RESERVED_ENGINE_ARGS = frozenset(
    {"model", "served_model_name", "distributed_executor_backend"}
)


def make_dummy_vllm_config() -> VllmConfig:
    """The config a pooled process boots with, before it knows its model."""
    return VllmConfig()


@dataclass
class ControllerSettings:
    """How the pool is shaped and how long its steps may take."""

    num_workers: int = 1
    """Pooled worker processes (on GPU: spread over ``devices``)."""
    num_engine_hosts: int | None = None
    """Warm CPU-only processes that run EngineCore; default num_workers."""
    devices: list[int] | None = None
    """GPU indices (visible) for the workers, assigned round-robin; None
    means every visible GPU. Ignored on CPU."""
    memory_tolerance_bytes: int = 256 << 20
    """How far above its boot baseline a worker may stay after an unload
    before it is recycled (device memory on GPU, RSS growth on CPU)."""
    driver_memory_tolerance_bytes: int = 4 << 30
    """The same for the driver's count of a GPU worker's memory, which also
    sees what torch's allocator does not (graph executables, kernel
    modules). Its first load legitimately adds ~1 GiB (lazily loaded
    kernels); loads then add ~0.4 GiB each that no unload gives back (see
    docs/benchmarks.md), so a worker is replaced every few loads."""
    boot_timeout_s: float = 300.0
    load_timeout_s: float = 900.0
    release_timeout_s: float = 120.0
    unload_drain_s: float = 5.0
    """How long an unload waits for aborted requests to reach clients."""
    park_memory_bytes: int = 0
    """Host RAM that parked models' weights may hold (pinned); a model that
    does not fit is unloaded instead of parked. 0: never park."""
    weight_cache_bytes: int = 0
    """Host RAM (shared memory) for copies of recently loaded checkpoints,
    from which later loads and swaps of them copy at PCIe speed; 0: none."""
    weight_cache_dir: str = "/dev/shm"
    """Where the copies go: a tmpfs (else they live in the page cache)."""
    peer_transport: str = "auto"
    """How a load of a checkpoint that another loaded model of the same
    layout holds copies that model's weights (``peer/``): ``auto`` (shared
    memory on CPU, CUDA IPC on GPU), a transport by name (``shm``,
    ``gloo``, ``cuda_ipc``, ``nccl``), or ``off`` (always the checkpoint)."""
    peer_expires_s: float = 300.0
    """How long a source keeps an export (shared-memory file, a broadcast
    waiting for its target) that no target took."""
    log_stats: bool = False
    """Engine stats and Prometheus metrics for each loaded model."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for pooled processes."""

    @property
    def engine_hosts(self) -> int:
        return self.num_engine_hosts or self.num_workers


def build_engine_config(
    model: str, name: str, engine_args: dict, executor_class: type
) -> VllmConfig:
    """Builds the engine's ``VllmConfig`` with vLLM's own argument handling.

    Raises :class:`InvalidEngineArgsError` for unknown or reserved fields and
    for values vLLM's field validation rejects, ``FileNotFoundError`` for a
    local path that does not exist (vLLM would report it as a malformed hub
    id), and vLLM's own errors otherwise (e.g. an unsupported architecture).
    """
    known = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(engine_args) - known)
    if unknown:
        raise InvalidEngineArgsError(
            f"Unknown engine argument(s) {unknown}; expected fields of "
            "vllm.engine.arg_utils.EngineArgs"
        )
    reserved = sorted(set(engine_args) & _RESERVED_ENGINE_ARGS)
    if reserved:
        raise InvalidEngineArgsError(
            f"Engine argument(s) {reserved} are set by the controller"
        )
    if model.startswith(("/", "./", "../", "~")) and not os.path.exists(
        os.path.expanduser(model)
    ):
        raise FileNotFoundError(f"Model path {model!r} does not exist")
    try:
        args = EngineArgs(
            model=model,
            served_model_name=name,
            distributed_executor_backend=executor_class,
            **engine_args,
        )
        # The server context gives `vllm serve`'s defaults (batch sizes,
        # hence compile ranges and graph sizes, hence compile-cache keys).
        return args.create_engine_config(UsageContext.OPENAI_API_SERVER)
    except pydantic.ValidationError as e:
        # Errors located at a field are bad arguments; model-level ones
        # (such as an unsupported architecture) are the model's.
        if all(err["loc"] for err in e.errors()):
            raise InvalidEngineArgsError(str(e)) from e
        raise
