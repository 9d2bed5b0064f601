# SPDX-License-Identifier: Apache-2.0
"""The target's checks: before copying (layout, tensor names, shapes,
dtypes, checkpoint) and after (a checksum per tensor). A failed check
fails the load with the list of what differs; the source is not touched
(it only ever reads its tensors)."""

from collections.abc import Sequence
from typing import Any

import torch

from vllm.worker_controller.peer.checksum import checksum
from vllm.worker_controller.peer.descriptor import (
    TransferDescriptor,
    dtype_name,
    same_checkpoint,
)

_SHOWN = 5


class PeerMismatchError(ValueError):
    """The peer's weights do not fit this model, or arrived damaged."""


def _listed(problems: list[str]) -> str:
    more = len(problems) - _SHOWN
    return "; ".join(problems[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def check_descriptor(
    descriptor: TransferDescriptor,
    layout: dict[str, Any],
    params: dict[str, torch.Tensor],
    checkpoint: dict[str, Any],
) -> None:
    """``PeerMismatchError`` unless the source's parallel layout, dtype and
    quantization equal ours, its tensors are exactly our parameters (names,
    shapes, dtypes) and its checkpoint is ours."""
    source = f"peer model {descriptor.model!r}"
    problems = [
        f"{key}: ours {layout.get(key)!r}, {source}'s {descriptor.layout.get(key)!r}"
        for key in sorted(set(layout) | set(descriptor.layout))
        if layout.get(key) != descriptor.layout.get(key)
    ]
    if problems:
        raise PeerMismatchError(
            f"Parallel layout or quantization differs from {source}: "
            + _listed(problems)
        )
    theirs = {t.name: t for t in descriptor.tensors}
    problems = [f"{n} missing from the peer" for n in params if n not in theirs]
    problems += [f"{n} not in this model" for n in theirs if n not in params]
    for name, spec in theirs.items():
        ours = params.get(name)
        if ours is None:
            continue
        if list(ours.shape) != list(spec.shape):
            problems.append(f"{name}: shape ours {list(ours.shape)}, peer {spec.shape}")
        if dtype_name(ours.dtype) != spec.dtype:
            problems.append(
                f"{name}: dtype ours {dtype_name(ours.dtype)}, peer {spec.dtype}"
            )
    if problems:
        raise PeerMismatchError(
            f"The weights of {source} do not match this model's parameters: "
            + _listed(problems)
        )
    if not same_checkpoint(checkpoint, descriptor.checkpoint):
        raise PeerMismatchError(
            f"{source} serves another checkpoint (config.json or safetensors "
            "headers differ), though its parameters have the same names and shapes"
        )


def verify_checksums(
    descriptor: TransferDescriptor, destinations: Sequence[torch.Tensor]
) -> None:
    """``PeerMismatchError`` listing each tensor whose copy differs from
    what the source sent."""
    bad = [
        f"{spec.name} (expected {spec.checksum}, got {got})"
        for spec, dest in zip(descriptor.tensors, destinations, strict=True)
        if (got := checksum(dest, descriptor.checksum)) != spec.checksum
    ]
    if bad:
        raise PeerMismatchError(
            f"Checksum mismatch in {len(bad)} tensor(s) copied from peer model "
            f"{descriptor.model!r} via {descriptor.transport}: " + _listed(bad)
        )
