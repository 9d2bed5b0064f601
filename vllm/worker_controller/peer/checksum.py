# SPDX-License-Identifier: Apache-2.0
"""Per-tensor checksums, computed where the tensor lives.

CPU: CRC-32 of the bytes (zlib: several GB/s, and it releases the GIL, so
a source computing it does not stall its engine's thread). GPU: ``sum64``,
a position-weighted sum of 32-bit words in wrapping 64-bit arithmetic,
computed on the device in chunks (no copy to the host). Both detect a
changed, lost or moved byte range; neither is meant to resist an attacker
(the management API's token is what keeps other processes out).
"""

import zlib

import torch

ALGORITHMS = ("crc32", "sum64")
_CHUNK = 1 << 24
_MASK = (1 << 64) - 1


def algorithm_for(device: torch.device) -> str:
    return "crc32" if device.type == "cpu" else "sum64"


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (a view when contiguous)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8)


def checksum(tensor: torch.Tensor, algorithm: str) -> str:
    """The tensor's checksum by ``algorithm``, as hex."""
    if algorithm == "crc32":
        data = _bytes_of(tensor)
        if data.device.type != "cpu":
            data = data.cpu()
        return f"{zlib.crc32(memoryview(data.numpy())):08x}"
    if algorithm == "sum64":
        return f"{_sum64(_bytes_of(tensor)):016x}"
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def _sum64(data: torch.Tensor) -> int:
    whole = data.numel() // 4 * 4
    words = data[:whole].view(torch.int32)
    # The tail bytes count as words of their own.
    tail = data[whole:].to(torch.int32)
    a = b = 0
    for part, base in ((words, 0), (tail, words.numel())):
        for start in range(0, part.numel(), _CHUNK):
            chunk = part[start : start + _CHUNK].to(torch.int64)
            position = torch.arange(
                base + start + 1,
                base + start + 1 + chunk.numel(),
                dtype=torch.int64,
                device=chunk.device,
            )
            a = (a + int(chunk.sum())) & _MASK
            b = (b + int((chunk * position).sum())) & _MASK
    return (a ^ (b << 1)) & _MASK
