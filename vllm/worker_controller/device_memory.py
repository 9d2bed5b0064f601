# SPDX-License-Identifier: Apache-2.0
"""Device memory as placement counts it: each awake engine claims its
``gpu_memory_utilization`` share of every device its ranks run on.

vLLM sizes an engine's KV cache from that share, so shares are what must
not add up past 1.0 on a device; the controller (for a load without a
reservation) and placement (for every load and unpark) both ask here.
"""

from collections import defaultdict
from collections.abc import Iterable

Claims = dict[int, float]
"""Device index -> share of its memory."""


def claimed(per_engine: Iterable[Claims]) -> Claims:
    """The shares claimed on each device, summed over engines."""
    used: dict[int, float] = defaultdict(float)
    for claims in per_engine:
        for device, share in claims.items():
            used[device] += share
    return used


def fits(used: Claims, device: int | None, share: float) -> bool:
    """Whether ``share`` more of ``device``'s memory is unclaimed (always
    on CPU, which has no device)."""
    return device is None or used.get(device, 0.0) + share <= 1.0 + 1e-9
