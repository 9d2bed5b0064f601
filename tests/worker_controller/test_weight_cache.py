# SPDX-License-Identifier: Apache-2.0
"""Host-RAM weight cache: checkpoints copied to shared memory after their
first load; later loads and swaps read them from there (real engine, CPU:
the mapping is not pinned here, the rest of the path is the GPU's)."""

import os
import time
from pathlib import Path

import pytest

from tests.worker_controller.conftest import TINY_ARGS
from tests.worker_controller.models import SEED, build_model, hf_greedy
from vllm.worker_controller.weight_cache import WeightCache

PROMPT = "The capital of France is"


def wait_cached(controller, path: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (entry := controller.weight_cache.lookup(path)) is None:
        assert time.monotonic() < deadline, f"{path} was not cached"
        time.sleep(0.1)
    return entry


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cached")
    return {
        "a": str(build_model("qwen3", root, seed=SEED + 2, name="qwen3-a")),
        "b": str(build_model("qwen3", root, seed=SEED + 3, name="qwen3-b")),
    }


def test_loads_and_swaps_read_the_cache(controller, checkpoints, greedy):
    expected = {k: hf_greedy(path, PROMPT, 12) for k, path in checkpoints.items()}
    assert expected["a"] != expected["b"]
    first = controller.load(checkpoints["a"], "a", **TINY_ARGS)
    assert first.weights_load["source"] == "disk", first.weights_load
    assert first.weights_load["bytes"] > 0
    entry = wait_cached(controller, checkpoints["a"])
    assert (Path(entry) / "model.safetensors").stat().st_size > 0
    controller.unload("a")

    again = controller.load(checkpoints["a"], "a", **TINY_ARGS)
    assert again.weights_load["source"] == "host_cache", again.weights_load
    assert again.weights_load["bytes"] == first.weights_load["bytes"]
    assert greedy("a", PROMPT, 12) == expected["a"]

    # b from disk by a swap, then cached; swapping back and forth from there.
    to_b = controller.load(checkpoints["b"], "b", swap_from="a", **TINY_ARGS)
    assert to_b.brought_up == "swap"
    assert to_b.weights_load["source"] == "disk"
    assert greedy("b", PROMPT, 12) == expected["b"]
    wait_cached(controller, checkpoints["b"])
    current = "b"
    for target in ("a", "b", "a"):
        swapped = controller.load(
            checkpoints[target], target, swap_from=current, **TINY_ARGS
        )
        assert swapped.brought_up == "swap"
        assert swapped.weights_load["source"] == "host_cache", swapped.weights_load
        assert greedy(target, PROMPT, 12) == expected[target], target
        current = target
    listed = {m["name"]: m for m in controller.list_models()}
    assert listed[current]["weights_load"]["source"] == "host_cache"
    controller.unload(current)


def test_cache_budget_is_lru(tmp_path):
    """Oldest out first; what does not fit is not cached; eviction is
    announced (the controller tells its workers to unmap)."""
    models = []
    for i in range(3):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(os.urandom(1000))
        models.append(str(d))
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.safetensors").write_bytes(os.urandom(5000))
    evicted: list[str] = []
    cache = WeightCache(2500, on_evict=evicted.append, root=str(tmp_path))
    try:
        entries = [cache.admit(m) for m in models[:2]]
        assert all(entries)
        assert cache.lookup(models[0]) == entries[0]  # m0 now most recent
        assert cache.admit(models[2])
        assert evicted == [entries[1]] and not Path(entries[1]).exists()
        assert cache.lookup(models[1]) is None
        assert cache.admit(str(big)) is None
        assert [e["model"] for e in cache.entries()] == [
            os.path.realpath(m) for m in (models[2], models[0])
        ]
    finally:
        cache.close()
