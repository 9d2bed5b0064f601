# SPDX-License-Identifier: Apache-2.0
"""Teardown helpers that let one process host model after model.

Upstream's ``Worker.shutdown()`` / ``model_runner.shutdown()`` free the
runner's own tensors, and ``WorkerProc.shutdown()`` destroys the process
groups. What they leave is process-global state a next model would trip
over: Dynamo hooks pinning the old model, compile counters, captured graphs,
cached attention-backend choices, the set-once GPU mapping, group names.
These helpers clear that state, in the order of the teardown checklist in
``shared/notes/vllm-0.26-internals.md`` section 2, and measure the memory
that the unload check compares against the boot baseline.
"""

import ctypes
import gc

import psutil
import torch

import vllm.envs as envs
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.compilation.wrapper import (
    TorchCompileWithNoGuardsWrapper,
    reset_compile_wrapper,
)
from vllm.config import set_current_vllm_config
from vllm.distributed import parallel_state
from vllm.logger import init_logger
from vllm.model_executor.layers.mamba import mamba_utils
from vllm.platforms import current_platform
from vllm.platforms import interface as platform_interface
from vllm.utils import gpu_sync_debug, jit_monitor
from vllm.v1.attention import selector
from vllm.v1.attention.backends.utils import set_kv_cache_layout

logger = init_logger(__name__)


def release_compiled_model(worker) -> None:
    """Drops the compile state that pins the worker's model.

    Must run before ``model_runner.shutdown()``, which forgets the model:
    the Dynamo bytecode hooks live on the compiled modules themselves.
    """
    runner = getattr(worker, "model_runner", None)
    model = getattr(runner, "model", None) if runner is not None else None
    if model is None:
        return
    model = runner.get_model()
    for module in model.modules():
        if isinstance(module, TorchCompileWithNoGuardsWrapper):
            module.cleanup()
    with set_current_vllm_config(worker.vllm_config):
        reset_compile_wrapper(model)


def reset_process_state() -> None:
    """Clears process-global state a loaded model leaves behind."""
    torch.compiler.reset()
    CUDAGraphWrapper.clear_all_graphs()
    BreakableCUDAGraphWrapper.clear_all_graphs()
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
    release_memory()


def release_memory() -> None:
    """Returns freed memory to the device / the OS before it is measured."""
    gc.unfreeze()
    gc.collect()
    if current_platform.is_cpu():
        # glibc keeps freed heap pages; without a trim, RSS cannot show
        # whether a model's tensors were really released.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    else:
        torch.accelerator.synchronize()
        torch.accelerator.empty_cache()


def memory_in_use() -> int:
    """Bytes this process holds on its device (RSS on CPU).

    On GPU this is what the caching allocator has reserved plus what
    cuMem pools (sleep mode) hold, i.e. what a leak would grow.
    """
    if current_platform.is_cpu():
        return psutil.Process().memory_info().rss
    return torch.cuda.memory_reserved() + _cumem_bytes()


def _cumem_bytes() -> int:
    from vllm.device_allocator.cumem import CuMemAllocator

    allocator = CuMemAllocator.instance
    if allocator is None:
        return 0
    return sum(data.handle[1] for data in allocator.pointer_to_data.values())
