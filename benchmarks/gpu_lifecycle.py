# SPDX-License-Identifier: Apache-2.0
"""GPU lifecycle check: vLLM defaults (torch.compile, CUDA graphs) in place.

On one GPU: two random-weight bf16 models (a Qwen3-0.6B shape and a small
Llama shape; no hub), each one's greedy tokens from a fresh stock ``LLM``
in a subprocess (which also warms the compile cache, as a real deployment's
would be), then load / generate / park / unpark / generate / unload of the
two models alternately ``--cycles`` times in the same pooled processes,
checking tokens against stock (before and after unpark) and memory against
the worker's boot baseline (the drift over all cycles). The last cycle
unloads its model while parked, which replaces the worker; one more load
checks the replacement. Writes one JSON file with every cycle's figures.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.worker_controller import WorkerController

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    ensure_models,
    machine_metadata,
    stock_llm_cmd,
    stock_llm_lines,
)

PROMPT_IDS = [1, 345, 2001, 77, 9000, 1234, 42, 4096]
MAX_TOKENS = 32
ENGINE_ARGS: dict[str, Any] = {"skip_tokenizer_init": True, "max_model_len": 2048}
# Parking is vLLM's sleep mode, which must be on from the load.
POOL_ARGS: dict[str, Any] = {**ENGINE_ARGS, "enable_sleep_mode": True}


def stock_tokens(model: Path) -> list[int]:
    start = time.perf_counter()
    cmd = stock_llm_cmd(model, ENGINE_ARGS, PROMPT_IDS, MAX_TOKENS)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError("stock LLM failed")
    for x in (out.stdout + out.stderr).splitlines():
        if any(k in x for k in ("cache directory", "took", "Graph capturing")):
            print("  stock:", x[-200:], flush=True)
    print(f"stock {model.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return stock_llm_lines(out.stdout, "STOCK_RESULT")[0]["token_ids"]


async def generate(client: Any) -> tuple[list[int], float]:
    start = time.perf_counter()
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    final = None
    prompt = TokensPrompt(prompt_token_ids=PROMPT_IDS)
    async for out in client.generate(prompt, params, str(time.time())):
        final = out
    return list(final.outputs[0].token_ids), time.perf_counter() - start


def gpu_processes() -> str:
    """Which processes hold device memory (engine hosts must not)."""
    query = ["--query-compute-apps=pid,used_memory", "--format=csv"]
    try:
        return subprocess.run(
            ["nvidia-smi", *query], capture_output=True, text=True
        ).stdout
    except OSError:
        return ""


def device_mib(pid: int) -> int | None:
    """Device memory of one process as the driver sees it (MiB)."""
    for line in gpu_processes().splitlines()[1:]:
        p, used = line.split(",")
        if int(p) == pid:
            return int(used.split()[0])
    return None


def park_cycle(
    loop: asyncio.AbstractEventLoop, controller: WorkerController, name: str, pid: int
) -> dict[str, Any]:
    """Park, unpark and generate again: timings and the worker's memory."""
    awake_mib = device_mib(pid)
    park_s = loop.run_until_complete(controller.park(name))["park"]
    parked_mib = device_mib(pid)
    unpark_s = loop.run_until_complete(controller.unpark(name))["unpark"]
    tokens, first_s = loop.run_until_complete(generate(controller.engine_client(name)))
    return {
        "park_s": park_s,
        "unpark_s": unpark_s,
        "first_output_after_unpark_s": first_s,
        "worker_mib_awake": awake_mib,
        "worker_mib_parked": parked_mib,
        "tokens_after_unpark": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/wc-models"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="*", default=["qwen3-0.6b", "llama-small"])
    parser.add_argument(
        "--engine-args", type=json.loads, default={}, help="JSON, both sides"
    )
    parser.add_argument(
        "--no-stock", action="store_true", help="skip stock reference tokens"
    )
    parser.add_argument("--no-park", action="store_true")
    args = parser.parse_args()
    ENGINE_ARGS.update(args.engine_args)
    POOL_ARGS.update(args.engine_args)
    models = ensure_models(args.models_dir, args.models)
    reference: dict[str, list[int] | None] = dict.fromkeys(models)
    if not args.no_stock:
        reference = {name: stock_tokens(path) for name, path in models.items()}
    report: dict[str, Any] = {
        "gpu": machine_metadata()["gpu"],
        "engine_args": POOL_ARGS,
        "cycles": [],
    }
    loop = asyncio.new_event_loop()
    boot = time.perf_counter()
    # One pooled worker per rank of the engine.
    num_workers = POOL_ARGS.get("tensor_parallel_size", 1)
    with WorkerController(
        num_workers=num_workers, park_memory_bytes=64 << 30
    ) as controller:
        report["pool_boot_s"] = time.perf_counter() - boot
        report["workers"] = controller.list_workers()
        report["gpu_processes_at_boot"] = gpu_processes()
        for cycle in range(args.cycles):
            name = list(models)[cycle % len(models)]
            loaded = controller.load(str(models[name]), name=name, **POOL_ARGS)
            client = controller.engine_client(name)
            tokens, first_s = loop.run_until_complete(generate(client))
            pid = loaded.worker_pids[0]
            parking: dict[str, Any] = {"tokens_after_unpark": reference[name]}
            if not args.no_park:
                parking = park_cycle(loop, controller, name, pid)
            unpark_tokens = parking.pop("tokens_after_unpark")
            last = cycle == args.cycles - 1 and not args.no_park
            if last:  # unloaded while parked: the worker is replaced
                loop.run_until_complete(controller.park(name))
            # One report per rank; the first rank's stands for the cycle.
            ranks = controller.unload(name).workers
            worker = ranks[0]
            # Let the loop run the client's cancelled output handler to its end.
            loop.run_until_complete(asyncio.sleep(0))
            record = {
                "cycle": cycle,
                "model": name,
                "load_s": loaded.timings_s,
                "first_output_s": first_s,
                "tokens_match_stock": tokens == reference[name],
                "tokens_after_unpark_match_stock": unpark_tokens == reference[name],
                **parking,
                "unloaded_parked": last,
                "growth_bytes": worker.get("growth_bytes"),  # None: replaced
                "driver_growth_bytes": worker.get("driver_growth_bytes"),
                # The driver's view: also what lives outside torch's allocator.
                "worker_mib_after_unload": device_mib(pid),
                "recycled": worker["recycled"],
                "worker_pid": worker["pid"],
                "ranks": ranks,
            }
            report["cycles"].append(record)
            print(json.dumps(record), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
        if not args.no_park:  # the last unload replaced the worker: use it
            name = list(models)[0]
            loaded = controller.load(str(models[name]), name=name, **POOL_ARGS)
            client = controller.engine_client(name)
            tokens, _ = loop.run_until_complete(generate(client))
            report["after_replacement"] = {
                "worker_pid": loaded.worker_pids[0],
                "load_s": loaded.timings_s,
                "tokens_match_stock": tokens == reference[name],
            }
            controller.unload(name)
        report["gpu_processes_at_end"] = gpu_processes()
        report["workers_at_end"] = controller.list_workers()
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
