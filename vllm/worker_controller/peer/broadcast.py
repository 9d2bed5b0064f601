# SPDX-License-Identifier: Apache-2.0
"""Cross-process transport: a temporary two-rank group, one broadcast per
tensor (gloo on CPU, NCCL on GPU).

The group is built for one transfer and dropped after it: the source (rank
0, the TCP store's master, on a socket it bound before answering, so no
port race) waits in a thread of its own for the target to join, sends, and
tears the group down; its engine keeps serving meanwhile. Only torch's
public ``TCPStore``, ``PrefixStore`` and process-group classes are used,
never the default group (a pooled worker's belongs to its engine).
Tensors travel as their bytes, so every dtype does.
"""

import datetime
import socket
import threading
from collections.abc import Sequence

import torch
import torch.distributed as dist

from vllm.logger import init_logger

logger = init_logger(__name__)

_PREFIX = "vllm-wc-peer"


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _group(
    store: dist.Store, rank: int, backend: str, timeout: datetime.timedelta
) -> dist.ProcessGroup:
    prefixed = dist.PrefixStore(_PREFIX, store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, 2, timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(prefixed, rank, 2)
    raise ValueError(f"unknown backend {backend!r}")


def _close(group: dist.ProcessGroup | None) -> None:
    shutdown = getattr(group, "shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception as e:  # the group is dropped either way
            logger.debug("Process group shutdown: %s", e)


class BroadcastSource:
    """The source's half: bound at once, sending in a thread once the
    target has joined (or giving up after ``timeout_s``)."""

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        backend: str,
        host: str,
        timeout_s: float,
        device: torch.device | None = None,
    ):
        self._tensors = [t for t in tensors if t.numel()]
        self._backend = backend
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._device = device
        self._sock = socket.create_server((host, 0))
        self.rendezvous = {
            "host": host,
            "port": self._sock.getsockname()[1],
            "backend": backend,
            "timeout_s": timeout_s,
        }
        self.done = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="WCPeerBroadcast", daemon=True).start()

    def _run(self) -> None:
        group = None
        try:
            if self._device is not None and self._device.type == "cuda":
                torch.cuda.set_device(self._device)
            store = dist.TCPStore(
                self.rendezvous["host"],
                self.rendezvous["port"],
                2,
                True,
                timeout=self._timeout,
                wait_for_workers=True,
                master_listen_fd=self._sock.fileno(),
            )
            group = _group(store, 0, self._backend, self._timeout)
            for t in self._tensors:
                group.broadcast(_as_bytes(t.contiguous()), 0).wait()
            if self._device is not None and self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
        except BaseException as e:
            self.error = e
            logger.warning("Peer broadcast to a target ended early: %s", e)
        finally:
            _close(group)
            self._sock.close()
            self._tensors = []
            self.done.set()


def receive(
    rendezvous: dict, destinations: Sequence[torch.Tensor], connect_timeout_s: float
) -> int:
    """The target's half: joins the source's group and receives each
    tensor into its destination (in the descriptor's order). Returns the
    bytes received. The source listens before it answers, so joining takes
    no time unless it is gone: then ``connect_timeout_s`` ends the wait."""
    timeout = datetime.timedelta(seconds=float(rendezvous["timeout_s"]))
    store = dist.TCPStore(
        rendezvous["host"],
        int(rendezvous["port"]),
        2,
        False,
        timeout=datetime.timedelta(seconds=connect_timeout_s),
    )
    store.set_timeout(timeout)
    group = _group(store, 1, rendezvous["backend"], timeout)
    received = 0
    try:
        for dest in destinations:
            if not dest.numel():
                continue
            staging = dest if dest.is_contiguous() else torch.empty_like(dest)
            group.broadcast(_as_bytes(staging), 0).wait()
            if staging is not dest:
                dest.copy_(staging)
            received += dest.nbytes
        if destinations and destinations[0].device.type == "cuda":
            torch.cuda.synchronize(destinations[0].device)
    finally:
        _close(group)
    return received
