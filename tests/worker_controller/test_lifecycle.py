# SPDX-License-Identifier: Apache-2.0
"""Load, serve and unload real engines in the same warm processes."""

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file, save_file

import vllm.envs as envs
from tests.worker_controller.conftest import (
    POOL_WORKERS,
    TINY_ARGS,
    agreedy,
    child_pids,
    cpushm_files,
    pool_pids,
)
from tests.worker_controller.models import hf_greedy
from vllm.worker_controller.controller import ModelState

PROMPT = "The quick brown fox"


def worker_pids(controller) -> dict[int, int]:
    return {
        w["index"]: w["pid"] for w in controller.list_workers() if w["kind"] == "worker"
    }


def test_load_generate_unload_reload_same_process(controller, tiny_models, greedy):
    """(a) Two full cycles in one worker process; tokens equal HF's."""
    pids_before = pool_pids(controller)
    expected = hf_greedy(tiny_models["qwen3"], PROMPT, 16)
    results = []
    for _ in range(2):
        loaded = controller.load(str(tiny_models["qwen3"]), name="qwen", **TINY_ARGS)
        assert controller.list_models()[0]["state"] == ModelState.READY.value
        assert set(loaded.timings_s) >= {
            "config",
            "lease",
            "weights",
            "profile",
            "kv_cache",
            "engine_init",
            "client",
            "total",
        }
        assert greedy("qwen", PROMPT) == expected
        results.append(loaded)
        unloaded = controller.unload("qwen")
        assert [w["recycled"] for w in unloaded.workers] == [False]
        assert [w["leaked"] for w in unloaded.workers] == [[]]
        assert controller.list_models() == []
    assert results[0].worker_pids == results[1].worker_pids
    assert results[0].engine_host_pid == results[1].engine_host_pid
    assert pool_pids(controller) == pids_before  # no process started
    assert child_pids() == pids_before


def test_two_models_concurrent_requests(controller, tiny_models, loop):
    """(b) Qwen3- and OPT-shaped models on a 2-worker pool, concurrently."""
    prompts = ["Hello, my name is", "The future of AI is", PROMPT]
    expected = {
        kind: [hf_greedy(tiny_models[kind], p, 12) for p in prompts]
        for kind in ("qwen3", "opt")
    }
    a = controller.load(str(tiny_models["qwen3"]), name="qwen", **TINY_ARGS)
    b = controller.load(str(tiny_models["opt"]), name="opt", **TINY_ARGS)
    assert set(a.worker_pids).isdisjoint(b.worker_pids)

    async def both():
        clients = {
            "qwen3": controller.engine_client("qwen"),
            "opt": controller.engine_client("opt"),
        }
        coros = [
            agreedy(clients[kind], p, 12)
            for _ in range(2)
            for kind in ("qwen3", "opt")
            for p in prompts
        ]
        return await asyncio.gather(*coros)

    outputs = loop.run(both())
    want = [
        expected[kind][i]
        for _ in range(2)
        for kind in ("qwen3", "opt")
        for i in range(len(prompts))
    ]
    assert outputs == want
    controller.unload("qwen")
    controller.unload("opt")


def test_dynamic_allocation_reuses_freed_worker(controller, tiny_models, greedy):
    """(c) Load A and B; unload A; C lands on A's worker process."""
    a = controller.load(str(tiny_models["qwen3"]), name="a", **TINY_ARGS)
    b = controller.load(str(tiny_models["opt"]), name="b", **TINY_ARGS)
    controller.unload("a")
    c = controller.load(str(tiny_models["llama"]), name="c", **TINY_ARGS)
    assert c.worker_pids == a.worker_pids != b.worker_pids
    assert greedy("b", PROMPT) == hf_greedy(tiny_models["opt"], PROMPT, 16)
    assert greedy("c", PROMPT) == hf_greedy(tiny_models["llama"], PROMPT, 16)
    assert {m["name"] for m in controller.list_models()} == {"b", "c"}
    controller.unload("b")
    controller.unload("c")


