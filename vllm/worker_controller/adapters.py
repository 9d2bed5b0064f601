# SPDX-License-Identifier: Apache-2.0
"""LoRA adapters as models of their own, served by their base's engine.

An adapter has a name that clients use as ``model``, a base model (a name
the router can load) and a folder (``adapter_config.json`` and its
weights). A request for it is a request for its base: the base is loaded
on demand (with LoRA on: :func:`lora_engine_args`), pinned, counted as used
for LRU and keep-alive, and its vLLM app runs the request with the adapter
through upstream's own LoRA serving (``compat/lora.py``), which the adapter
is registered with on its first request after each load of the base.

Adapters come from the catalog (``adapter: {base, path}``), from the
management API (paths under ``--allowed-model-dir`` only), or from
upstream's ``/v1/load_lora_adapter`` where ``vllm serve`` would allow it
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); the last are learnt from the app
after each such call, so that they are routed and survive an unload of
their base.
"""

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from safetensors import safe_open

from vllm.config.lora import MaxLoRARanks
from vllm.logger import init_logger
from vllm.worker_controller.compat.lora import (
    check_adapter_config,
    serve_adapter,
    served_adapters,
    stop_serving_adapter,
)
from vllm.worker_controller.errors import (
    AdapterLoadError,
    InvalidAdapterError,
    InvalidEngineArgsError,
    ModelNotFoundError,
)

logger = init_logger(__name__)

