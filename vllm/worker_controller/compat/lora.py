# SPDX-License-Identifier: Apache-2.0
"""Upstream's LoRA serving, as each model's OpenAI app has it.

A base model's app serves its adapters through upstream's own
``OpenAIServingModels``: an adapter is registered there under its name
(``load_lora_adapter``, which also has the engine load it), and upstream's
serving layer then runs every request whose ``model`` is that name with the
adapter's ``LoRARequest``. Adapter folders are checked with upstream's own
``PEFTHelper`` before any engine sees them.
"""

from typing import Any

from vllm.config import LoRAConfig

# The app's adapter registry (what `vllm serve --lora-modules` fills).
from vllm.entrypoints.openai.models.serving import OpenAIServingModels

# The request bodies of upstream's /v1/load_lora_adapter and
# /v1/unload_lora_adapter, which its registry methods take.
from vllm.entrypoints.serve.lora.protocol import (
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
)

# Reads and checks an adapter's adapter_config.json as the engine does.
from vllm.lora.peft_helper import PEFTHelper

__all__ = [
    "RUNTIME_LORA_PATHS",
    "check_adapter_config",
    "serve_adapter",
    "served_adapters",
    "stop_serving_adapter",
]

# Upstream's routes for adapters loaded at run time (attached to a model's
# app only with VLLM_ALLOW_RUNTIME_LORA_UPDATING, as under `vllm serve`).
RUNTIME_LORA_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def check_adapter_config(path: str, max_lora_rank: int) -> int:
    """Reads the adapter's ``adapter_config.json`` with upstream's
    ``PEFTHelper`` and checks it against a LoRA config of that rank
    (DoRA, ``modules_to_save``, bias and the rank are refused as the engine
    refuses them); returns its rank. Raises ``OSError`` or ``ValueError``.
    Relies on: ``PEFTHelper.from_local_dir(lora_path, max_position_embeddings)``,
    ``validate_legal(lora_config)``, ``r``."""
    helper = PEFTHelper.from_local_dir(path, max_position_embeddings=None)
    helper.validate_legal(LoRAConfig(max_lora_rank=max_lora_rank))
    return helper.r


def _serving_models(app: Any) -> OpenAIServingModels:
    """Relies on: ``init_app_state`` sets ``state.openai_serving_models``."""
    return app.state.openai_serving_models


def served_adapters(app: Any) -> dict[str, str]:
    """The adapters the app serves now: name -> path. Relies on:
    ``OpenAIServingModels.lora_requests`` (name -> ``LoRARequest``)."""
    return {
        name: request.lora_path
        for name, request in _serving_models(app).lora_requests.items()
    }


async def serve_adapter(app: Any, name: str, path: str, base: str) -> str | None:
    """Has the app serve the adapter at ``path`` as ``name`` (its engine
    loads it now, so a broken adapter fails here); returns None, or
    upstream's error message. Relies on:
    ``OpenAIServingModels.load_lora_adapter(request, base_model_name)``
    returning an ``ErrorResponse`` on failure, a string on success."""
    models = _serving_models(app)
    request = LoadLoRAAdapterRequest(
        lora_name=name, lora_path=path, load_inplace=name in models.lora_requests
    )
    result = await models.load_lora_adapter(request, base_model_name=base)
    return None if isinstance(result, str) else result.error.message


async def stop_serving_adapter(app: Any, name: str) -> None:
    """The app stops serving the adapter ``name`` (requests running with it
    finish). Relies on: ``OpenAIServingModels.unload_lora_adapter(request)``."""
    models = _serving_models(app)
    if name in models.lora_requests:
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