def process_footprint(pid: int) -> dict[str, int]:
    """What a released worker must not keep from its last group: threads
    (gloo's, NCCL's), open fds, listening or connected TCP sockets (the
    group's store and pairs) and, on CPU, the all-reduce's shared memory."""
    proc = psutil.Process(pid)
    return {
        "threads": proc.num_threads(),
        "fds": proc.num_fds(),
        "tcp": len(proc.net_connections(kind="tcp")),
        "cpushm_maps": sum("-cpushm_" in m.path for m in proc.memory_maps(False)),
    }


def test_tensor_parallel_regrouping(controller, tiny_models, greedy, loop):
    """The same two pooled processes serve one TP=2 engine, then two TP=1
    engines at once, then TP=2 again: each lease builds its process group
    (gloo on CPU, NCCL on GPUs) and its release destroys it, leaving no
    thread, fd or socket behind; tokens equal HF's every time."""
    pids_before = pool_pids(controller)
    expected = {
        kind: hf_greedy(tiny_models[kind], PROMPT, 16) for kind in ("llama", "qwen3")
    }
    workers = sorted(worker_pids(controller).values())
    footprints = []
    files_before = cpushm_files()
    for layout in ("tp2", "tp1+tp1", "tp2"):
        if layout == "tp2":
            loaded = controller.load(
                str(tiny_models["llama"]), "tp2", **TINY_ARGS, tensor_parallel_size=2
            )
            assert sorted(loaded.worker_pids) == workers
            assert greedy("tp2", PROMPT) == expected["llama"]
            unloaded = [controller.unload("tp2")]
        else:
            one = controller.load(str(tiny_models["llama"]), "one", **TINY_ARGS)
            two = controller.load(str(tiny_models["qwen3"]), "two", **TINY_ARGS)
            assert sorted(one.worker_pids + two.worker_pids) == workers

            async def both() -> list[list[int]]:
                return await asyncio.gather(
                    agreedy(controller.engine_client("one"), PROMPT, 16),
                    agreedy(controller.engine_client("two"), PROMPT, 16),
                )

            assert loop.run(both()) == [expected["llama"], expected["qwen3"]]
            unloaded = [controller.unload("one"), controller.unload("two")]
        reports = [w for u in unloaded for w in u.workers]
        assert [w["recycled"] for w in reports] == [False] * len(workers), reports
        footprints.append({pid: process_footprint(pid) for pid in workers})
        assert cpushm_files() == files_before
        assert all(f["cpushm_maps"] == 0 for f in footprints[-1].values())
    # A process's first use in a role (rank 0 drives the engine's response
    # queue) may keep what it creates lazily: 2 fds seen on CPU. By the end
    # of the second layout each has had every role; the third adds nothing.
    assert footprints[2] == footprints[1], footprints
    assert pool_pids(controller) == pids_before


def test_churn_memory_stays_bounded(controller, tiny_models, greedy):
    """(d) 10 load/unload cycles of two models alternating on one worker."""
    pids_before = pool_pids(controller)
    # Fill all but one worker so every cycle lands on the same process.
    fillers = [
        controller.load(str(tiny_models["llama"]), name=f"filler{i}", **TINY_ARGS)
        for i in range(POOL_WORKERS - 1)
    ]
    expected = {
        kind: hf_greedy(tiny_models[kind], PROMPT, 8) for kind in ("qwen3", "opt")
    }
    growth, pids = [], set()
    for cycle in range(10):
        kind = ("qwen3", "opt")[cycle % 2]
        loaded = controller.load(str(tiny_models[kind]), name="churn", **TINY_ARGS)
        pids.update(loaded.worker_pids)
        assert greedy("churn", PROMPT, 8) == expected[kind]
        (report,) = controller.unload("churn").workers
        assert not report["recycled"] and report["leaked"] == []
        growth.append(report["growth_bytes"])
    assert len(pids) == 1
    tolerance = controller.settings.memory_tolerance_bytes
    assert max(growth) <= tolerance, growth
    # No upward drift: the last cycles stay within 32 MiB of the first ones.
    assert max(growth[-3:]) - min(growth[:3]) <= 32 << 20, growth
    for f in fillers:
        controller.unload(f.name)
    assert pool_pids(controller) == pids_before
    assert child_pids() == pids_before
    assert all(w["state"] == "idle" for w in controller.list_workers())


