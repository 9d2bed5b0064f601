# SPDX-License-Identifier: Apache-2.0
"""The source's side of a peer load: publish one rank's loaded parameters.

Runs in the pooled worker that holds the model, on a thread of its own
(``PooledWorker.export_weights``), while the engine keeps serving: reading
parameters needs no pause, and every copy here (into shared memory, a
broadcast, CUDA IPC handles) leaves the engine's tensors as they are.
"""

import secrets
from typing import Any

import torch
from torch import nn

from vllm.logger import init_logger
from vllm.worker_controller.compat.peer import share_cuda_tensor
from vllm.worker_controller.peer import shm
from vllm.worker_controller.peer.broadcast import BroadcastSource
from vllm.worker_controller.peer.checksum import algorithm_for, checksum
from vllm.worker_controller.peer.descriptor import (
    TRANSPORTS,
    TensorSpec,
    TransferDescriptor,
    checkpoint_fingerprint,
    dtype_name,
    host_identity,
)
from vllm.worker_controller.peer.loaded_state import loaded_parameters

logger = init_logger(__name__)

_DEVICE_TRANSPORTS = {"cpu": ("shm", "gloo"), "cuda": ("cuda_ipc", "nccl", "shm")}


class TransportUnavailableError(ValueError):
    """The asked-for transport cannot carry this model's tensors."""


def choose_transport(requested: str, target_host: str | None, device: str) -> str:
    """``auto``: shared memory (CPU) or CUDA IPC (GPU) when the target shares
    this host's ``/dev/shm`` (``host_identity``), else a broadcast (gloo,
    NCCL). An explicit transport must suit the device."""
    allowed = _DEVICE_TRANSPORTS.get(device, ("shm",))
    if requested == "auto":
        same_host = target_host == host_identity()
        if device == "cuda":
            return "cuda_ipc" if same_host else "nccl"
        return "shm" if same_host else "gloo"
    if requested not in TRANSPORTS:
        raise TransportUnavailableError(
            f"unknown transport {requested!r}; expected auto or one of {TRANSPORTS}"
        )
    if requested not in allowed:
        raise TransportUnavailableError(
            f"transport {requested!r} cannot carry {device} tensors; use one of "
            f"{allowed}"
        )
    return requested


def export_weights(
    model: nn.Module,
    *,
    model_name: str,
    checkpoint: str,
    layout: dict[str, Any],
    transport: str,
    target_host: str | None,
    bind_host: str,
    expires_in_s: float,
) -> dict[str, Any]:
    """Publishes the model's loaded parameters for one target; returns the
    descriptor (JSON-able). ``NotExportableError`` if the model cannot be a
    source, ``TransportUnavailableError`` for a transport that does not fit."""
    params = list(loaded_parameters(model))
    device = params[0][1].device if params else torch.device("cpu")
    chosen = choose_transport(transport, target_host, device.type)
    algorithm = algorithm_for(device if chosen != "shm" else torch.device("cpu"))
    descriptor = TransferDescriptor(
        transfer_id=secrets.token_hex(8),
        transport=chosen,
        model=model_name,
        checkpoint=checkpoint_fingerprint(checkpoint),
        layout=layout,
        checksum=algorithm,
        tensors=[],
        expires_in_s=expires_in_s,
    )
    with torch.no_grad():
        if chosen == "shm":
            descriptor.shm_path, descriptor.tensors = shm.write(
                params, algorithm, expires_in_s
            )
        else:
            descriptor.tensors = [
                TensorSpec(
                    name,
                    list(t.shape),
                    dtype_name(t.dtype),
                    t.nbytes,
                    checksum(t, algorithm),
                )
                for name, t in params
            ]
        if chosen == "cuda_ipc":
            descriptor.device_uuid = str(torch.cuda.get_device_properties(device).uuid)
            for spec, (_, t) in zip(descriptor.tensors, params, strict=True):
                spec.ipc = share_cuda_tensor(t) if t.numel() else None
        elif chosen in ("gloo", "nccl"):
            sender = BroadcastSource(
                [t for _, t in params],
                "gloo" if chosen == "gloo" else "nccl",
                bind_host,
                expires_in_s,
                device,
            )
            descriptor.rendezvous = sender.rendezvous
            sender.start()
    logger.info(
        "Exported %s's loaded weights (rank %s, %.1f MiB) via %s",
        model_name,
        layout.get("rank"),
        descriptor.nbytes / 2**20,
        chosen,
    )
    return descriptor.to_dict()
