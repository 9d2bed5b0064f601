# SPDX-License-Identifier: Apache-2.0
"""Worker side of the host-RAM weight cache: pinned views of cached checkpoints.

The controller keeps copies of recently used checkpoints' safetensors files
in shared memory (``weight_cache.WeightCache``). A pooled worker maps such a
copy once and, on GPU, registers the mapping with CUDA: page-locked, a copy
to the device is one DMA at PCIe speed instead of a trip through a staging
buffer. Every worker maps the same pages, so there is one copy per
checkpoint whatever the number of processes.

``HostCacheModelLoader`` is vLLM's default loader, registered under its own
load format, that reads the tensors out of such a mapping when the load's
config names a cache entry of the same checkpoint, and from disk otherwise.
Either way it records where the weights came from and how fast
(``take_weights_load``), which the controller reports per load.
"""

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.platforms import current_platform
from vllm.worker_controller.peer import PEER_LOAD_FORMAT
from vllm.worker_controller.peer.loaded_state import RecordsLoadedState

logger = init_logger(__name__)

HOST_CACHE_LOAD_FORMAT = "worker_controller_host_cache"
# Keys of ``model_loader_extra_config`` this loader reads (and hides from
# upstream's loader, which rejects keys it does not know).
_ENTRY_KEY = "host_cache_entry"
_FORMAT_KEY = "host_cache_fallback_format"
_PEER_DESCRIPTORS_KEY = "peer_descriptors"
# Formats whose files the cache holds and the default loader reads.
CACHEABLE_FORMATS = ("auto", "safetensors")
ORIGIN_FILE = "ORIGIN"
"""In a cache entry: the real path of the checkpoint it copies."""

# The dtype names of the safetensors format (its header's "dtype").
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def route_through_host_cache(load_config: LoadConfig, entry: str | None) -> bool:
    """Makes a load use this module's loader, reading from cache ``entry``
    (a directory made by ``WeightCache``) if given. False (config left as
    it is) for load formats whose files the cache does not hold."""
    load_format = str(load_config.load_format)
    extra = dict(load_config.model_loader_extra_config or {})
    if load_format == HOST_CACHE_LOAD_FORMAT or (
        # A load the controller routed to a peer (a swap into its engine
        # reads a checkpoint again).
        load_format == PEER_LOAD_FORMAT and _FORMAT_KEY in extra
    ):
        load_format = extra[_FORMAT_KEY]
        extra.pop(_PEER_DESCRIPTORS_KEY, None)
    elif load_format not in CACHEABLE_FORMATS:
        return False
    extra[_FORMAT_KEY] = load_format
    extra.pop(_ENTRY_KEY, None)
    if entry is not None:
        extra[_ENTRY_KEY] = entry
    load_config.load_format = HOST_CACHE_LOAD_FORMAT
    load_config.model_loader_extra_config = extra
    return True


def cache_entry_of(load_config: LoadConfig) -> str | None:
    """The cache entry a routed load reads from, if any."""
    return (load_config.model_loader_extra_config or {}).get(_ENTRY_KEY)


@dataclasses.dataclass
class WeightsLoad:
    """Where one load's weights came from, and how fast."""

    source: str
    """``host_cache``, ``disk`` or ``peer``."""
    bytes: int = 0
    seconds: float = 0.0
    transport: str | None = None
    """A peer load's transport (``shm``, ``gloo``, ``cuda_ipc``, ``nccl``)."""
    peer: str | None = None
    """Where a peer load took its weights from (or meant to)."""
    fallback: str | None = None
    """Why a load meant to copy from a peer read its checkpoint instead."""

    def as_dict(self) -> dict[str, Any]:
        rate = self.bytes / self.seconds / 1e9 if self.seconds > 0 else None
        figures = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {**figures, "gb_per_s": rate}


_last_load: WeightsLoad | None = None


def report_weights_load(load: WeightsLoad) -> WeightsLoad:
    """Makes ``load`` the figures the next ``take_weights_load`` returns."""
    global _last_load
    _last_load = load
    return load


def annotate_weights_load(**fields: Any) -> None:
    """Adds fields (e.g. why a peer load fell back) to the current figures."""
    if _last_load is not None:
        for key, value in fields.items():
            setattr(_last_load, key, value)


def take_weights_load() -> dict[str, Any] | None:
    """The figures of the load since the last call, if one ran (for the
    worker's reply)."""
    global _last_load
    load, _last_load = _last_load, None
    return None if load is None else load.as_dict()


