# SPDX-License-Identifier: Apache-2.0
"""Bookkeeping of the pool-releasing cuMem allocator.

The CUDA driver cannot exist on this machine, so the two calls that need it
(``create_and_map`` and the device synchronisation in upstream's free
callback) are replaced by recorders; the bookkeeping around them is the real
code. On a GPU the allocator is exercised by ``benchmarks/gpu_lifecycle.py``.
"""

import pytest
import torch

from vllm.device_allocator.cumem import CuMemAllocator
from vllm.worker_controller.compat import cumem

SEGMENT = 20 << 20


@pytest.fixture
def mapped(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(cumem, "create_and_map", calls.append)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return calls


def malloc(allocator: CuMemAllocator, ptr: int) -> tuple:
    handle = (0, SEGMENT, ptr, ptr + 1)
    allocator.python_malloc_callback(handle)
    return handle


def test_a_segment_forgotten_by_use_memory_pool_can_still_be_freed(mapped):
    """use_memory_pool's clean-up frees a wholly unused segment itself; its
    pool frees it again at teardown. Upstream's callback raises KeyError
    there (and the C side leaks what follows); the subclass maps the segment
    again and hands back its handle, so the C side can release it."""
    upstream = CuMemAllocator()
    malloc(upstream, 0x1000)
    upstream._python_free_callback(0x1000)  # the clean-up
    with pytest.raises(KeyError):
        upstream.python_free_callback(0x1000)  # the pool's teardown

    allocator = cumem.PoolReleasingCuMemAllocator()
    handle = malloc(allocator, 0x1000)
    assert allocator._python_free_callback(0x1000) == handle
    assert allocator.python_free_callback(0x1000) == handle
    assert mapped == [handle]
    assert not allocator.pointer_to_data


def test_ordinary_frees_are_upstreams(mapped):
    allocator = cumem.PoolReleasingCuMemAllocator()
    handle = malloc(allocator, 0x2000)
    assert allocator.python_free_callback(0x2000) == handle
    assert mapped == [] and not allocator.pointer_to_data
    with pytest.raises(KeyError):  # a double free stays an error
        allocator.python_free_callback(0x2000)
