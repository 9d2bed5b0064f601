# SPDX-License-Identifier: Apache-2.0
"""Serving parity: the same requests to stock ``vllm serve`` and to the
controller's OpenAI port, on the same GPU, one after the other.

The load is upstream's own benchmark client, ``vllm bench serve`` with its
seeded random dataset (mixed prompt lengths, 64-256 output tokens with
``ignore_eos`` so every request generates a fixed amount, greedy), streamed
so that TTFT and inter-token latency are measured per token; each side gets
exactly the same prompts and the same measurement code. Concurrency 1 shows
the per-request path's overhead, 32 the batched throughput.

Both servers get the same engine args. The controller runs with one pooled
worker and parking off (``--park-memory-gb 0``): parking turns on vLLM's
sleep mode, an engine arg that stock ``vllm serve`` does not have, so it is
left out to compare like with like (``--ctrl-park-memory-gb`` changes it).

Writes ``parity-<gpu>-<date>.json`` after every benchmark (a second call
resumes), with ``throughput_ratio`` and ``ttft_p50_ratio`` (controller /
stock) per concurrency; ``report_gpu.py`` renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    HERE,
    Deadline,
    Proc,
    bench_serve_cmd,
    clip,
    engine_flags,
    ensure_models,
    free_port,
    install_sigterm_handler,
    launch,
    log,
    machine_metadata,
    stream_completion,
    tail,
    vllm_cli,
    wait_gpu_free,
    wait_healthy,
    write_json,
)

SIDES = ("stock", "controller")
# Seconds, until a run of the same kind was seen; only for the deadline.
DEFAULT_ESTIMATES_S = {"server": 150, "bench_1": 240, "bench_n": 90}
# Ratios reported (controller / stock): metric key in vLLM's result JSON.
RATIOS = {
    "throughput_ratio": "output_throughput",
    "request_throughput_ratio": "request_throughput",
    "ttft_p50_ratio": "p50_ttft_ms",
    "ttft_p99_ratio": "p99_ttft_ms",
    "itl_p50_ratio": "p50_itl_ms",
    "itl_p99_ratio": "p99_itl_ms",
    "tpot_p50_ratio": "p50_tpot_ms",
}


class Parity:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine_args = json.loads(args.engine_args)
        self.concurrency = [int(c) for c in args.concurrency.split(",")]
        meta = machine_metadata()
        meta.update(
            engine_args=self.engine_args,
            settings={
                "model": args.model,
                "num_prompts": args.num_prompts,
                "input_len": args.input_len,
                "output_len": args.output_len,
                "range_ratio": json.loads(args.range_ratio),
                "seed": args.seed,
                "concurrency": self.concurrency,
                "temperature": 0,
                "ignore_eos": True,
                "client": "vllm bench serve (upstream), --dataset-name random, "
                "/v1/completions, streaming",
                "controller": {
                    "num_workers": 1,
                    "park_memory_gb": args.ctrl_park_memory_gb,
                },
            },
        )
        self.path = args.out or (
            args.results_dir
            / f"parity-{meta['gpu_slug']}-{args.date or meta['date']}.json"
        )
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.data["metadata"].setdefault("invocations", [])
        else:
            self.data = {"metadata": {**meta, "invocations": []}}
        for side in SIDES:
            self.data.setdefault(side, {})
        self.invocation: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "stopped": None,
        }
        self.data["metadata"]["invocations"].append(self.invocation)
        self.deadline = Deadline(args.deadline_s)
        self.mirror = [args.mirror_dir] if args.mirror_dir else []

    def save(self) -> None:
        self.data.update(ratios(self.data))
        write_json(self.path, self.data, self.mirror)

    def estimate(self, what: str, key: str) -> float:
        seen = [
            self.data[side].get(key, {}).get("wall_s", 0)
            for side in SIDES
            if isinstance(self.data[side].get(key), dict)
        ]
        seen = [x for x in seen if x]
        return max(seen) * 1.2 if seen else DEFAULT_ESTIMATES_S[what]

    def fits(self, what: str, estimate: float) -> bool:
        if self.deadline.fits(estimate):
            return True
        self.invocation["stopped"] = (
            f"deadline: {what} (~{estimate:.0f} s) would not fit in the "
            f"{self.deadline.left():.0f} s left"
        )
        log(f"STOPPED: {self.invocation['stopped']}")
        return False

    def server_cmd(self, side: str, base: Path, port: int) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(port)]
        if side == "stock":
            return [
                *vllm_cli(),
                "serve",
                str(base),
                "--served-model-name",
                self.args.model,
                *common,
                *engine_flags(self.engine_args),
            ]
        cmd = [
            sys.executable,
            "-m",
            "vllm.worker_controller.serve",
            str(base),
            *common,
            "--num-workers",
            "1",
            "--admin-token",
            os.urandom(12).hex(),
            "--keep-alive",
            "-1",
            *engine_flags(self.engine_args),
        ]
        if self.args.ctrl_park_memory_gb is not None:
            cmd += ["--park-memory-gb", str(self.args.ctrl_park_memory_gb)]
        return cmd

    def bench(self, side: str, base: Path, url: str, concurrency: int) -> dict:
        """One ``vllm bench serve`` run; its summary metrics (lists dropped)."""
        result_dir = self.args.log_dir / "bench-results"
        result_file = f"{side}-c{concurrency}-{time.strftime('%H%M%S')}.json"
        cmd = bench_serve_cmd(
            url,
            base,
            self.args.model,
            num_prompts=self.args.num_prompts,
            input_len=self.args.input_len,
            output_len=self.args.output_len,
            range_ratio=self.args.range_ratio,
            seed=self.args.seed,
            concurrency=concurrency,
            warmups=max(8, concurrency),
            result_file=result_dir / result_file,
        )
        proc = launch(
            cmd, self.args.log_dir / f"parity-{side}-bench-c{concurrency}.log"
        )
        try:
            rc = proc.popen.wait(timeout=self.args.bench_timeout)
        finally:
            proc.stop()
        path = result_dir / result_file
        if rc != 0 or not path.exists():
            raise RuntimeError(
                f"vllm bench serve exited with {rc}:\n{tail(proc.log_path)}"
            )
        result = json.loads(path.read_text())
        return {k: v for k, v in result.items() if not isinstance(v, (list, dict))}

    def run_side(self, side: str, base: Path) -> bool:
        todo = [c for c in self.concurrency if str(c) not in self.data[side]]
        if not todo:
            return True
        estimate = self.data[side].get("server", {}).get("ready_s")
        if not self.fits(
            f"{side} server start",
            estimate * 1.2 + 20 if estimate else DEFAULT_ESTIMATES_S["server"],
        ):
            return False
        wait_gpu_free()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc: Proc = launch(
            self.server_cmd(side, base, port), self.args.log_dir / f"parity-{side}.log"
        )
        try:
            ready = wait_healthy(url, proc, self.args.server_timeout)
            first = stream_completion(url, self.args.model)
            self.data[side]["server"] = {
                "ready_s": ready,
                "first_completion_s": first["completion_s"],
                "log": proc.log_path.name,
            }
            log(f"{side}: server ready in {ready:.1f} s")
            self.save()
            for c in todo:
                key = "bench_1" if c == 1 else "bench_n"
                if not self.fits(f"{side} concurrency {c}", self.estimate(key, str(c))):
                    return False
                start = time.monotonic()
                metrics = self.bench(side, base, url, c)
                metrics["wall_s"] = time.monotonic() - start
                self.data[side][str(c)] = metrics
                self.save()
                log(
                    f"{side} c={c}: {metrics.get('completed')} done, "
                    f"{metrics.get('output_throughput', 0):.0f} out tok/s, TTFT p50 "
                    f"{metrics.get('p50_ttft_ms', 0):.1f} ms, ITL p50 "
                    f"{metrics.get('p50_itl_ms', 0):.2f} ms ({metrics['wall_s']:.0f} s)"
                )
        finally:
            proc.stop(grace_s=90)
        return True

    def run(self) -> int:
        sides = [s for s in self.args.sides.split(",") if s]
        log(
            f"parity benchmark: {self.args.model}, sides {sides}, concurrency "
            f"{self.concurrency}, {self.args.num_prompts} prompts; results {self.path}"
        )
        try:
            base = ensure_models(self.args.models_dir, [self.args.model])[
                self.args.model
            ]
            for side in sides:
                try:
                    if not self.run_side(side, base):
                        break
                except Exception as e:
                    self.data[side]["error"] = clip(f"{type(e).__name__}: {e}")
                    log(f"{side}: FAILED: {e}")
        except BaseException as e:  # SIGTERM (SystemExit), Ctrl-C, a bug
            self.invocation["stopped"] = f"interrupted: {type(e).__name__}: {e}"
            raise
        finally:
            self.invocation["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.save()
        missing = [
            f"{s} c={c}"
            for s in sides
            for c in self.concurrency
            if str(c) not in self.data[s]
        ]
        if missing:
            log(
                "NOT DONE (run the same command again to continue): "
                + ", ".join(missing)
            )
            return 3
        for key in ("throughput_ratio", "ttft_p50_ratio", "itl_p50_ratio"):
            log(f"{key} (controller / stock): {self.data.get(key)}")
        log(f"DONE: {self.path}")
        return 0


def ratios(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """controller / stock for each metric of ``RATIOS``, per concurrency."""
    out: dict[str, dict[str, float]] = {name: {} for name in RATIOS}
    for c, stock in data.get("stock", {}).items():
        ctrl = data.get("controller", {}).get(c)
        if not (c.isdigit() and isinstance(stock, dict) and isinstance(ctrl, dict)):
            continue
        for name, metric in RATIOS.items():
            if stock.get(metric) and ctrl.get(metric) is not None:
                out[name][c] = ctrl[metric] / stock[metric]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b", help="model shape")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/bench/models"))
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=160)
    parser.add_argument(
        "--range-ratio",
        default='{"input": 0.9, "output": 0.6}',
        help="vllm bench serve's --random-range-ratio: lengths uniform in "
        "len*(1-r)..len*(1+r); the default gives prompts of 52-972 tokens and "
        "outputs of 64-256",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--engine-args",
        default=json.dumps(DEFAULT_ENGINE_ARGS),
        help="JSON of EngineArgs fields, the same for both servers",
    )
    parser.add_argument(
        "--ctrl-park-memory-gb",
        type=float,
        default=0.0,
        help="the controller's --park-memory-gb (0: no sleep mode, engine "
        "args equal to stock's; negative: leave the controller's default)",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--date",
        default=None,
        help="date in the results file's name (default: today); the driver "
        "fixes it so that a call after midnight still resumes",
    )
    parser.add_argument("--mirror-dir", default=None)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench/logs"))
    parser.add_argument("--deadline-s", type=float, default=None)
    parser.add_argument("--server-timeout", type=float, default=600)
    parser.add_argument("--bench-timeout", type=float, default=900)
    args = parser.parse_args()
    if args.ctrl_park_memory_gb is not None and args.ctrl_park_memory_gb < 0:
        args.ctrl_park_memory_gb = None
    install_sigterm_handler()
    sys.exit(Parity(args).run())


if __name__ == "__main__":
    main()
