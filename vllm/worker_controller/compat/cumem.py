# SPDX-License-Identifier: Apache-2.0
"""Sleep mode's allocator, made able to free every segment of its pools.

With sleep mode, vLLM allocates weights and KV cache in torch ``MemPool``s
backed by its cuMem allocator (``CuMemAllocator``), which tracks each
segment it maps. When ``use_memory_pool`` ends, upstream unmaps the
segments that are wholly unused and forgets them, but their ``MemPool``
still lists them as cached. When that pool is destroyed at teardown, torch
frees each of its segments through the allocator's free callback, which
raises ``KeyError`` for a forgotten one; the C side then returns with a
Python error pending, and (most likely, from what the driver and the
allocator report) the frees after it in the same pass fail as well: their
memory is gone from the allocator's books but never released to the
driver. Measured on an H200 with a Qwen3-0.6B shape (one such 20 MiB
segment per load): +818 MiB of device memory per load, seen only by the
driver (``benchmarks/results/gpu-cumem-diag-h200-2026-11-21.log``). A pooled
worker hosts many loads, so that adds up.

Here a forgotten segment is remembered, and when its pool frees it, it is
mapped again so that the C side's unmap / release / address-free sequence
completes; every other free is upstream's.
"""

import atexit

from vllm.device_allocator import HandleType
from vllm.device_allocator.cumem import (
    CuMemAllocator,
    create_and_map,
    cumem_available,
)


class PoolReleasingCuMemAllocator(CuMemAllocator):
    """``CuMemAllocator`` whose pools can free the segments it forgot."""

    def __init__(self) -> None:
        super().__init__()
        # Released by use_memory_pool's clean-up, still held by their pool.
        self._forgotten: dict[int, HandleType] = {}
        # What the C extension calls when a pool frees a segment.
        self.python_free_callback = self._pool_free_callback

    def _python_free_callback(self, ptr: int) -> HandleType:
        """Upstream's bookkeeping; only ``use_memory_pool``'s clean-up calls
        this directly, and its pool keeps the segment."""
        handle = super()._python_free_callback(ptr)
        self._forgotten[ptr] = handle
        return handle

    def _pool_free_callback(self, ptr: int) -> HandleType:
        handle = self._forgotten.pop(ptr, None)
        if handle is None:
            return CuMemAllocator._python_free_callback(self, ptr)
        create_and_map(handle)
        return handle


def install_pool_releasing_allocator() -> None:
    """Makes the process's ``CuMemAllocator`` singleton the subclass.

    Must run before vLLM first asks for the singleton (a worker's first
    load with sleep mode); a no-op without cuMem (CPU).
    """
    if cumem_available and CuMemAllocator.instance is None:
        CuMemAllocator.instance = PoolReleasingCuMemAllocator()
        atexit.register(CuMemAllocator._shutdown_singleton)


def mapped_bytes() -> int:
    """Bytes sleep mode's allocator has mapped now (a parked model's blocks
    are unmapped). Relies on: ``pointer_to_data`` entries with ``handle``
    (size at index 1) and ``is_asleep``."""
    allocator = CuMemAllocator.instance
    if allocator is None:
        return 0
    return sum(
        data.handle[1]
        for data in allocator.pointer_to_data.values()
        if not data.is_asleep
    )


def pool_report() -> str:
    """Sleep mode's memory pools: their segments, and how many of them the
    allocator no longer tracks (a segment the pool holds but the allocator
    forgot cannot be freed through it). Relies on: ``allocator_and_pools``
    (tag -> (MemPool, allocator)) and ``MemPool.snapshot()``."""
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
