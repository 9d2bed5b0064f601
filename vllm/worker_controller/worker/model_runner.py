# SPDX-License-Identifier: Apache-2.0
"""Teardown helpers that let one process host model after model.

Upstream's ``Worker.shutdown()`` / ``model_runner.shutdown()`` free the
runner's own tensors, and ``WorkerProc.shutdown()`` destroys the process
groups. What they leave is process-global state a next model would trip
over: Dynamo hooks pinning the old model, compile counters, captured graphs,
cached attention-backend choices, the set-once GPU mapping, group names.
These helpers clear that state (through the seam, ``compat/``), in the
order of the teardown checklist in ``shared/notes/vllm-0.26-internals.md``
section 2, and measure the memory that the unload check compares against
the boot baseline.
"""

import ctypes
import gc

import psutil
import torch

from vllm.platforms import current_platform
from vllm.worker_controller.compat import cumem
from vllm.worker_controller.compat.process_state import (
    clear_device_caches,
    driver_memory_of_this_process,
    forget_layerwise_reload,
    release_compile_hooks,
    reset_globals,
)


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
    if runner is not None and getattr(runner, "model", None) is not None:
        release_compile_hooks(runner.get_model())


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
    if runner is not None and getattr(runner, "model", None) is not None:
        forget_layerwise_reload(runner.get_model())


def reset_process_state() -> None:
    """Clears process-global state a loaded model leaves behind."""
    reset_globals()
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
        clear_device_caches()


def memory_in_use() -> int:
    """Bytes this process holds on its device (RSS on CPU).

    On GPU this is what the caching allocator has reserved plus what
    cuMem pools (sleep mode) hold, i.e. what a leak would grow.
    """
    if current_platform.is_cpu():
        return psutil.Process().memory_info().rss
    return torch.cuda.memory_reserved() + cumem.mapped_bytes()


def driver_memory_in_use(device_index: int | None) -> int | None:
    """This process's device memory as the driver counts it (NVML).

    It also covers what lives outside torch's allocator (CUDA graph
    executables, loaded kernel modules, library workspaces), which
    :func:`memory_in_use` cannot see. None on CPU or if NVML does not list
    this process.
    """
    if device_index is None:
        return None
    return driver_memory_of_this_process(device_index)


def memory_summary() -> str:
    if current_platform.is_cpu():
        return f"rss {memory_in_use() / 2**30:.2f} GiB"
    return (
        f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, "
        f"reserved {torch.cuda.memory_reserved() / 2**30:.2f} GiB, "
        f"cumem {cumem.mapped_bytes() / 2**30:.2f} GiB"
    )
