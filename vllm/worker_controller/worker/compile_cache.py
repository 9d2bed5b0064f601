# SPDX-License-Identifier: Apache-2.0
"""torch.compile caches keyed by the model's architecture, not its path.

vLLM keys its compile caches (the AOT-compiled model under
``torch_compile_cache/torch_aot_compile/<hash>``, the Inductor cache inside
it, and the piecewise backend's cache) by ``VllmConfig.compute_hash()``.
Of the model, that hash covers the checkpoint *path* (``ModelConfig.model``)
and the engine arguments, not the checkpoint's ``config.json``. A pool that
hosts fine-tunes of one base, or one checkpoint copied to a new place,
therefore compiles each of them from scratch (14.6 s of a 21.9 s load of a
Qwen3-0.6B-shaped model on an H200), although their graphs are identical:
weights are inputs of the compiled graph, not constants in it.

Here the path is replaced, in the hash only, by a digest of the HF config
(the structure the model code builds from it), so checkpoints with equal
configs and equal engine arguments share one compiled artifact, and a
checkpoint whose ``config.json`` changed in place no longer hits a stale
one. Source files traced by Dynamo are still checked by vLLM itself on
every cache load. Checkpoints whose graph may depend on more than
``config.json`` keep upstream's path key: quantized ones (some quantization
formats keep their parameters in other files) and those with remote code.
"""

import copy
import hashlib
import json

from vllm.config import ModelConfig, VllmConfig

# Fields of a saved HF config that name where or by what it was written.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version")


class ArchitectureKeyedModelConfig(ModelConfig):
    """``ModelConfig`` whose compile-cache hash names the architecture."""

    def compute_hash(self) -> str:
        keyed = copy.copy(self)
        keyed.model = f"architecture:{architecture_digest(self)}"
        return ModelConfig.compute_hash(keyed)


def architecture_digest(model_config: ModelConfig) -> str:
    """Digest of the HF config, without the fields that only say where from."""
    hf_config = model_config.hf_config.to_dict()
    for key in _PROVENANCE_KEYS:
        hf_config.pop(key, None)
    text = json.dumps(hf_config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def engine_shape_key(vllm_config: VllmConfig, engine_args: dict) -> str | None:
    """What two engines must share for one to be swapped into the other:
    the architecture digest and the engine args (which, with the HF config,
    determine every graph shape, the KV cache layout and the parallel
    layout). None where weights cannot simply be copied into a kept model:
    the cases this module also leaves on the path key, and engines with
    LoRA, whose layers vLLM has wrapped (the checkpoint's names no longer
    match, so upstream's ``reload_weights`` cannot load into them) and whose
    workers cache adapters by ids that the next engine's app gives anew."""
    model_config = vllm_config.model_config
    if not _keyable(model_config) or vllm_config.lora_config is not None:
        return None
    text = json.dumps(engine_args, sort_keys=True, default=str)
    shape = f"{architecture_digest(model_config)}:{text}"
    return hashlib.sha256(shape.encode()).hexdigest()


def _keyable(model_config: ModelConfig | None) -> bool:
    return (
        model_config is not None
        and type(model_config) in (ModelConfig, ArchitectureKeyedModelConfig)
        and model_config.quantization is None
        and not model_config.trust_remote_code
    )


def key_compile_cache_by_architecture(vllm_config: VllmConfig) -> bool:
    """Makes ``vllm_config``'s compile-cache key path-independent if safe.

    Returns whether it did. Mutates the (worker-local) config in place,
    before the model is built, so every compile-cache lookup sees it.
    """
    model_config = vllm_config.model_config
    if not _keyable(model_config) or type(model_config) is not ModelConfig:
        return False
    model_config.__class__ = ArchitectureKeyedModelConfig
    return True
