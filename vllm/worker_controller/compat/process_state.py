# SPDX-License-Identifier: Apache-2.0
"""Process-global state of vLLM and torch that a loaded model leaves behind.

Upstream assumes one model per process, so it keeps caches, counters and
set-once values in module globals. Each function here clears one group of
them, naming what it relies on; ``worker/model_runner.py`` calls them in
the order of the teardown checklist (``shared/notes/vllm-0.26-internals.md``
section 2).
"""

import os

import torch

import vllm.envs as envs
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.compilation.counter import compilation_counter
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper
from vllm.distributed import parallel_state
from vllm.distributed.parallel_state import (
    destroy_distributed_environment,
    destroy_model_parallel,
)
from vllm.model_executor.layers.mamba import mamba_utils
from vllm.model_executor.model_loader.reload import layerwise
from vllm.platforms import current_platform
from vllm.platforms import interface as platform_interface
from vllm.utils import gpu_sync_debug, jit_monitor
from vllm.v1.attention import selector
from vllm.v1.attention.backends.utils import set_kv_cache_layout

__all__ = [
    "clear_device_caches",
    "destroy_distributed_environment",
    "destroy_model_parallel",
    "forget_layerwise_reload",
    "release_compile_hooks",
    "reset_globals",
    "driver_memory_of_this_process",
]


def release_compile_hooks(model: torch.nn.Module) -> None:
    """Unregisters the model's compiled modules from Dynamo.

    Relies on: ``TorchCompileWithNoGuardsWrapper`` (its ``cleanup`` and
    ``original_code_object``), Dynamo's process-global
    ``convert_frame._bytecode_hooks`` registry, and vLLM's
    ``compilation_counter`` being a dataclass of counts.
    """
    hooks = torch._dynamo.convert_frame._bytecode_hooks
    for module in model.modules():
        if isinstance(module, TorchCompileWithNoGuardsWrapper):
            module.cleanup()
            # A decorated subclass of a decorated class (Qwen3Model of
            # Qwen2Model) runs the wrapper's __init__ twice: two hooks, and
            # cleanup() only knows the last one.
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is module:
                    del hooks[key]
            # The class's forward is shared with the next model of the
            # same architecture: leave it as the source defined it.
            type(module).forward.__code__ = module.original_code_object()
    compilation_counter.__init__()  # back to a fresh process's counts


def forget_layerwise_reload(model: torch.nn.Module) -> None:
    """Drops upstream's per-module layerwise-reload records of ``model``.

    Relies on: ``model_loader.reload.layerwise.LAYERWISE_INFO``, a
    process-global ``WeakKeyDictionary`` keyed by module.
    """
    for module in model.modules():
        layerwise.LAYERWISE_INFO.pop(module, None)


def reset_globals() -> None:
    """Clears the module-level caches and set-once values a model sets.

    Relies on: the graph wrappers' ``clear_all_graphs``; the platform
    class's ``_global_graph_pool``; the attention selectors'
    ``functools.cache``s; ``set_kv_cache_layout``; mamba's
    ``get_conv_state_layout`` cache; ``envs.disable_envs_cache``;
    ``jit_monitor._active``; ``gpu_sync_debug._sync_check_enabled``;
    ``platforms.interface._assigned_physical_gpu_ids``;
    ``parallel_state._group_name_counter``; FlashInfer's all-reduce
    workspace (CUDA).
    """
    torch.compiler.reset()
    CUDAGraphWrapper.clear_all_graphs()
    BreakableCUDAGraphWrapper.clear_all_graphs()
    # The platform's graph-pool handle is process-global; its pool dies with
    # the old graphs, and capturing into it again trips an allocator assert.
    type(current_platform)._global_graph_pool = None
    selector._cached_get_attn_backend.cache_clear()
    selector._cached_get_mamba_attn_backend.cache_clear()
    set_kv_cache_layout(None)
    mamba_utils.get_conv_state_layout.cache_clear()
    envs.disable_envs_cache()
    # Left active, the next model's warm-up compiles would count as
    # runtime JIT (an error under jit_monitor_mode="error").
    jit_monitor._active = False
    gpu_sync_debug._sync_check_enabled = False
    # Set-once upstream: a different mapping for the next engine would raise.
    platform_interface._assigned_physical_gpu_ids = None
    parallel_state._group_name_counter.clear()
    if current_platform.is_cuda():
        from vllm.distributed.device_communicators.flashinfer_all_reduce import (
            destroy_fi_ar_workspace,
        )

        destroy_fi_ar_workspace()


def clear_device_caches() -> None:
    """Frees what torch keeps cached on the device and in pinned memory.

    Relies on: ``torch._C._cuda_clearCublasWorkspaces`` (cuBLAS keeps a
    workspace per stream it has seen; each model's runner brings new
    streams, so these pile up across loads) and ``torch._C._host_emptyCache``
    (freed pinned buffers, e.g. sleep mode's weight backups, stay cached).
    """
    torch.accelerator.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.accelerator.empty_cache()
    torch._C._host_emptyCache()


def driver_memory_of_this_process(device_index: int) -> int | None:
    """This process's memory on a device as the driver counts it (NVML);
    None if NVML does not list it (e.g. another PID namespace).

    Relies on: ``vllm.third_party.pynvml`` and the platform's
    ``visible_device_id_to_physical_device_id``.
    """
    from vllm.third_party import pynvml

    pynvml.nvmlInit()
    try:
        physical = current_platform.visible_device_id_to_physical_device_id(
            device_index
        )
        handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return proc.usedGpuMemory
    finally:
        pynvml.nvmlShutdown()
    return None
