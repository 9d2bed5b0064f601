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
import os
import weakref
from types import FrameType, ModuleType

import psutil
import torch

import vllm.envs as envs
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.compilation.counter import compilation_counter
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper
from vllm.distributed import parallel_state
from vllm.logger import init_logger
from vllm.model_executor.layers.mamba import mamba_utils
from vllm.model_executor.model_loader.reload import layerwise
from vllm.platforms import current_platform
from vllm.platforms import interface as platform_interface
from vllm.utils import gpu_sync_debug, jit_monitor
from vllm.v1.attention import selector
from vllm.v1.attention.backends.utils import set_kv_cache_layout

logger = init_logger(__name__)


def release_compiled_model(worker) -> None:
    """Drops the compile state that pins the worker's model.

    Must run before ``model_runner.shutdown()``, which forgets the model.
    Each compiled module registered a bound method in Dynamo's
    process-global bytecode-hook registry; left there, it keeps the module,
    and through its attention layers the whole KV cache, alive. (Upstream's
    ``reset_compile_wrapper`` is for recompiling in place: it re-runs the
    wrapper's ``__init__`` and so registers a fresh hook; not a teardown.)
    """
    runner = getattr(worker, "model_runner", None)
    if runner is None or getattr(runner, "model", None) is None:
        return
    hooks = torch._dynamo.convert_frame._bytecode_hooks
    for module in runner.get_model().modules():
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


def release_reload_records(worker) -> None:
    """Drops upstream's layerwise-reload records of the worker's model.

    ``reload_weights`` (a swap) keeps per-module records in a process-global
    ``WeakKeyDictionary``, but a record's meta tensors carry weight loaders
    whose closures hold the module itself: the key is kept alive by its own
    value, and with it (through the attention layers) the whole KV cache.
    Seen on the H200: every model brought up by a swap left its KV cache
    behind at unload.
    """
    runner = getattr(worker, "model_runner", None)
    if runner is None or getattr(runner, "model", None) is None:
        return
    for module in runner.get_model().modules():
        layerwise.LAYERWISE_INFO.pop(module, None)


def reset_process_state() -> None:
    """Clears process-global state a loaded model leaves behind."""
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
    release_memory()


def held_requests(runner) -> int | None:
    """How many requests' state the model runner holds: ``requests`` in
    upstream's V1 runner (CPU), ``req_states`` in the V2 runner (GPU);
    None for a runner that keeps them elsewhere."""
    if (requests := getattr(runner, "requests", None)) is not None:
        return len(requests)
    if (states := getattr(runner, "req_states", None)) is not None:
        return states.num_reqs
    return None


