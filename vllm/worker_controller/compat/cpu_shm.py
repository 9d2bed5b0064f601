# SPDX-License-Identifier: Apache-2.0
"""The shared memory of vLLM-CPU's all-reduce, released with its group.

On CPU, a TP or PP group of two or more ranks gets a ``_CPUSHMDistributed``
communicator: each rank creates ``/dev/shm/{group}_{rank}`` and maps every
rank's file (``MAP_POPULATE``, a few MiB per thread). The C++ managers
that own those mappings live in a process-global list that only process
exit empties, so a pooled process would keep both the files and the
mapped memory of every lease it served. Upstream offers no way to destroy
one manager; this releases what it holds once its group is gone.

Relies on: the group name ``{VLLM_DIST_IDENT}-{unique_name}-[ranks]-cpushm``
(``cpu_communicator._CPUSHMDistributed.make_group_name``), its files
``{name}_{rank}`` and ``SHMManager``'s exit-time teardown, which only
``munmap``s and ``shm_unlink``s, ignoring errors.
"""

import ctypes
import mmap
import os
from pathlib import Path

from vllm.distributed.device_communicators.cpu_communicator import (
    _CPUSHMDistributed,
)

__all__ = ["release_cpu_shm", "shm_group_name", "unlink_group_files"]

shm_group_name = _CPUSHMDistributed.make_group_name

_SUFFIX = "-cpushm_"
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]


def unlink_group_files(ident: str) -> int:
    """Removes the all-reduce files of the groups of distributed ident
    ``ident`` (the port of their init method, which vLLM-CPU's worker puts
    in ``VLLM_DIST_IDENT``); returns how many it removed.

    Each rank unlinks them in ``release_cpu_shm``; a group whose ranks were
    all killed would leave them in /dev/shm until the machine reboots.
    Ranks still mapping them keep their memory until they release it.
    """
    removed = 0
    for path in Path("/dev/shm").glob(f"{ident}-*{_SUFFIX}*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def release_cpu_shm() -> int:
    """Unlinks the all-reduce files of this process's last group and frees
    their mapped memory; returns how many mappings it freed.

    Each mapping is replaced in place by an inaccessible, unbacked one of
    the same size (``MAP_FIXED``), so that the manager's ``munmap`` at
    process exit hits that reservation, never memory reused since. Files
    are unlinked by every rank that mapped them, so a rank that died
    leaves nothing behind when a peer is released.
    """
    ident = os.environ.get("VLLM_DIST_IDENT")
    if not ident:
        return 0
    freed = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/dev/shm/"):
            continue
        name = fields[5].removeprefix("/dev/shm/").removesuffix(" (deleted)")
        if not (name.startswith(f"{ident}-") and _SUFFIX in name):
            continue
        (Path("/dev/shm") / name).unlink(missing_ok=True)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
        if _libc.mmap(start, end - start, 0, flags, -1, 0) != start:
            raise OSError(ctypes.get_errno(), f"cannot release {name}")
        freed += 1
    return freed
