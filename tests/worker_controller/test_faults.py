# SPDX-License-Identifier: Apache-2.0
"""(f) Dead pooled workers are replaced; their engine fails fast, not hangs."""

import asyncio
import os
import signal
import time
import uuid

import pytest

from tests.worker_controller.conftest import TINY_ARGS, cpushm_files
from tests.worker_controller.models import hf_greedy
from vllm import SamplingParams

PROMPT = "The future of AI is"


def idle_worker(controller) -> dict:
    return next(
        w
        for w in controller.list_workers()
        if w["kind"] == "worker" and w["state"] == "idle"
    )


def test_idle_worker_killed_is_replaced(controller):
    victim = idle_worker(controller)
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while victim["pid"] in {w["pid"] for w in controller.list_workers()}:
        assert time.monotonic() < deadline, "death not noticed"
        time.sleep(0.1)
    assert controller.pool.wait_until_idle(timeout=120)
    replacement = next(
        w
        for w in controller.list_workers()
        if w["kind"] == "worker" and w["index"] == victim["index"]
    )
    assert replacement["pid"] != victim["pid"]
    assert replacement["state"] == "idle"


def test_worker_killed_while_serving(controller, tiny_models, greedy, loop):
    survivor = controller.load(str(tiny_models["opt"]), name="survivor", **TINY_ARGS)
    doomed = controller.load(str(tiny_models["qwen3"]), name="doomed", **TINY_ARGS)
    (victim_pid,) = doomed.worker_pids
    client = controller.engine_client("doomed")

    async def stream_until_error() -> tuple[int, float]:
        """Streams long requests, kills the worker after the first tokens,
        and returns how many requests failed and how fast."""
        params = SamplingParams(temperature=0, max_tokens=230, ignore_eos=True)

        async def one(started: asyncio.Event):
            async for _ in client.generate(PROMPT, params, request_id=uuid.uuid4().hex):
                started.set()

        events = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(one(e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), 10
        )
        failed = sum(isinstance(r, Exception) for r in results)
        return failed, time.monotonic() - killed_at

    failed, elapsed = loop.run(stream_until_error())
    assert failed == 3
    assert elapsed < 10
    deadline = time.monotonic() + 30
    while controller.list_models()[-1]["state"] != "failed":
        assert time.monotonic() < deadline, controller.list_models()
        time.sleep(0.2)
    states = {m["name"]: m["state"] for m in controller.list_models()}
    assert states == {"survivor": "ready", "doomed": "failed"}
    with pytest.raises(Exception):  # noqa: B017 - the engine is dead
        greedy("doomed", PROMPT)
    assert greedy("survivor", PROMPT) == hf_greedy(tiny_models["opt"], PROMPT, 16)
    assert controller.pool.wait_until_refilled(timeout=120)
    controller.unload("doomed")
    assert greedy("survivor", PROMPT) == hf_greedy(tiny_models["opt"], PROMPT, 16)
    controller.unload("survivor")
    assert controller.pool.wait_until_idle(timeout=120)
    assert victim_pid not in {w["pid"] for w in controller.list_workers()}
    assert survivor.worker_pids[0] in {w["pid"] for w in controller.list_workers()}


def test_tensor_parallel_engine_loses_every_rank(controller, tiny_models):
    """Both ranks of a TP=2 engine killed: the model fails, both are
    replaced, and its group leaves nothing in /dev/shm (on CPU its ranks,
    dead, cannot remove their all-reduce files; the pool does)."""
    files_before = cpushm_files()
    loaded = controller.load(
        str(tiny_models["llama"]), "tp2", **TINY_ARGS, tensor_parallel_size=2
    )
    assert cpushm_files() > files_before
    for pid in loaded.worker_pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while set(loaded.worker_pids) & {w["pid"] for w in controller.list_workers()}:
        assert time.monotonic() < deadline, "deaths not noticed"
        time.sleep(0.2)
    assert controller.pool.wait_until_refilled(timeout=120)
    while controller.list_models()[0]["state"] != "failed":
        assert time.monotonic() < deadline, controller.list_models()
        time.sleep(0.2)
    assert cpushm_files() == files_before
    controller.unload("tp2")
    assert controller.pool.wait_until_idle(timeout=120)
