# SPDX-License-Identifier: Apache-2.0
"""What peer weight loading needs beyond vLLM's and torch's public API.

A source must tell whether ``process_weights_after_loading`` changed a
parameter in place (torch's version counter), a target must know its rank
in the model's parallel layout (vLLM's parallel state), and on GPU tensors
travel as CUDA IPC handles (torch's multiprocessing reductions). Each
wrapper names what it relies on; ``tests/worker_controller/test_canary.py``
checks it.
"""

import base64
from typing import Any

import torch

# The rank getters of vLLM's model-parallel groups (TP, PP), set up per engine.
# torch's producer/consumer halves of sending a CUDA tensor to another process.
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

# The rank getters of vLLM's model-parallel groups (TP, PP), set up per engine.
from vllm.distributed.parallel_state import (
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)

__all__ = [
    "model_parallel_rank",
    "open_cuda_tensor",
    "share_cuda_tensor",
    "tensor_version",
]


def tensor_version(tensor: torch.Tensor) -> int:
    """The tensor's in-place modification count.

    Relies on: ``Tensor._version``, shared by views and ``detach()``ed
    aliases and bumped by every in-place op (``copy_``, ``mul_``, ...).
    """
    return int(tensor._version)


def model_parallel_rank() -> tuple[int, int, int]:
    """(rank, tensor-parallel size, pipeline-parallel size) of this process
    in its engine: rank = pp_rank * tp_size + tp_rank, as vLLM numbers
    workers.

    Relies on: ``parallel_state.get_tensor_model_parallel_rank()`` and
    ``get_pp_group()`` (``rank_in_group``, ``world_size``), initialised by
    the worker before it loads weights.
    """
    tp_size = get_tensor_model_parallel_world_size()
    pp = get_pp_group()
    rank = pp.rank_in_group * tp_size + get_tensor_model_parallel_rank()
    return rank, tp_size, pp.world_size


# Fields of torch's CUDA-tensor reduction that are bytes (sent as base64).
_BYTES_FIELDS = (7, 11, 13)
_STORAGE_CLASSES = {"UntypedStorage": torch.UntypedStorage}


def share_cuda_tensor(tensor: torch.Tensor) -> list[Any]:
    """A JSON-able CUDA IPC description of ``tensor`` (same node only).

    Relies on: ``reduce_tensor`` returning ``(rebuild_cuda_tensor, args)``
    with args (tensor class, size, stride, offset, storage class, dtype,
    device, IPC handle, storage bytes, storage offset, requires_grad,
    ref-counter handle, ref-counter offset, event handle, event-sync flag).
    Fails for memory that CUDA IPC cannot export (e.g. vLLM's sleep-mode
    allocator maps memory with cuMem, which has no legacy IPC handle).
    """
    rebuild, args = reduce_tensor(tensor.detach())
    if rebuild is not rebuild_cuda_tensor:
        raise ValueError("not a CUDA tensor")
    out: list[Any] = list(args)
    out[0] = "Tensor"
    out[1], out[2] = list(args[1]), list(args[2])
    out[4] = args[4].__name__
    out[5] = str(args[5]).removeprefix("torch.")
    for i in _BYTES_FIELDS:
        out[i] = base64.b64encode(args[i]).decode() if args[i] else ""
    return out


def open_cuda_tensor(shared: list[Any]) -> torch.Tensor:
    """The tensor a ``share_cuda_tensor`` description names, mapped into
    this process (no copy). Only plain tensors and untyped storages are
    rebuilt: the description comes over the network."""
    args = list(shared)
    if args[0] != "Tensor" or args[4] not in _STORAGE_CLASSES:
        raise ValueError(f"unexpected CUDA tensor description {args[0]}/{args[4]}")
    dtype = getattr(torch, str(args[5]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {args[5]!r}")
    args[0] = torch.Tensor
    args[1], args[2] = torch.Size(args[1]), tuple(args[2])
    args[4] = _STORAGE_CLASSES[args[4]]
    args[5] = dtype
    for i in _BYTES_FIELDS:
        args[i] = base64.b64decode(args[i]) if args[i] else b""
    return rebuild_cuda_tensor(*args)
