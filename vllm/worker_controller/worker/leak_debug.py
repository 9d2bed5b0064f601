# SPDX-License-Identifier: Apache-2.0
"""Leak hunting at unload, behind one flag (``VLLM_WC_DEBUG_LEAKS=1``).

Off by default and off the unload's hot path: memory figures alone can
miss a leak (untouched pages are not in RSS), so with the flag the worker
keeps weak references to what an unload must free, logs sleep mode's pools
and the driver's count around the teardown, and for whatever survives logs
who keeps it alive.
"""

import gc
import os
import weakref
from types import FrameType, ModuleType

from vllm.logger import init_logger
from vllm.worker_controller.compat import cumem

logger = init_logger(__name__)


def enabled() -> bool:
    return os.environ.get("VLLM_WC_DEBUG_LEAKS") == "1"


def pool_report() -> str:
    """Sleep mode's pools and their untracked segments (see compat.cumem)."""
    return cumem.pool_report()


def leak_probes(worker) -> dict[str, weakref.ref]:
    """Weak references to what an unload must free (``VLLM_WC_DEBUG_LEAKS``)."""
    runner = worker.model_runner
    probes = {"model runner": weakref.ref(runner)}
    if getattr(runner, "model", None) is not None:
        probes["model"] = weakref.ref(runner.get_model())
    if kv_caches := getattr(runner, "kv_caches", None):
        probes["KV cache tensor"] = weakref.ref(kv_caches[0])
    return probes


def report_survivors(probes: dict[str, weakref.ref]) -> list[str]:
    """Names what outlived its unload, logging who holds each."""
    leaked = [what for what, ref in probes.items() if ref() is not None]
    for what in leaked:
        for chain in referrer_chains(probes[what]()):
            logger.warning("Unloaded %s still referenced: %s", what, chain)
    return leaked


def _keys_of(d: dict, value: object) -> list:
    """Keys under which ``d`` holds ``value`` (a plain loop: a comprehension
    would put ``value`` in a closure cell, itself a referrer)."""
    keys = []
    for k, v in d.items():
        if v is value:
            keys.append(k)
    return keys[:2]


def referrer_chains(obj: object, depth: int = 30, width: int = 2) -> list[str]:
    """Who keeps ``obj`` alive: referrer type chains, for leak hunting.

    Used by the worker when ``VLLM_WC_DEBUG_LEAKS=1`` and an unloaded
    model's runner survives the teardown. Module-level objects end a chain.
    """
    chains: list[str] = []
    seen = {id(obj)}

    def walk(target: object, path: list[str]) -> None:
        found = gc.get_referrers(target)
        seen.add(id(found))
        referrers = [
            r
            for r in found
            if id(r) not in seen
            and not (isinstance(r, FrameType) and r.f_code in own_code)
            and type(r).__name__ != "list_iterator"
        ]
        batch = referrers[:width]
        seen.update((id(referrers), id(batch)))
        if len(path) > depth or not referrers or isinstance(target, ModuleType):
            chains.append(" <- ".join(path))
            return
        for r in batch:
            seen.add(id(r))
            name = type(r).__qualname__
            if isinstance(r, dict):
                name = f"dict{_keys_of(r, target)}"
            elif isinstance(r, ModuleType):
                name = f"module {r.__name__}"
            elif isinstance(r, FrameType):
                name = f"frame {r.f_code.co_qualname} ({r.f_code.co_filename})"
            elif callable(r) and hasattr(r, "__qualname__"):
                name = f"{type(r).__name__} {r.__qualname__}"
            walk(r, [*path, name])

    own_code = {walk.__code__, referrer_chains.__code__}
    walk(obj, [type(obj).__qualname__])
    return chains
