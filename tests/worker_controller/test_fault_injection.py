# SPDX-License-Identifier: Apache-2.0
"""The controller's error paths, each with a fault injected: pooled
processes killed or stalled in a load phase, during unload, and an engine
that dies while its client attaches. After each, the pool is whole again
and serves; a dead process is replaced, a stuck one is not handed out."""

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.worker_controller.conftest import TINY_ARGS, pool_pids
from tests.worker_controller.models import hf_greedy
from vllm.worker_controller import controller as controller_module
from vllm.worker_controller.errors import ModelLoadError
from vllm.worker_controller.pool import PooledProcess, ProcessKind

PROMPT = "Hello, my name is"


def processes(controller, kind: ProcessKind) -> list[PooledProcess]:
    return [p for p in controller.pool.processes() if p.kind == kind]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def process_in_state(controller, kind: ProcessKind, state: str):
    """A leased process of ``kind`` whose own state is ``state``, or None."""
    procs = [p for p in processes(controller, kind) if p.state.value == "leased"]
    for p, health in zip(procs, controller.proxy.health(procs, 1.0), strict=True):
        if health is not None and health["state"] == state:
            return p
    return None


def load_async(controller, path: Path, name: str, **extra) -> Future:
    return ThreadPoolExecutor(1).submit(
        controller.load, str(path), name=name, **{**TINY_ARGS, **extra}
    )


def assert_pool_whole_and_serving(controller, tiny_models, greedy) -> None:
    assert controller.pool.wait_until_idle(timeout=180), controller.list_workers()
    assert controller.list_models() == []
    controller.load(str(tiny_models["llama"]), name="after", **TINY_ARGS)
    assert greedy("after", PROMPT) == hf_greedy(tiny_models["llama"], PROMPT, 16)
    controller.unload("after")


@contextmanager
def short_timeouts(controller, load_s: float = 900, release_s: float = 120):
    """The controller's timeouts, shortened for a stall."""
    saved = controller.proxy.load_timeout_s, controller.proxy.release_timeout_s
    controller.proxy.load_timeout_s, controller.proxy.release_timeout_s = (
        load_s,
        release_s,
    )
    try:
        yield
    finally:
        controller.proxy.load_timeout_s, controller.proxy.release_timeout_s = saved


@pytest.mark.parametrize(
    "kind, state, phase",
    [
        (ProcessKind.WORKER, "loading", "weights"),
        (ProcessKind.ENGINE_HOST, "starting", "engine_init"),
        (ProcessKind.WORKER, "serving", "engine_init"),
    ],
    ids=["worker-in-weights", "host-in-engine-init", "worker-in-engine-init"],
)
def test_process_killed_during_load(
    controller, tiny_models, greedy, kind, state, phase
):
    pids = pool_pids(controller)
    started = time.monotonic()
    future = load_async(controller, tiny_models["qwen3"], "victim")
    if kind == ProcessKind.WORKER and state == "serving":
        # The worker has loaded; the engine host is profiling through it.
        wait_for(
            lambda: process_in_state(controller, ProcessKind.ENGINE_HOST, "starting"),
            60,
            "the engine to start",
        )
    victim = wait_for(
        lambda: process_in_state(controller, kind, state), 60, f"{kind.value} {state}"
    )
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(ModelLoadError) as e:
        future.result(120)
    assert e.value.phase == phase, e.value
    assert time.monotonic() - started < 60
    assert_pool_whole_and_serving(controller, tiny_models, greedy)
    assert victim.pid not in pool_pids(controller)
    assert len(pool_pids(controller)) == len(pids)


def test_stalled_worker_is_not_handed_out_again(controller, tiny_models, greedy):
    """A worker that never answers its load (SIGSTOP) times the load out and
    is replaced, not returned to the pool still loading."""
    with short_timeouts(controller, load_s=8):
        future = load_async(controller, tiny_models["qwen3"], "stalled")
        victim = wait_for(
            lambda: process_in_state(controller, ProcessKind.WORKER, "loading"),
            60,
            "a loading worker",
        )
        os.kill(victim.pid, signal.SIGSTOP)
        with pytest.raises(ModelLoadError, match="did not finish loading") as e:
            future.result(120)
    assert e.value.phase == "weights"
    assert_pool_whole_and_serving(controller, tiny_models, greedy)
    assert victim.pid not in pool_pids(controller)


