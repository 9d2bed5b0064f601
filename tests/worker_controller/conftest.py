# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: one warm pool for the whole session, tiny real models.

Everything runs the real vLLM engine on CPU. The pool is started once
(session scope), because starting it is exactly the cost the product
removes; each test must leave it with no model loaded and every process
idle, which an autouse fixture checks.
"""

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

# Before vLLM is imported: small KV caches, no OpenMP binding on 2 cores,
# and (where a test compiles) Dynamo with the eager backend, not Inductor.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

import psutil
import pytest

from tests.worker_controller.models import KINDS, build_model
from vllm import SamplingParams
from vllm.worker_controller import WorkerController

# Engine args for the tiny models: fp32 so greedy tokens match HF exactly.
TINY_ARGS: dict[str, Any] = dict(
    dtype="float32",
    max_model_len=256,
    enforce_eager=True,
    max_num_seqs=4,
    max_num_batched_tokens=256,
)
POOL_WORKERS = 2


def cpushm_files() -> set[str]:
    """The files of vLLM-CPU's shared-memory all-reduce (TP >= 2)."""
    return {p.name for p in Path("/dev/shm").glob("*-cpushm_*")}


class LoopThread:
    """One event loop for the session: an AsyncLLM binds to the loop that
    first uses it, and the controller's API is synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Coroutine, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def agreedy(client, prompt: str, max_tokens: int = 16) -> list[int]:
    """Greedy token ids for ``prompt`` through vLLM's own AsyncLLM."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    final = None
    async for out in client.generate(prompt, params, request_id=uuid.uuid4().hex):
        final = out
    assert final is not None and final.finished
    return list(final.outputs[0].token_ids)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build_model(kind, root) for kind in KINDS}


@pytest.fixture(scope="session")
def loop() -> LoopThread:
    return LoopThread()


@pytest.fixture(scope="session")
def controller() -> Iterator[WorkerController]:
    # With a host-RAM weight cache, as on GPU: most loads after the first
    # of each checkpoint read their weights from it.
    with WorkerController(num_workers=POOL_WORKERS, weight_cache_bytes=256 << 20) as wc:
        yield wc


@pytest.fixture
def greedy(loop: LoopThread, controller: WorkerController):
    """``greedy(name, prompt, max_tokens)`` -> token ids, synchronously."""

    def run(name: str, prompt: str, max_tokens: int = 16) -> list[int]:
        return loop.run(agreedy(controller.engine_client(name), prompt, max_tokens))

    return run


def child_pids() -> set[int]:
    """Live descendants of the test process, minus multiprocessing's
    resource tracker (started once by the spawn context, not by us)."""
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                pids.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def pool_pids(controller: WorkerController) -> set[int]:
    return {w["pid"] for w in controller.list_workers()}


@pytest.fixture(autouse=True)
def pool_left_clean(request):
    """After each test: no model loaded, every process idle, no strays."""
    yield
    if "controller" not in request.fixturenames:
        return
    controller: WorkerController = request.getfixturevalue("controller")
    leftovers = [m["name"] for m in controller.list_models()]
    for name in leftovers:
        controller.unload(name)
    assert controller.pool.wait_until_idle(timeout=120), controller.list_workers()
    assert not leftovers, f"test left models loaded: {leftovers}"
    assert child_pids() == pool_pids(controller)
