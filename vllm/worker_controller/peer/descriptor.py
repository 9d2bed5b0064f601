# SPDX-License-Identifier: Apache-2.0
"""The transfer descriptor: what a source tells a target about one copy.

A source engine (a pooled worker holding the model) answers an export
request with a descriptor; the target (the ``wc_peer`` loader, in a pooled
worker or in a stock ``vllm serve`` process) checks it against the model it
built before it copies anything. Plain JSON, so that it crosses HTTP and
the control channel alike and nothing in it is unpickled.

What is sent is the model's parameters as the loader left them, before
``process_weights_after_loading`` (the "loaded" state, sharded like the
source's ranks): the target copies them into identical parameters and runs
upstream's processing itself, so kernel-specific layouts (CPU oneDNN
prepacking, GPU repacking) are never sent. Hence the same checkpoint, the
same parallel layout and the same dtype and quantization on both sides,
all checked.
"""

import dataclasses
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from vllm.worker_controller.peer import PEER_LOAD_FORMAT

__all__ = ["PEER_LOAD_FORMAT", "TensorSpec", "TransferDescriptor"]

TRANSPORTS = ("shm", "gloo", "cuda_ipc", "nccl")
"""shm / cuda_ipc: same node (shared memory, CUDA IPC handles); gloo /
nccl: a temporary two-process group and a broadcast per tensor."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


@dataclasses.dataclass
class TensorSpec:
    """One parameter: checked by name, shape, dtype, then by checksum."""

    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    checksum: str
    offset: int = 0
    """Byte offset in the shared-memory file (``shm``)."""
    ipc: list[Any] | None = None
    """CUDA IPC description (``cuda_ipc``; ``compat.peer.share_cuda_tensor``)."""


@dataclasses.dataclass
class TransferDescriptor:
    """Everything a target needs to take one rank's weights from a source."""

    transfer_id: str
    transport: str
    model: str
    """The source's model name."""
    checkpoint: dict[str, Any]
    """``checkpoint_fingerprint`` of the source's checkpoint."""
    layout: dict[str, Any]
    """rank, tensor/pipeline-parallel sizes, dtype, quantization."""
    checksum: str
    """``crc32`` (CPU) or ``sum64`` (GPU): see ``peer/checksum.py``."""
    tensors: list[TensorSpec]
    shm_path: str | None = None
    rendezvous: dict[str, Any] | None = None
    """gloo / nccl: ``host``, ``port``, ``timeout_s`` (the source is rank 0)."""
    device_uuid: str | None = None
    """GPU of the source's tensors (cuda_ipc)."""
    expires_in_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransferDescriptor":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unexpected descriptor fields {sorted(unknown)}")
        tensors = [TensorSpec(**t) for t in data["tensors"]]
        descriptor = cls(**{**data, "tensors": tensors})
        if descriptor.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {descriptor.transport!r}")
        return descriptor


def layout_of(
    rank: int, tp_size: int, pp_size: int, dtype: torch.dtype, quantization: Any
) -> dict[str, Any]:
    """The part of an engine's config that decides the loaded parameters'
    names, shards, shapes and dtypes."""
    return {
        "rank": rank,
        "tensor_parallel_size": tp_size,
        "pipeline_parallel_size": pp_size,
        "dtype": dtype_name(dtype),
        "quantization": None if quantization is None else str(quantization),
    }


def host_identity() -> str:
    """Equal in two processes that share this host's ``/dev/shm`` (and its
    GPUs): shared memory and CUDA IPC work between them. Boot id plus the
    tmpfs's device and inode, so containers with their own ``/dev/shm``
    differ."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = socket.gethostname()
    try:
        st = os.stat("/dev/shm")
        shm = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        shm = "none"
    return f"{boot}/{shm}"


def checkpoint_fingerprint(model: str) -> dict[str, Any]:
    """What identifies a checkpoint without reading its tensors: a digest of
    its ``config.json`` and one of its safetensors headers (tensor names,
    dtypes, shapes, offsets; None without safetensors files).

    Two checkpoints that differ only in tensor values (fine-tunes of one
    base, same shapes) are not told apart: the target's loader is pointed
    at a source by name, and this guards against the wrong name, not
    against a deliberately different checkpoint at the same path.
    """
    root = Path(model)
    config = root / "config.json"
    config_digest = (
        hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    )
    weights = hashlib.sha256()
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    for path in files:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        weights.update(json.dumps(header, sort_keys=True).encode())
    return {
        "config": config_digest,
        "weights": weights.hexdigest() if files else None,
    }


def same_checkpoint(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Equal configs, and equal weight headers where both sides have files
    (a target may have only the config and tokenizer)."""
    if ours.get("config") != theirs.get("config"):
        return False
    if ours.get("weights") and theirs.get("weights"):
        return ours["weights"] == theirs["weights"]
    return True