def _timed(
    weights: Iterable[tuple[str, torch.Tensor]], source: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Passes ``weights`` through, timing the load: the consumer copies
    each tensor into its parameter before it asks for the next one, so the
    span from first to last covers the reads and the copies."""
    load = report_weights_load(WeightsLoad(source))
    start = time.perf_counter()
    for name, tensor in weights:
        load.bytes += tensor.nbytes
        yield name, tensor
    load.seconds = time.perf_counter() - start


class CachedCheckpoint:
    """One cache entry mapped into this process (pinned on GPU)."""

    def __init__(self, entry: str):
        self.entry = entry
        self.origin = (Path(entry) / ORIGIN_FILE).read_text()
        self._files: list[tuple[torch.Tensor, dict[str, Any], int]] = []
        self.pinned = False
        for path in sorted(Path(entry).glob("*.safetensors")):
            size = path.stat().st_size
            # A shared, read-only-in-practice mapping of the tmpfs file.
            data = torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
            header_len = int.from_bytes(data[:8].numpy().tobytes(), "little")
            header = json.loads(data[8 : 8 + header_len].numpy().tobytes())
            header.pop("__metadata__", None)
            self._files.append((data, header, 8 + header_len))
        self.nbytes = sum(data.numel() for data, _, _ in self._files)
        if current_platform.is_cuda():
            self._register()

    def _register(self) -> None:
        cudart = torch.cuda.cudart()
        start = time.perf_counter()
        for data, _, _ in self._files:
            err = cudart.cudaHostRegister(data.data_ptr(), data.numel(), 0)
            if int(err) != 0:
                logger.warning(
                    "cudaHostRegister of %s failed (%s): loads from it are not pinned",
                    self.entry,
                    err,
                )
                self._unregister()
                return
            self.pinned = True
        logger.info(
            "Pinned cached checkpoint %s (%.2f GiB) in %.2f s",
            self.origin,
            self.nbytes / 2**30,
            time.perf_counter() - start,
        )

    def _unregister(self) -> None:
        if not self.pinned:
            return
        cudart = torch.cuda.cudart()
        for data, _, _ in self._files:
            cudart.cudaHostUnregister(data.data_ptr())
        self.pinned = False

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) per tensor, as views into the mapping."""
        for data, header, base in self._files:
            for name, info in header.items():
                start, end = info["data_offsets"]
                raw = data[base + start : base + end]
                dtype = _DTYPES[info["dtype"]]
                if (base + start) % dtype.itemsize:
                    raw = raw.clone()  # a view of another type must be aligned
                yield name, raw.view(dtype).view(info["shape"])

    def close(self) -> None:
        self._unregister()
        self._files.clear()


class _Attached:
    """This process's mapped cache entries (attached once, kept until the
    controller evicts them: pinning costs time on every attach)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, CachedCheckpoint] = {}

    def get(self, entry: str) -> CachedCheckpoint:
        with self._lock:
            if (checkpoint := self._entries.get(entry)) is None:
                checkpoint = self._entries[entry] = CachedCheckpoint(entry)
            return checkpoint

    def forget(self, entry: str) -> None:
        with self._lock:
            checkpoint = self._entries.pop(entry, None)
        if checkpoint is not None:
            checkpoint.close()


attached = _Attached()


def cached_weights(
    entry: str | None, model_path: str
) -> Iterator[tuple[str, torch.Tensor]] | None:
    """The weights of ``model_path`` from cache ``entry``, timed; None if
    there is no entry, it is gone or it copies another checkpoint."""
    if entry is None:
        return None
    try:
        checkpoint = attached.get(entry)
    except OSError as e:  # evicted between the controller's lookup and now
        logger.warning(
            "Cached checkpoint %s unusable (%s): loading from disk", entry, e
        )
        return None
    if checkpoint.origin != os.path.realpath(model_path):
        return None
    return _timed(checkpoint.weights(), "host_cache")


@register_model_loader(HOST_CACHE_LOAD_FORMAT)
class HostCacheModelLoader(RecordsLoadedState, DefaultModelLoader):
    """Upstream's default loader, reading from the host cache when the
    load names an entry of the checkpoint being loaded; it records each
    model's loaded state, so that the model can be a peer's source."""

    def __init__(self, load_config: LoadConfig):
        extra = dict(load_config.model_loader_extra_config or {})
        self.entry: str | None = extra.pop(_ENTRY_KEY, None)
        fallback = extra.pop(_FORMAT_KEY, "auto")
        super().__init__(
            dataclasses.replace(
                load_config, load_format=fallback, model_loader_extra_config=extra
            )
        )

    def get_all_weights(
        self, model_config: ModelConfig, model: nn.Module
    ) -> Iterator[tuple[str, torch.Tensor]]:
        cached = None
        if not getattr(model, "secondary_weights", ()):
            cached = cached_weights(self.entry, model_config.model)
        if cached is not None:
            self.counter_before_loading_weights = time.perf_counter()
            yield from cached
        else:
            yield from _timed(super().get_all_weights(model_config, model), "disk")