def test_compiled_model_is_fully_released(controller, tiny_models, greedy):
    """With torch.compile on (no enforce_eager), unload must drop Dynamo's
    process-global hooks too, or the model and its KV cache stay alive."""
    args = {**TINY_ARGS, "enforce_eager": False}
    for kind in ("llama", "qwen3"):
        controller.load(str(tiny_models[kind]), name="compiled", **args)
        assert greedy("compiled", PROMPT) == hf_greedy(tiny_models[kind], PROMPT, 16)
        (report,) = controller.unload("compiled").workers
        assert report["leaked"] == [] and not report["recycled"], report


def test_checkpoints_of_one_architecture_share_the_compiled_model(
    controller, tiny_models, greedy, tmp_path
):
    """Two checkpoints at two paths with one config.json: the second load
    uses the first one's AOT-compiled model (no new artifact), and answers
    with its own weights."""
    # A config no earlier run has compiled, so the first load must compile.
    eps = 1e-6 * (1 + uuid.uuid4().int % 10**6 / 10**6)
    paths = []
    for i, name in enumerate(("first", "second")):
        path = tmp_path / name
        shutil.copytree(tiny_models["llama"], path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "rms_norm_eps": eps}))
        weights = load_file(path / "model.safetensors")
        torch.manual_seed(i)
        save_file(
            {k: v + 0.02 * torch.randn_like(v) for k, v in weights.items()},
            path / "model.safetensors",
            metadata={"format": "pt"},
        )
        paths.append(path)
    artifacts = Path(envs.VLLM_CACHE_ROOT, "torch_compile_cache", "torch_aot_compile")
    args = {**TINY_ARGS, "enforce_eager": False}
    before = set(artifacts.glob("*"))
    created = []
    try:
        for path in paths:
            controller.load(str(path), name="compiled", **args)
            assert greedy("compiled", PROMPT) == hf_greedy(path, PROMPT, 16)
            controller.unload("compiled")
            created.append(set(artifacts.glob("*")) - before - set().union(*created))
    finally:  # artifacts of a one-off config are of no use to later runs
        for artifact in set(artifacts.glob("*")) - before:
            shutil.rmtree(artifact, ignore_errors=True)
    assert [len(c) for c in created] == [1, 0], created


def _resources(pids: list[int]) -> dict[str, int]:
    procs = [psutil.Process(pid) for pid in pids]
    return {
        "threads": sum(p.num_threads() for p in procs),
        "fds": sum(p.num_fds() for p in procs),
        "rss_mib": sum(p.memory_info().rss for p in procs) >> 20,
    }


def test_engine_host_and_controller_flat_over_20_cycles(
    controller, tiny_models, greedy, capsys
):
    """Threads, open fds and RSS of the engine hosts and of the controller,
    and /dev/shm entries, after 20 load / generate / unload cycles: flat
    (upstream's EngineCore socket threads are ended at each unload)."""
    hosts = [w["pid"] for w in controller.list_workers() if w["kind"] == "engine_host"]
    shm = Path("/dev/shm")
    rows = []
    for _ in range(20):
        controller.load(str(tiny_models["qwen3"]), name="cycle", **TINY_ARGS)
        assert greedy("cycle", PROMPT, 4)
        controller.unload("cycle")
        rows.append(
            {
                "host": _resources(hosts),
                "controller": _resources([os.getpid()]),
                "shm": len(list(shm.iterdir())),
            }
        )
    with capsys.disabled():
        print(f"\nafter cycle 2: {rows[1]}\nafter cycle 20: {rows[-1]}")
    assert pool_pids(controller) >= set(hosts)  # no host was replaced
    first, last = rows[1], rows[-1]
    for who in ("host", "controller"):
        assert last[who]["threads"] <= first[who]["threads"] + 2, rows
        assert last[who]["fds"] <= first[who]["fds"] + 8, rows
        assert last[who]["rss_mib"] <= first[who]["rss_mib"] + 150, rows
    assert last["shm"] <= first["shm"] + 2, rows
