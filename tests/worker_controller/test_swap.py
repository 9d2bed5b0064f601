# SPDX-License-Identifier: Apache-2.0
"""Swaps: a checkpoint of the same shape takes over an idle model's engine
(same processes, compiled model, KV cache); only its weights are loaded.

The checkpoints share config and tokenizer but not weights (another seed),
so equal tokens prove the new weights are the ones that run."""

import asyncio
import gc
import weakref

import psutil
import pytest

from tests.worker_controller.conftest import TINY_ARGS
from tests.worker_controller.models import SEED, build_model, hf_greedy
from vllm.worker_controller.errors import ModelBusyError, ModelUnavailableError
from vllm.worker_controller.router import ModelRouter
from vllm.worker_controller.serve import parse_cli

PROMPT = "The quick brown fox"
SWAPS = 20


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory) -> dict[str, str]:
    other = build_model("qwen3", tmp_path_factory.mktemp("seed2"), seed=SEED + 1)
    return {"a": str(tiny_models["qwen3"]), "b": str(other)}


def worker_rss(controller, pid: int) -> int:
    workers = controller.list_workers(with_health=True)
    (worker,) = [w for w in workers if w["pid"] == pid]
    return worker["health"]["memory_bytes"]


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_swap_back_and_forth(controller, tiny_models, checkpoints, greedy, eager):
    args = {**TINY_ARGS, "enforce_eager": eager}
    expected = {k: hf_greedy(path, PROMPT, 12) for k, path in checkpoints.items()}
    assert expected["a"] != expected["b"]
    controller.load(str(tiny_models["opt"]), "bystander", **TINY_ARGS)
    bystander = greedy("bystander", PROMPT)
    first = controller.load(checkpoints["a"], "a", **args)
    assert first.brought_up == "load"
    assert greedy("a", PROMPT, 12) == expected["a"]
    current, rss, threads = "a", [], []
    clients = [weakref.ref(controller.engine_client("a"))]
    for i in range(SWAPS if eager else 4):
        target = "b" if current == "a" else "a"
        path = checkpoints[target]
        swapped = controller.load(path, target, swap_from=current, **args)
        assert swapped.brought_up == "swap", swapped
        assert swapped.worker_pids == first.worker_pids
        assert swapped.engine_host_pid == first.engine_host_pid
        assert "stop_previous" in swapped.timings_s
        listed = {m["name"]: m for m in controller.list_models()}
        assert current not in listed and listed[target]["brought_up"] == "swap"
        assert greedy(target, PROMPT, 12) == expected[target], (i, target)
        rss.append(worker_rss(controller, first.worker_pids[0]))
        threads.append(psutil.Process().num_threads())
        clients.append(weakref.ref(controller.engine_client(target)))
        current = target
    # The kept engine does not grow: no KV cache, graph or weights per swap.
    assert max(rss[2:]) - rss[1] < 64 << 20, [r >> 20 for r in rss]
    # Nor does the front end: each swap's AsyncLLM left its ZMQ context's
    # three threads behind until shutdown_engine_client ended it.
    assert max(threads[2:]) - threads[1] < 3, threads
    assert greedy("bystander", PROMPT) == bystander
    controller.unload(current)
    controller.unload("bystander")
    gc.collect()
    assert [c for c in clients if c() is not None] == []  # no AsyncLLM kept


def test_swap_needs_the_same_engine_shape(controller, checkpoints, greedy):
    """Other engine args shape another engine: refused before anything is
    stopped; the idle model keeps serving."""
    controller.load(checkpoints["a"], "a", **TINY_ARGS)
    before = greedy("a", PROMPT)
    with pytest.raises(ModelBusyError):
        controller.load(
            checkpoints["b"], "b", swap_from="a", **{**TINY_ARGS, "max_num_seqs": 2}
        )
    assert [m["name"] for m in controller.list_models()] == ["a"]
    assert greedy("a", PROMPT) == before
    controller.unload("a")


def test_a_model_is_not_swapped_out_before_it_serves(
    controller, checkpoints, loop, monkeypatch
):
    """A model loaded over the management API has no request pinning it:
    until its app is built, the load itself pins it, so a load of the same
    shape that needs its slot waits (and here, 503s) instead of stopping
    the engine the app is being built on (which hung the first load)."""
    args, _, _ = parse_cli([checkpoints["a"]])
    router = ModelRouter(
        controller, args, TINY_ARGS, max_loaded_models=1, load_wait_s=1.0
    )
    building, build = asyncio.Event(), router._build_app

    async def slow_build(name: str, model: str):
        if name == "a":
            building.set()
            await asyncio.sleep(3)  # the second load waits here, and gives up
        return await build(name, model)

    monkeypatch.setattr(router, "_build_app", slow_build)

    async def race():
        first = asyncio.create_task(router.add("a", checkpoints["a"]))
        await building.wait()
        with pytest.raises(ModelUnavailableError):
            await router.add("b", checkpoints["b"])
        return await first

    assert loop.run(race())["brought_up"] == "load"
    assert [m["name"] for m in controller.list_models()] == ["a"]
    loop.run(router.remove("a"))