LORA_RANKS: tuple[int, ...] = get_args(MaxLoRARanks)
"""The ``max_lora_rank`` values vLLM accepts."""
DEFAULT_MAX_LORAS = 4
"""Adapters one batch of a base may mix, unless its entry says otherwise
(vLLM's own default, 1, would run two adapters' requests one after the
other)."""
DEFAULT_MAX_LORA_RANK = 16
"""vLLM's default; raised to fit the largest adapter known at load time."""
# Where upstream's LoRA loader looks for an adapter's weights.
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter: which model it adapts and where its folder is."""

    base: str
    path: str
    origin: str = "catalog"
    """``catalog``, ``management`` (POST /v1/controller/adapters) or
    ``runtime`` (upstream's /v1/load_lora_adapter)."""
    rank: int | None = None
    """Its LoRA rank (``r``), read when it was registered."""

    def describe(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "base": self.base,
            "path": self.path,
            "origin": self.origin,
            "rank": self.rank,
        }


def check_adapter(
    path: str, max_lora_rank: int = LORA_RANKS[-1], base_path: str | None = None
) -> int:
    """Checks an adapter folder before any engine sees it: upstream's checks
    of ``adapter_config.json`` (rank within ``max_lora_rank``, no DoRA,
    bias or ``modules_to_save``), weights upstream can find (a safetensors
    file must have a readable header) and, given the base's checkpoint,
    that they fit it (:func:`check_fits_base`). Returns its rank;
    :class:`InvalidAdapterError` says what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidAdapterError(f"Adapter path {path!r} is not a directory")
    try:
        rank = check_adapter_config(path, max_lora_rank)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InvalidAdapterError(f"Adapter {path!r}: {e}") from e
    weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise InvalidAdapterError(
            f"Adapter {path!r} has no weights (expected one of {list(_WEIGHT_FILES)})"
        )
    if weights.suffix == ".safetensors":
        try:
            with safe_open(weights, framework="pt") as f:
                if not list(f.keys()):
                    raise InvalidAdapterError(f"Adapter {path!r}: no tensors")
        except InvalidAdapterError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise InvalidAdapterError(
                f"Adapter {path!r}: unreadable weights: {e}"
            ) from e
        if base_path is not None:
            check_fits_base(path, base_path)
    return rank


def check_fits_base(path: str, base_path: str) -> None:
    """Refuses an adapter whose LoRA weights do not fit its base's layers
    (an adapter of another model): vLLM 0.26 would pad or cut them and
    answer with garbage rather than refuse. Compares, from the safetensors
    headers only, each ``lora_A`` with the base weight's inputs and each
    ``lora_B`` with its outputs; modules the base checkpoint does not name
    that way (and non-safetensors files) are left to the engine."""
    base = _weight_shapes(sorted(Path(base_path).glob("*.safetensors")))
    if not base:
        return
    adapter = _weight_shapes([Path(path) / _WEIGHT_FILES[0]])
    for name, shape in adapter.items():
        module, _, kind = name.rpartition(".lora_")
        module = module.removeprefix("base_model.model.")
        base_shape = base.get(f"{module}.weight")
        if kind not in ("A.weight", "B.weight") or base_shape is None:
            continue
        if len(shape) != 2 or len(base_shape) != 2:
            continue
        side, want, got = (
            ("inputs", base_shape[1], shape[1])
            if kind == "A.weight"
            else ("outputs", base_shape[0], shape[0])
        )
        if want != got:
            raise InvalidAdapterError(
                f"Adapter {path!r} does not fit its base: {module} has {want} "
                f"{side}, the adapter's lora_{kind[0]} {got} (an adapter of "
                "another model?)"
            )


def _weight_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Tensor name -> shape, read from safetensors headers (no tensors)."""
    shapes: dict[str, list[int]] = {}
    for file in files:
        if not file.is_file():
            continue
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (no iterator)
                    shapes[key] = list(f.get_slice(key).get_shape())
        except Exception as e:  # safetensors raises its own error types
            logger.warning("Cannot read the tensor shapes of %s: %s", file, e)
    return shapes


def adapter_rank_or_none(path: str) -> int | None:
    """The adapter's rank, or None where it cannot be read."""
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text())["r"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fitting_rank(ranks: Iterable[int | None]) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits every rank
    (at least vLLM's default)."""
    needed = max([DEFAULT_MAX_LORA_RANK, *(r for r in ranks if r)])
    return next((r for r in LORA_RANKS if r >= needed), LORA_RANKS[-1])


def lora_engine_args(
    engine_args: dict[str, Any], ranks: Iterable[int | None]
) -> dict[str, Any]:
    """A base's engine args with LoRA on: adapters imply ``enable_lora``;
    ``max_loras`` and ``max_lora_rank`` are the entry's, else
    ``DEFAULT_MAX_LORAS`` and the smallest rank that fits its adapters.
    :class:`InvalidEngineArgsError` if the args turn LoRA off."""
    if engine_args.get("enable_lora") is False:
        raise InvalidEngineArgsError(
            "enable_lora is false, but LoRA adapters name this model as their base"
        )
    args = {**engine_args, "enable_lora": True}
    args.setdefault("max_loras", DEFAULT_MAX_LORAS)
    args.setdefault("max_lora_rank", fitting_rank(ranks))
    return args


class AdapterRegistry:
    """The adapters a router serves, by name."""

    def __init__(self, entries: dict[str, AdapterEntry] | None = None):
        self._entries: dict[str, AdapterEntry] = dict(entries or {})
        self._attaching: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def get(self, name: str) -> AdapterEntry | None:
        return self._entries.get(name)

    def items(self) -> Iterator[tuple[str, AdapterEntry]]:
        return iter(list(self._entries.items()))

    def of_base(self, base: str) -> dict[str, AdapterEntry]:
        return {n: e for n, e in self._entries.items() if e.base == base}

    def add(self, name: str, entry: AdapterEntry) -> None:
        self._entries[name] = entry
        logger.info(
            "Adapter %r of %r registered (%s): %s",
            name,
            entry.base,
            entry.origin,
            entry.path,
        )

    def remove(self, name: str) -> AdapterEntry | None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            logger.info("Adapter %r of %r removed", name, entry.base)
        return entry

    async def attach(
        self, name: str, entry: AdapterEntry, app: Any, registered: bool = True
    ) -> None:
        """Has the base's app serve the adapter, unless it already does
        (one load per adapter however many requests wait for it).
        :class:`AdapterLoadError` with upstream's reason if the engine
        refuses it; the app then does not serve it. ``registered``: the
        entry is this registry's (:class:`ModelNotFoundError` if it was
        removed meanwhile); False while it is being added."""
        async with self._attaching[name]:
            if registered and self._entries.get(name) != entry:
                raise ModelNotFoundError(f"The model `{name}` does not exist.")
            if served_adapters(app).get(name) == entry.path:
                return
            error = await serve_adapter(app, name, entry.path, entry.base)
        if error is not None:
            raise AdapterLoadError(
                f"The adapter `{name}` could not be loaded into `{entry.base}`: {error}"
            )
        logger.info("Adapter %r served by %r", name, entry.base)

    async def detach(self, name: str, app: Any) -> None:
        """The base's app stops serving the adapter (requests running with
        it finish)."""
        async with self._attaching[name]:
            await stop_serving_adapter(app, name)

    def learn_runtime(self, base: str, app: Any) -> None:
        """Takes in what upstream's /v1/load_lora_adapter and
        /v1/unload_lora_adapter did to the base's app: adapters it serves
        that are unknown here become ``runtime`` adapters of the base; runtime
        adapters of the base it no longer serves are forgotten."""
        served = served_adapters(app)
        for name, path in served.items():
            if name not in self._entries:
                self.add(
                    name,
                    AdapterEntry(base, path, "runtime", adapter_rank_or_none(path)),
                )
        for name, entry in list(self._entries.items()):
            if entry.base == base and entry.origin == "runtime" and name not in served:
                self.remove(name)
