# SPDX-License-Identifier: Apache-2.0
"""GPU lifecycle check: vLLM defaults (torch.compile, CUDA graphs) in place.

Two random-weight bf16 models (Qwen3-0.6B shape, small Llama), each one's
greedy tokens from a fresh stock ``LLM`` (which also warms the compile
cache), then load / generate / park / unpark / generate / unload of the two
alternately ``--cycles`` times in the same pooled processes: tokens against
stock, memory against the worker's boot baseline. The last cycle unloads
while parked (the worker is replaced); one more load checks the replacement.
"""

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gpu_common as common

from vllm.inputs import TokensPrompt
from vllm.worker_controller import WorkerController

PROMPT_IDS = [1, 345, 2001, 77, 9000, 1234, 42, 4096]
MAX_TOKENS = 32


def gpu_processes() -> str:
    """Which processes hold device memory, as ``pid, MiB`` lines (the
    engine hosts must not)."""
    rows = common.nvidia_smi("compute-apps", "pid", "used_memory")
    return "\n".join(", ".join(row) for row in rows)


def device_mib(pid: int) -> int | None:
    """Device memory of one process as the driver sees it (MiB)."""
    for line in gpu_processes().splitlines():
        p, used = line.split(", ")
        if int(p) == pid:
            return int(used)
    return None


def park_cycle(
    wc: WorkerController, run: Callable, generate: Callable, name: str, pid: int
) -> dict[str, Any]:
    """Park, unpark and generate again: timings and the worker's memory."""
    awake_mib = device_mib(pid)
    park_s = run(wc.park(name))["park"]
    parked_mib = device_mib(pid)
    unpark_s = run(wc.unpark(name))["unpark"]
    tokens, first_s = generate(name)
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
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="*", default=["qwen3-0.6b", "llama-small"])
    parser.add_argument("--engine-args", type=json.loads, default={}, help="JSON")
    parser.add_argument("--no-stock", action="store_true", help="no stock tokens")
    parser.add_argument("--no-park", action="store_true")
    args = parser.parse_args()
    base = {"skip_tokenizer_init": True, "max_model_len": 2048}
    stock_args = base | args.engine_args
    # Parking is vLLM's sleep mode, which must be on from the load.
    pool_args = base | {"enable_sleep_mode": True} | args.engine_args
    models = common.ensure_models(args.models_dir, args.models)
    reference: dict[str, list[int] | None] = dict.fromkeys(models)
    for name, path in [] if args.no_stock else models.items():
        log_path = args.out.with_name(f"{args.out.stem}-stock-{name}.log")
        kw = {"prompt": PROMPT_IDS, "max_tokens": MAX_TOKENS}
        proc, run, _ = common.run_stock_llm(path, stock_args, log_path, **kw)
        common.log(f"stock {name}: {time.monotonic() - proc.started:.1f} s")
        reference[name] = run["token_ids"]
    report: dict[str, Any] = {
        "gpu": common.machine_metadata()["gpu"],
        "engine_args": pool_args,
        "cycles": [],
    }
    boot = time.perf_counter()
    # One pooled worker per rank of the engine.
    num_workers = pool_args.get("tensor_parallel_size", 1)
    with WorkerController(num_workers=num_workers, park_memory_bytes=64 << 30) as wc:
        report["pool_boot_s"] = time.perf_counter() - boot
        report["workers"] = wc.list_workers()
        report["gpu_processes_at_boot"] = gpu_processes()
        run = asyncio.new_event_loop().run_until_complete

        def generate(name: str) -> tuple[list[int], float]:
            prompt = TokensPrompt(prompt_token_ids=PROMPT_IDS)
            return run(common.generate_ids(wc.engine_client(name), prompt, MAX_TOKENS))

        for cycle in range(args.cycles):
            name = list(models)[cycle % len(models)]
            loaded = wc.load(str(models[name]), name=name, **pool_args)
            tokens, first_s = generate(name)
            pid = loaded.worker_pids[0]
            parking: dict[str, Any] = {"tokens_after_unpark": reference[name]}
            if not args.no_park:
                parking = park_cycle(wc, run, generate, name, pid)
            unpark_tokens = parking.pop("tokens_after_unpark")
            last = cycle == args.cycles - 1 and not args.no_park
            if last:  # unloaded while parked: the worker is replaced
                run(wc.park(name))
            # One report per rank; the first rank's stands for the cycle.
            ranks = wc.unload(name).workers
            # Let the loop run the client's cancelled output handler to its end.
            run(asyncio.sleep(0))
            record = {
                "cycle": cycle,
                "model": name,
                "load_s": loaded.timings_s,
                "first_output_s": first_s,
                "tokens_match_stock": tokens == reference[name],
                "tokens_after_unpark_match_stock": unpark_tokens == reference[name],
                **parking,
                "unloaded_parked": last,
                "growth_bytes": ranks[0].get("growth_bytes"),  # None: replaced
                "driver_growth_bytes": ranks[0].get("driver_growth_bytes"),
                # The driver's view: also what lives outside torch's allocator.
                "worker_mib_after_unload": device_mib(pid),
                "recycled": ranks[0]["recycled"],
                "worker_pid": ranks[0]["pid"],
                "ranks": ranks,
            }
            report["cycles"].append(record)
            print(json.dumps(record), flush=True)
            common.write_json(args.out, report)
        if not args.no_park:  # the last unload replaced the worker: use it
            name = list(models)[0]
            loaded = wc.load(str(models[name]), name=name, **pool_args)
            tokens, _ = generate(name)
            report["after_replacement"] = {
                "worker_pid": loaded.worker_pids[0],
                "load_s": loaded.timings_s,
                "tokens_match_stock": tokens == reference[name],
            }
            wc.unload(name)
        report["gpu_processes_at_end"] = gpu_processes()
        report["workers_at_end"] = wc.list_workers()
    common.write_json(args.out, report)


if __name__ == "__main__":
    main()
