# SPDX-License-Identifier: Apache-2.0
"""Cold start of stock vLLM vs a load into the warm pool, on CPU.

Interleaved, N runs each, the demo model, same engine args and prompt:
``stock_llm`` (a fresh process: import vLLM, ``LLM(...)``, generate: what a
model switch costs today) and ``ctrl_load`` (``WorkerController.load`` into
a warm pool, first output through its ``AsyncLLM``; the pool's boot is
reported apart). Both must give the same greedy tokens. Writes
``benchmarks/results/cpu-startup-<date>.json`` and a table into
``docs/benchmarks.md``.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import gpu_common as common  # noqa: E402

from vllm.worker_controller import WorkerController  # noqa: E402
from vllm.worker_controller.demo_model import ensure_demo_model  # noqa: E402

ENGINE_ARGS = {"max_model_len": 512, "enforce_eager": True}


def run_warm(
    controller: WorkerController, loop: asyncio.AbstractEventLoop, model: str
) -> dict[str, Any]:
    start = time.perf_counter()
    loaded = controller.load(model, name="bench", **ENGINE_ARGS)
    ready = time.perf_counter()
    client = controller.engine_client("bench")
    tokens, _ = loop.run_until_complete(
        common.generate_ids(client, common.PROMPT, common.MAX_TOKENS)
    )
    done = time.perf_counter()
    controller.unload("bench")
    # Let the loop run the client's cancelled output handler to its end.
    loop.run_until_complete(asyncio.sleep(0))
    phases = {k: v for k, v in loaded.timings_s.items() if k != "total"}
    return {
        "total_s": done - start,
        "phases_s": phases | {"first_output": done - ready},
        "token_ids": tokens,
        "worker_pids": loaded.worker_pids,
    }


def record(scenario: str, model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_s"] for r in runs]
    phases = {
        k: statistics.median(r["phases_s"][k] for r in runs)
        for k in runs[0]["phases_s"]
    }
    return {
        "scenario": scenario,
        "model": model,
        "device": "cpu",
        "runs_s": totals,
        **common.summary(totals),
        "phases_median_s": phases,
        "runs": runs,
    }


def markdown(path: Path, data: dict[str, Any]) -> str:
    """The ``cpu-startup`` section from the results file ``path``."""
    info, (stock, warm) = data["machine"], data["records"]
    rows = []
    for r in data["records"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_median_s"].items())
        runs = " / ".join(f"{x:.2f}" for x in r["runs_s"])
        rows.append(
            f"| {r['scenario']} | {r['model']} | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f} | {r['max_s']:.2f} | {runs} | {phases} |"
        )
    pool = f"{data['pool_boot_s']:.1f} s ({data['num_workers']} worker + engine host)"
    return f"""## CPU: stock cold start vs warm-pool load

Produced by `make bench-cpu` (`benchmarks/bench_cpu_startup.py`); raw records in
`benchmarks/results/{path.name}`. Machine: {info["cpu"]}, {info["cores"]} cores,
{info["memory_gib"]} GiB; Python {info["python"]}, vLLM {info["vllm"]}, torch
{info["torch"]}; {info["date"]}.

Method: one run, interleaved (stock, warm, stock, warm, ...), {len(stock["runs"])} runs
each, same model, engine args and prompt (greedy, {common.MAX_TOKENS} tokens; both
sides produced identical tokens). `stock_llm` = fresh Python process: import vLLM,
`LLM(...)` (which spawns its EngineCore and worker processes), first output.
`ctrl_load` = `WorkerController.load()` into an already-warm pool, then the
first output through the model's `AsyncLLM`; the pool itself booted once in
{pool} before the first run.

| scenario | model | median s | min s | max s | runs s | phases (median s) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Speed-up of the median (stock / warm):
- {stock["model"]}: {stock["median_s"] / warm["median_s"]:.1f}x

Reading the phases: on the CPU backend vLLM 0.26 spends most of `LLM(...)`
in its first-ever profile run (`warming_up_model`, JIT of the CPU kernels);
a pooled worker pays that once per process, so the first warm load is
slower than the following ones (see `runs s`). GPU figures are measured
separately on an H100/H200 (issue #4).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=common.HERE / "results")
    parser.add_argument(
        "--doc", type=Path, default=common.REPO / "docs" / "benchmarks.md"
    )
    args = parser.parse_args()
    model = str(ensure_demo_model())
    logs = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    info = common.machine_metadata()
    boot_start = time.perf_counter()
    with WorkerController(num_workers=1) as controller:
        boot = {"pool_boot_s": time.perf_counter() - boot_start, "num_workers": 1}
        loop = asyncio.new_event_loop()
        stock, warm = [], []
        for i in range(args.runs):
            log_path = logs / f"stock-{i}.log"
            stock.append(common.run_stock_llm(model, ENGINE_ARGS, log_path)[1])
            warm.append(run_warm(controller, loop, model))
            assert stock[-1]["token_ids"] == warm[-1]["token_ids"], (stock, warm)
            s, w = stock[-1]["total_s"], warm[-1]["total_s"]
            print(f"run {i + 1}: stock {s:.2f} s, warm {w:.2f} s", flush=True)
    name = Path(model).name
    records = [record("stock_llm", name, stock), record("ctrl_load", name, warm)]
    out = args.results_dir / f"cpu-startup-{info['date']}.json"
    data = {"machine": info, **boot, "records": records}
    common.write_json(out, data)
    common.replace_section(args.doc, "cpu-startup", markdown(out, data))
    print(f"wrote {out} and {args.doc}")


if __name__ == "__main__":
    main()
