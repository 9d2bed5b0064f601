# SPDX-License-Identifier: Apache-2.0
"""A loaded model's parameters as its loader left them: what a peer sends.

vLLM loads a checkpoint into the model's parameters (sharded for its rank)
and then runs ``process_weights_after_loading``, which may turn them into a
kernel's own format: on CPU, every linear layer's weight is prepacked into
an oneDNN handle and the parameter replaced by an empty one. That processed
state cannot be copied into another process; the loaded state can, and a
target that copies it into an identical model and runs upstream's
processing itself ends up exactly where a load from disk would.

So each load through our loaders records the loaded parameters (aliases,
no copy) and their in-place-modification counters, and after processing
sorts them out:

- still the model's, unmodified: exported as they are (zero cost);
- replaced by processing (CPU's oneDNN weights): kept, on CPU, in pooled
  workers only (``keep_replaced_cpu_tensors``): the loaded weight stays in
  memory beside the kernel's packed copy, which is the price of serving
  as a peer on CPU;
- modified in place, or replaced on a GPU (where keeping them would cost
  device memory): the model cannot be a source, and says why.
"""

import dataclasses
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from vllm.config import ModelConfig, VllmConfig
from vllm.logger import init_logger
from vllm.worker_controller.compat.peer import tensor_version

logger = init_logger(__name__)

_keep_replaced_cpu = False


def keep_replaced_cpu_tensors(keep: bool = True) -> None:
    """Keep loaded CPU parameters that processing replaced, so that models
    loaded in this process can be peers (pooled workers turn it on)."""
    global _keep_replaced_cpu
    _keep_replaced_cpu = keep


class NotExportableError(RuntimeError):
    """This model's loaded parameters are not available (and why)."""


@dataclasses.dataclass
class _Entry:
    tensor: torch.Tensor
    """A detached alias of the loaded parameter (shares its storage and
    its version counter)."""
    version: int
    live: bool = True
    """Still the model's own parameter (else a kept, replaced one)."""


class LoadedState:
    """One model's loaded parameters, by name, in ``named_parameters`` order."""

    def __init__(self, entries: dict[str, _Entry]):
        self.entries = entries
        self.unusable: str | None = None

    def drop(self, why: str) -> None:
        self.entries = {}
        self.unusable = why


_states: "weakref.WeakKeyDictionary[nn.Module, LoadedState]" = (
    weakref.WeakKeyDictionary()
)


def record(model: nn.Module) -> None:
    """Notes the model's parameters as loaded (before processing)."""
    entries = {
        name: _Entry(param.detach(), tensor_version(param))
        for name, param in model.named_parameters()
    }
    _states[model] = LoadedState(entries)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.stride() == b.stride()
    )


def settle(model: nn.Module) -> None:
    """After processing: keeps what a peer can send, or the reason why the
    model cannot be a source."""
    state = _states.get(model)
    if state is None:
        return
    params = dict(model.named_parameters())
    kept = 0
    for name, entry in state.entries.items():
        param = params.get(name)
        changed = tensor_version(entry.tensor) != entry.version
        if param is not None and _same(param, entry.tensor):
            if changed:
                return state.drop(f"processing changed {name} in place")
            continue
        entry.live = False
        if changed:
            return state.drop(f"processing changed {name} before replacing it")
        if entry.tensor.device.type != "cpu" or not _keep_replaced_cpu:
            return state.drop(
                f"processing replaced {name} on {entry.tensor.device.type} "
                "(its loaded form is not kept)"
            )
        kept += entry.tensor.nbytes
    if kept:
        logger.info(
            "Keeping %.1f MiB of loaded weights that processing replaced "
            "(so this model can serve as a peer)",
            kept / 2**20,
        )


def after_reload(model: nn.Module) -> None:
    """After a swap loaded another checkpoint into the model in place:
    parameters that are still the model's are current again; kept ones
    are the old checkpoint's, so the model can no longer be a source."""
    state = _states.get(model)
    if state is None or state.unusable:
        return
    params = dict(model.named_parameters())
    for name, entry in state.entries.items():
        param = params.get(name)
        if not entry.live or param is None or not _same(param, entry.tensor):
            return state.drop(
                "another checkpoint was swapped in and processing had "
                f"replaced {name}: its loaded form is gone"
            )
        entry.version = tensor_version(entry.tensor)


def loaded_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The loaded parameters, checked unmodified since they were recorded;
    ``NotExportableError`` (with why) if the model cannot be a source."""
    state = _states.get(model)
    if state is None:
        raise NotExportableError(
            "the model was not loaded by a recording loader "
            "(load formats auto, safetensors or wc_peer)"
        )
    if state.unusable:
        raise NotExportableError(state.unusable)
    for name, entry in state.entries.items():
        if tensor_version(entry.tensor) != entry.version:
            raise NotExportableError(f"{name} was modified since it was loaded")
    return ((name, entry.tensor) for name, entry in state.entries.items())


class RecordsLoadedState:
    """Mixin for a ``BaseModelLoader``: records the loaded state of every
    model it loads (see the module's docstring)."""

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        super().load_weights(model, model_config)  # type: ignore[misc]
        record(model)

    def load_model(
        self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = ""
    ) -> nn.Module:
        model = super().load_model(vllm_config, model_config, prefix)  # type: ignore[misc]
        settle(model)
        return model
