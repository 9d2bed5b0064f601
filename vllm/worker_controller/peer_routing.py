# SPDX-License-Identifier: Apache-2.0
"""Controller side of peer loads: which loaded model can give a new load
its weights, and how the load is routed to the ``wc_peer`` loader.

A source must hold the same checkpoint in the same parallel layout, dtype
and quantization (its ranks' loaded parameters are what the new ranks
copy, rank by rank); the target's loader checks all of it again, tensor by
tensor, so this only has to pick well, not guard.
"""

import os
from typing import Any

from vllm.config import VllmConfig
from vllm.config.load import LoadConfig
from vllm.worker_controller.peer import PEER_LOAD_FORMAT
from vllm.worker_controller.worker.host_cache import HOST_CACHE_LOAD_FORMAT


def weights_key(config: VllmConfig) -> tuple:
    """Equal for two engines whose ranks hold the same loaded parameters."""
    model, parallel = config.model_config, config.parallel_config
    return (
        os.path.realpath(model.model),
        model.revision,
        str(model.dtype),
        str(model.quantization),
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        str(model.hf_overrides),
    )


def reads_a_checkpoint(load_config: LoadConfig) -> bool:
    """Whether the load was routed through the host-cache loader (it reads
    a checkpoint format), so that a peer can stand in for the checkpoint."""
    return str(load_config.load_format) == HOST_CACHE_LOAD_FORMAT


def route_through_peer(
    load_config: LoadConfig, descriptors: list[dict[str, Any]]
) -> bool:
    """Makes a load routed through the host-cache loader (a checkpoint
    format it reads) copy from the peer the descriptors name instead, the
    host cache or disk being its fallback. False (config left as it is)
    for other load formats."""
    if not reads_a_checkpoint(load_config):
        return False
    load_config.load_format = PEER_LOAD_FORMAT
    load_config.model_loader_extra_config = {
        **(load_config.model_loader_extra_config or {}),
        "peer_descriptors": descriptors,
    }
    return True