def trim_host_heap() -> None:
    """Gives freed heap pages back to the OS: glibc keeps them, and without
    a trim RSS cannot show whether a model's memory was really released."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_memory() -> None:
    """Returns freed memory to the device / the OS before it is measured."""
    gc.unfreeze()
    gc.collect()
    if current_platform.is_cpu():
        trim_host_heap()
    else:
        torch.accelerator.synchronize()
        # cuBLAS keeps a workspace per stream it has seen; each model's
        # runner brings new streams, so these pile up across loads.
        torch._C._cuda_clearCublasWorkspaces()
        torch.accelerator.empty_cache()
        # Pinned host buffers (sleep mode's weight backups) stay cached by
        # torch's host allocator once freed; give them back to the OS.
        torch._C._host_emptyCache()


def memory_in_use() -> int:
    """Bytes this process holds on its device (RSS on CPU).

    On GPU this is what the caching allocator has reserved plus what
    cuMem pools (sleep mode) hold, i.e. what a leak would grow.
    """
    if current_platform.is_cpu():
        return psutil.Process().memory_info().rss
    return torch.cuda.memory_reserved() + _cumem_bytes()


def driver_memory_in_use(device_index: int | None) -> int | None:
    """This process's device memory as the driver counts it (NVML).

    It also covers what lives outside torch's allocator (CUDA graph
    executables, loaded kernel modules, library workspaces), which
    :func:`memory_in_use` cannot see. None on CPU or if NVML does not list
    this process (e.g. another PID namespace).
    """
    if device_index is None:
        return None
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


def _cumem_bytes() -> int:
    from vllm.device_allocator.cumem import CuMemAllocator

    allocator = CuMemAllocator.instance
    if allocator is None:
        return 0
    return sum(
        data.handle[1]
        for data in allocator.pointer_to_data.values()
        if not data.is_asleep  # a parked model's blocks are unmapped
    )


def cumem_pool_report() -> str:
    """Sleep mode's memory pools: their segments, and how many of them the
    allocator no longer tracks (``VLLM_WC_DEBUG_LEAKS``).

    A segment that the pool still holds but ``CuMemAllocator`` has
    forgotten cannot be freed through it when the pool is destroyed.
    """
    from vllm.device_allocator.cumem import CuMemAllocator

    allocator = CuMemAllocator.instance
    if allocator is None:
        return "no cumem pools"
    parts = []
    for tag, (pool, _) in allocator.allocator_and_pools.items():
        segments = pool.snapshot()
        untracked = [
            s for s in segments if s["address"] not in allocator.pointer_to_data
        ]
        parts.append(
            f"{tag}: {len(segments)} segments "
            f"({sum(s['total_size'] for s in segments) >> 20} MiB, "
            f"{sum(s['allocated_size'] for s in segments) >> 20} MiB in use), "
            f"{len(untracked)} untracked "
            f"({sum(s['total_size'] for s in untracked) >> 20} MiB)"
        )
    return "; ".join(parts) or "no cumem pools"


def leak_probes(worker) -> dict[str, weakref.ref]:
    """Weak references to what an unload must free (``VLLM_WC_DEBUG_LEAKS``)."""
    runner = worker.model_runner
    probes = {"model runner": weakref.ref(runner)}
    if getattr(runner, "model", None) is not None:
        probes["model"] = weakref.ref(runner.get_model())
    if kv_caches := getattr(runner, "kv_caches", None):
        probes["KV cache tensor"] = weakref.ref(kv_caches[0])
    return probes


def memory_summary() -> str:
    if current_platform.is_cpu():
        return f"rss {memory_in_use() / 2**30:.2f} GiB"
    return (
        f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, "
        f"reserved {torch.cuda.memory_reserved() / 2**30:.2f} GiB, "
        f"cumem {_cumem_bytes() / 2**30:.2f} GiB"
    )


def _keys_of(d: dict, value: object) -> list:
    """Keys under which ``d`` holds ``value`` (a plain loop: a comprehension
    would put ``value`` in a closure cell, itself a referrer)."""
    keys = []
    for k, v in d.items():
        if v is value:
            keys.append(k)
    return keys[:2]


def referrer_chains(obj: object, depth: int = 30, width: int = 2) -> list[str]:
    """Who keeps ``obj`` alive: referrer type chains, for leak hunting.

    Used by the worker when ``VLLM_WC_DEBUG_LEAKS=1`` and an unloaded
    model's runner survives the teardown. Module-level objects end a chain.
    """
    chains: list[str] = []
    seen = {id(obj)}

    def walk(target: object, path: list[str]) -> None:
        found = gc.get_referrers(target)
        seen.add(id(found))
        referrers = [
            r
            for r in found
            if id(r) not in seen
            and not (isinstance(r, FrameType) and r.f_code in own_code)
            and type(r).__name__ != "list_iterator"
        ]
        batch = referrers[:width]
        seen.update((id(referrers), id(batch)))
        if len(path) > depth or not referrers or isinstance(target, ModuleType):
            chains.append(" <- ".join(path))
            return
        for r in batch:
            seen.add(id(r))
            name = type(r).__qualname__
            if isinstance(r, dict):
                name = f"dict{_keys_of(r, target)}"
            elif isinstance(r, ModuleType):
                name = f"module {r.__name__}"
            elif isinstance(r, FrameType):
                name = f"frame {r.f_code.co_qualname} ({r.f_code.co_filename})"
            elif callable(r) and hasattr(r, "__qualname__"):
                name = f"{type(r).__name__} {r.__qualname__}"
            walk(r, [*path, name])

    own_code = {walk.__code__, referrer_chains.__code__}
    walk(obj, [type(obj).__qualname__])
    return chains