def test_failed_rank_fails_tensor_parallel_load_fast(controller, tiny_models, greedy):
    """One rank of two dies while loading: the load fails within seconds,
    not after the 900 s load timeout, and both ranks' slots are whole."""
    started = time.monotonic()
    future = load_async(controller, tiny_models["llama"], "tp", tensor_parallel_size=2)
    victim = wait_for(
        lambda: process_in_state(controller, ProcessKind.WORKER, "loading"),
        60,
        "a loading rank",
    )
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(ModelLoadError):
        future.result(120)
    assert time.monotonic() - started < 60
    assert_pool_whole_and_serving(controller, tiny_models, greedy)


def test_engine_dies_while_client_attaches(
    controller, tiny_models, greedy, monkeypatch
):
    """The engine host dies as the AsyncLLM attaches (right after it did):
    the load fails (phase ``client``) instead of marking the model READY."""
    real = controller_module.AsyncLLM.from_vllm_config
    killed: list[int] = []

    def attach_then_kill_host(*args, **kwargs):
        client = real(*args, **kwargs)
        (host,) = [
            p
            for p in processes(controller, ProcessKind.ENGINE_HOST)
            if p.model == "doomed"
        ]
        os.kill(host.pid, signal.SIGKILL)
        wait_for(lambda: host.serving.done(), 10, "the host's death noticed")
        killed.append(host.pid)
        return client

    monkeypatch.setattr(
        controller_module.AsyncLLM, "from_vllm_config", attach_then_kill_host
    )
    with pytest.raises(ModelLoadError) as e:
        controller.load(str(tiny_models["qwen3"]), name="doomed", **TINY_ARGS)
    monkeypatch.undo()
    assert e.value.phase == "client", e.value
    assert "died: SIGKILL" in str(e.value)
    assert_pool_whole_and_serving(controller, tiny_models, greedy)
    assert killed[0] not in pool_pids(controller)


def test_worker_killed_during_unload(controller, tiny_models, greedy):
    loaded = controller.load(str(tiny_models["qwen3"]), name="m", **TINY_ARGS)
    (pid,) = loaded.worker_pids
    timer = threading.Timer(0.05, os.kill, (pid, signal.SIGKILL))
    timer.start()
    controller.unload("m")
    timer.join()
    assert_pool_whole_and_serving(controller, tiny_models, greedy)
    assert pid not in pool_pids(controller)


def test_stalled_engine_host_is_replaced_on_unload(controller, tiny_models, greedy):
    """An engine host that does not stop its engine in time is replaced,
    not handed back as clean."""
    loaded = controller.load(str(tiny_models["qwen3"]), name="m", **TINY_ARGS)
    host_pid = loaded.engine_host_pid
    os.kill(host_pid, signal.SIGSTOP)
    with short_timeouts(controller, release_s=3):
        controller.unload("m")
    assert_pool_whole_and_serving(controller, tiny_models, greedy)
    assert host_pid not in pool_pids(controller)


def test_death_reason_names_process_and_signal(controller, tiny_models):
    loaded = controller.load(str(tiny_models["qwen3"]), name="m", **TINY_ARGS)
    (pid,) = loaded.worker_pids
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: controller.list_models()[0]["state"] == "failed", 30, "failed state"
    )
    (model,) = controller.list_models()
    assert f"(pid {pid}) died: SIGKILL" in model["error"], model
    assert controller.failure("m") == model["error"]
    controller.unload("m")
    assert controller.pool.wait_until_idle(timeout=180)


def test_tensor_parallel_ranks_get_distinct_devices():
    """On GPU, the ranks of one engine never share a device. There is no
    GPU here: pooled processes are stood in for by records with device
    indices (the lease logic under test is pure)."""
    from vllm.worker_controller.pool import _pick

    def worker(index: int, device: int) -> PooledProcess:
        return PooledProcess(ProcessKind.WORKER, index, device, proc=None)  # type: ignore[arg-type]

    idle = [worker(0, 0), worker(1, 0), worker(2, 1)]
    assert [p.index for p in _pick(idle, 2, None)] == [0, 2]
    assert _pick(idle[:2], 2, None) is None  # two ranks, one GPU: refused
