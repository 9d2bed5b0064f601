# SPDX-License-Identifier: Apache-2.0
"""Same-node CPU transport: one file in ``/dev/shm`` per transfer.

The source copies the loaded parameters into a fresh tmpfs file (mode
0600, a random name), the target maps it, copies each tensor into its own
parameter, and unlinks it; a source-side timer unlinks it anyway if no
target came. Plain files rather than ``multiprocessing.shared_memory``:
Python 3.11's resource tracker would unlink (and warn about) a segment
opened by a process that did not create it when that process exits.
"""

import contextlib
import os
import secrets
import threading
from collections.abc import Iterable

import torch

from vllm.logger import init_logger
from vllm.worker_controller.peer.checksum import checksum
from vllm.worker_controller.peer.descriptor import TensorSpec, dtype_name, parse_dtype

logger = init_logger(__name__)

SHM_DIR = "/dev/shm"
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write(
    tensors: Iterable[tuple[str, torch.Tensor]], algorithm: str, expires_in_s: float
) -> tuple[str, list[TensorSpec]]:
    """Copies ``tensors`` into a new shared-memory file; its path and the
    tensors' specs (offsets, checksums of what was written). The file is
    unlinked after ``expires_in_s`` if the target has not done so."""
    tensors = list(tensors)
    specs, offset = [], 0
    for name, t in tensors:
        specs.append(
            TensorSpec(name, list(t.shape), dtype_name(t.dtype), t.nbytes, "", offset)
        )
        offset = _aligned(offset + t.nbytes)
    path = os.path.join(SHM_DIR, f"vllm-wc-peer-{secrets.token_hex(12)}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, max(offset, 1))
    finally:
        os.close(fd)
    try:
        data = torch.from_file(
            path, shared=True, size=max(offset, 1), dtype=torch.uint8
        )
        for spec, (_, t) in zip(specs, tensors, strict=True):
            view = _view(data, spec)
            view.copy_(t)
            spec.checksum = checksum(view, algorithm)
        del data
    except BaseException:
        discard(path)
        raise
    timer = threading.Timer(expires_in_s, discard, (path,))
    timer.daemon = True
    timer.start()
    return path, specs


def _view(data: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    raw = data[spec.offset : spec.offset + spec.nbytes]
    return raw.view(parse_dtype(spec.dtype)).view(spec.shape)


def read(path: str, specs: list[TensorSpec], destinations: list[torch.Tensor]) -> int:
    """Copies each tensor of the file into its destination; unlinks the
    file (the mapping stays valid until it is dropped). Returns the bytes
    copied. ``OSError`` if the file is gone (expired, or another host)."""
    size = os.stat(path).st_size
    data = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)
    discard(path)
    if specs and specs[-1].offset + specs[-1].nbytes > size:
        raise OSError(f"{path} is shorter than its descriptor says")
    copied = 0
    for spec, dest in zip(specs, destinations, strict=True):
        dest.copy_(_view(data, spec))
        copied += spec.nbytes
    return copied


def discard(path: str) -> None:
    """Removes a transfer's file (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
