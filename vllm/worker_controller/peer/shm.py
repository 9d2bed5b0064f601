# SPDX-License-Identifier: Apache-2.0
"""Same-node CPU transport: one file in ``/dev/shm`` per transfer.

The source writes the loaded parameters into a fresh tmpfs file (mode
0600, a random name), the target opens it, unlinks it and reads each
tensor straight into its own parameter; a source-side timer unlinks it
anyway if no target came. ``pwritev`` / ``preadv`` rather than mappings: a
fresh mapping of a file takes a page fault per 4 KiB page, which made the
copy half as fast. Plain files rather than ``multiprocessing.shared_memory``:
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
        for spec, (_, t) in zip(specs, tensors, strict=True):
            data = _host_bytes(t)
            # write(2) from the tensor's memory: one copy, no page faults on
            # a fresh mapping of the file.
            _transfer(os.pwritev, fd, memoryview(data.numpy()), spec.offset)
            spec.checksum = checksum(data, algorithm)
    except BaseException:
        discard(path)
        raise
    finally:
        os.close(fd)
    timer = threading.Timer(expires_in_s, discard, (path,))
    timer.daemon = True
    timer.start()
    return path, specs


def _host_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, flat, in host memory (a view when it is a
    contiguous CPU tensor)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _transfer(call, fd: int, buffer: memoryview, offset: int) -> None:
    """``os.pwritev`` / ``os.preadv`` of the whole buffer (a call moves at
    most ~2 GiB)."""
    done = 0
    while done < len(buffer):
        n = call(fd, [buffer[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short transfer at byte {offset + done}")
        done += n


def read(path: str, specs: list[TensorSpec], destinations: list[torch.Tensor]) -> int:
    """Copies each tensor of the file into its destination and unlinks the
    file. Returns the bytes copied. ``OSError`` if the file is gone
    (expired, or on another host) or shorter than the specs say."""
    fd = os.open(path, os.O_RDONLY)
    discard(path)  # the open descriptor keeps it readable
    try:
        size = os.fstat(fd).st_size
        if specs and specs[-1].offset + specs[-1].nbytes > size:
            raise OSError(f"{path} is shorter than its descriptor says")
        copied = 0
        for spec, dest in zip(specs, destinations, strict=True):
            if dest.device.type == "cpu" and dest.is_contiguous():
                # read(2) straight into the parameter: one copy.
                raw = dest.reshape(-1).view(torch.uint8)
                _transfer(os.preadv, fd, memoryview(raw.numpy()), spec.offset)
            else:
                staging = torch.empty(spec.nbytes, dtype=torch.uint8)
                _transfer(os.preadv, fd, memoryview(staging.numpy()), spec.offset)
                view = staging.view(parse_dtype(spec.dtype)).view(spec.shape)
                dest.copy_(view)
            copied += spec.nbytes
        return copied
    finally:
        os.close(fd)


def discard(path: str) -> None:
    """Removes a transfer's file (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
