# SPDX-License-Identifier: Apache-2.0
"""Cold start of stock vLLM vs a load into the warm pool, on CPU.

One run, interleaved (stock, warm, stock, warm, ...), N runs each, same
model, same engine args, same prompt:

- ``stock_llm``: a fresh process imports vLLM and builds ``LLM(...)``
  (EngineCore and worker processes included), then generates: what every
  model switch costs today;
- ``ctrl_load``: ``WorkerController.load`` into an already-warm pool, then
  the first output through the model's ``AsyncLLM``; the pool's own boot is
  paid once and reported separately.

Both sides must produce the same greedy tokens. Writes the raw records to
``benchmarks/results/cpu-startup-<date>.json`` and a table into
``docs/benchmarks.md``.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import torch  # noqa: E402

import vllm  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.worker_controller import WorkerController  # noqa: E402
from vllm.worker_controller.demo_model import ensure_demo_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    HERE,
    MAX_TOKENS,
    PROMPT,
    REPO,
    cpu_name,
    replace_section,
    stock_llm_cmd,
    stock_llm_lines,
    summary,
)


def run_stock(model: str, engine_args: dict[str, Any]) -> dict[str, Any]:
    launched = time.time()
    cmd = stock_llm_cmd(model, engine_args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = stock_llm_lines(proc.stdout, "STOCK_RESULT")[0]
    return {
        "total_s": r["first_output"] - launched,
        "phases_s": {
            "import": r["imported"] - launched,
            "llm_init": r["ready"] - r["imported"],
            "first_output": r["first_output"] - r["ready"],
        },
        "token_ids": r["token_ids"],
    }


async def first_output(client: Any) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    final = None
    async for out in client.generate(PROMPT, params, request_id=str(time.time())):
        final = out
    return list(final.outputs[0].token_ids)


def run_warm(
    controller: WorkerController,
    loop: asyncio.AbstractEventLoop,
    model: str,
    engine_args: dict[str, Any],
) -> dict[str, Any]:
    start = time.perf_counter()
    loaded = controller.load(model, name="bench", **engine_args)
    ready = time.perf_counter()
    tokens = loop.run_until_complete(first_output(controller.engine_client("bench")))
    done = time.perf_counter()
    controller.unload("bench")
    # Let the loop run the client's cancelled output handler to its end.
    loop.run_until_complete(asyncio.sleep(0))
    phases = {k: v for k, v in loaded.timings_s.items() if k != "total"}
    phases["first_output"] = done - ready
    return {
        "total_s": done - start,
        "phases_s": phases,
        "token_ids": tokens,
        "worker_pids": loaded.worker_pids,
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def write_markdown(doc: Path, path: Path, data: dict[str, Any]) -> None:
    """The ``cpu-startup`` section of ``doc`` from the results file ``path``
    (``data``: its contents)."""
    info, records = data["machine"], data["records"]
    rows = []
    for r in records:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_median_s"].items())
        rows.append(
            f"| {r['scenario']} | {r['model']} | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f} | {r['max_s']:.2f} | "
            f"{' / '.join(f'{x:.2f}' for x in r['runs_s'])} | {phases} |"
        )
    runs = len(records[0]["runs_s"])
    pool = f"{data['pool_boot_s']:.1f} s ({data['num_workers']} worker + engine host)"
    medians = {(r["model"], r["scenario"]): r["median_s"] for r in records}
    speedups = {
        m: medians[m, "stock_llm"] / medians[m, "ctrl_load"]
        for m in {r["model"] for r in records}
    }
    text = f"""## CPU: stock cold start vs warm-pool load

Produced by `make bench-cpu` (`benchmarks/bench_cpu_startup.py`); raw records in
`benchmarks/results/{path.name}`. Machine: {info["cpu"]}, {info["cores"]} cores,
{info["memory_gib"]} GiB; Python {info["python"]}, vLLM {info["vllm"]}, torch
{info["torch"]}; {info["date"]}.

Method: one run, interleaved (stock, warm, stock, warm, ...), {runs} runs
each, same model, engine args and prompt (greedy, {MAX_TOKENS} tokens; both
sides produced identical tokens). `stock_llm` = fresh Python process: import vLLM,
`LLM(...)` (which spawns its EngineCore and worker processes), first output.
`ctrl_load` = `WorkerController.load()` into an already-warm pool, then the
first output through the model's `AsyncLLM`; the pool itself booted once in
{pool} before the first run.

| scenario | model | median s | min s | max s | runs s | phases (median s) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Speed-up of the median (stock / warm):
{chr(10).join(f"- {m}: {s:.1f}x" for m, s in sorted(speedups.items()))}

Reading the phases: on the CPU backend vLLM 0.26 spends most of `LLM(...)`
in its first-ever profile run (`warming_up_model`, JIT of the CPU kernels);
a pooled worker pays that once per process, so the first warm load is
slower than the following ones (see `runs s`). GPU figures are measured
separately on an H100/H200 (issue #4).
"""
    replace_section(doc, "cpu-startup", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", action="append", help="model path(s)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    models = args.model or [str(ensure_demo_model())]
    engine_args = {"max_model_len": 512, "enforce_eager": True}
    info = machine()
    boot_start = time.perf_counter()
    with WorkerController(num_workers=1) as controller:
        boot = {"pool_boot_s": time.perf_counter() - boot_start, "num_workers": 1}
        records = []
        loop = asyncio.new_event_loop()
        for model in models:
            stock, warm = [], []
            for i in range(args.runs):
                stock.append(run_stock(model, engine_args))
                warm.append(run_warm(controller, loop, model, engine_args))
                assert stock[-1]["token_ids"] == warm[-1]["token_ids"], (stock, warm)
                print(
                    f"{Path(model).name} run {i + 1}: stock "
                    f"{stock[-1]['total_s']:.2f} s, warm {warm[-1]['total_s']:.2f} s",
                    flush=True,
                )
            for scenario, runs in (("stock_llm", stock), ("ctrl_load", warm)):
                totals = [r["total_s"] for r in runs]
                records.append(
                    {
                        "scenario": scenario,
                        "model": Path(model).name,
                        "device": "cpu",
                        "runs_s": totals,
                        **summary(totals),
                        "phases_median_s": {
                            k: statistics.median(r["phases_s"][k] for r in runs)
                            for k in runs[0]["phases_s"]
                        },
                        "runs": runs,
                    }
                )
    out = args.results_dir / f"cpu-startup-{info['date']}.json"
    data = {"machine": info, **boot, "records": records}
    out.write_text(json.dumps(data, indent=2))
    write_markdown(args.doc, out, data)
    print(f"wrote {out} and {args.doc}")


if __name__ == "__main__":
    main()
