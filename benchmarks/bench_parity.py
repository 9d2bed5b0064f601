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
left out to compare like with like. Sides (``--sides``):

- ``stock``: ``vllm serve``;
- ``controller``: the model loaded into the pool;
- ``swapped``: the model brought up by same-shape swaps (one model slot;
  ``--swaps`` swaps back and forth between it and a checkpoint of the same
  shape with other weights, the device memory in use read after each), so
  it serves from an engine built for another checkpoint;
- ``fewgraphs``: the model loaded with the CUDA-graph capture sizes cut to
  the powers of two (``FEW_CAPTURE_SIZES``): what fewer graphs save at load
  and what they cost in throughput.

Writes ``parity-<gpu>-<date>.json`` after every benchmark (a second call
resumes), with ``ratios`` (side / stock, per metric and concurrency);
``report_gpu.py`` renders it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    Results,
    Server,
    add_common_args,
    bench_serve_cmd,
    clip,
    ensure_models,
    gpu_memory_used_mib,
    install_sigterm_handler,
    log,
    run_to_end,
    stream_completion,
    tail,
    wait_gpu_free,
)

SIDES = ("stock", "controller", "swapped", "fewgraphs")
# The fewgraphs side's capture sizes; vLLM's default for these engine args
# is 51 sizes: 1, 2, 4, then every 8 up to 256 and every 16 up to 512.
FEW_CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
# vllm bench serve's --random-range-ratio: lengths uniform in
# len*(1-r)..len*(1+r); with the default lengths, prompts of 52-972 tokens
# and outputs of 64-256.
RANGE_RATIO = '{"input": 0.9, "output": 0.6}'
SEED = 0
BENCH_TIMEOUT_S = 900
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
        self.concurrency = [int(c) for c in args.concurrency.split(",")]
        self.sides = args.sides.split(",")
        settings = {
            "model": args.model,
            "num_prompts": args.num_prompts,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "range_ratio": json.loads(RANGE_RATIO),
            "seed": SEED,
            "concurrency": self.concurrency,
            "temperature": 0,
            "ignore_eos": True,
            "client": "vllm bench serve (upstream), --dataset-name random, "
            "/v1/completions, streaming",
            "controller": {"num_workers": 1, "park_memory_gb": 0.0},
            "sides": self.sides,
            "swaps": args.swaps,
            "few_capture_sizes": FEW_CAPTURE_SIZES,
        }
        meta = {"engine_args": args.engine_args, "settings": settings}
        empty = {side: {} for side in self.sides}
        self.results = Results(args, "parity", meta, empty)
        self.data = self.results.data

    def save(self) -> None:
        self.data["ratios"] = ratios(self.data)
        self.results.save()

    def estimate(self, key: str, concurrency: str) -> float:
        seen = [self.data[s].get(concurrency, {}).get("wall_s") for s in self.sides]
        seen = [x for x in seen if x]
        return max(seen) * 1.2 if seen else DEFAULT_ESTIMATES_S[key]

    def server(self, side: str, base: Path) -> Server:
        engine_args = self.args.engine_args
        if side == "stock":
            return Server.stock(base, self.args.model, engine_args)
        flags = [str(base), "--num-workers", "1", "--keep-alive", "-1"]
        flags += ["--park-memory-gb", "0"]
        if side == "swapped":
            flags += [
                "--max-loaded-models",
                "1",
                "--allowed-model-dir",
                str(base.parent),
            ]
        if side == "fewgraphs":
            sizes = {"cudagraph_capture_sizes": FEW_CAPTURE_SIZES}
            engine_args = {**engine_args, "compilation_config": sizes}
        return Server.controller(flags, engine_args)

    def swap_back_and_forth(self, server: Server, base: Path) -> dict[str, Any]:
        """``--swaps`` loads alternating between a checkpoint of ``base``'s
        shape with other weights and ``base`` itself, each of which must be
        a swap into the engine the other left; ends with ``base`` swapped
        in. Per swap: seconds, device memory in use after it, and whether
        the checkpoint answered the tokens it answered the first time."""
        model = self.args.model
        other = ensure_models(base.parent, [model], seed=1)[model]
        tokens = {model: stream_completion(server.url, model)["token_ids"]}
        swaps = []
        for i in range(self.args.swaps):
            path, name = (other, other.name) if i % 2 == 0 else (base, model)
            start = time.perf_counter()
            resp = server.api(
                "POST", "/v1/controller/models", {"model": str(path), "name": name}
            )
            load_s = time.perf_counter() - start
            if resp.get("brought_up") != "swap":
                raise RuntimeError(
                    f"swap {i + 1} to {name} was a {resp.get('brought_up')!r}"
                )
            ids = stream_completion(server.url, name)["token_ids"]
            swaps.append(
                {
                    "to": name,
                    "load_s": load_s,
                    "gpu_used_mib": (gpu_memory_used_mib() or (None,))[0],
                    "tokens_as_first_time": tokens.setdefault(name, ids) == ids,
                }
            )
        if swaps and swaps[-1]["to"] != model:
            raise RuntimeError("--swaps must be even: the benchmark serves the base")
        return {
            "swaps": swaps,
            "checkpoints_differ": len({*map(tuple, tokens.values())}) > 1,
        }

    def bench(self, side: str, base: Path, url: str, concurrency: int) -> dict:
        """One ``vllm bench serve`` run; its summary metrics (lists dropped)."""
        name = f"{side}-c{concurrency}-{time.strftime('%H%M%S')}.json"
        path = self.args.log_dir / "bench-results" / name
        cmd = bench_serve_cmd(
            url,
            base,
            self.args.model,
            num_prompts=self.args.num_prompts,
            input_len=self.args.input_len,
            output_len=self.args.output_len,
            range_ratio=RANGE_RATIO,
            seed=SEED,
            concurrency=concurrency,
            warmups=max(8, concurrency),
            result_file=path,
        )
        log_path = self.args.log_dir / f"parity-{side}-bench-c{concurrency}.log"
        proc = run_to_end(cmd, log_path, BENCH_TIMEOUT_S)
        if proc.popen.returncode != 0 or not path.exists():
            raise RuntimeError(
                f"vllm bench serve exited with {proc.popen.returncode}:\n"
                f"{tail(proc.log_path)}"
            )
        result = json.loads(path.read_text())
        return {k: v for k, v in result.items() if not isinstance(v, list | dict)}

    def run_side(self, side: str, base: Path) -> bool:
        todo = [c for c in self.concurrency if str(c) not in self.data[side]]
        if not todo:
            return True
        ready = self.data[side].get("server", {}).get("ready_s")
        estimate = ready * 1.2 + 20 if ready else DEFAULT_ESTIMATES_S["server"]
        if not self.results.fits(f"{side} server start", estimate):
            return False
        wait_gpu_free()
        server = self.server(side, base)
        try:
            log_path = self.args.log_dir / f"parity-{side}.log"
            ready = server.start(log_path, self.args.server_timeout)
            first = stream_completion(server.url, self.args.model)
            self.data[side]["server"] = {
                "ready_s": ready,
                "first_completion_s": first["completion_s"],
                "log": log_path.name,
            }
            if side != "stock":
                listing = server.api("GET", "/v1/controller/models")
                self.data[side]["server"]["load_timings_s"] = listing[0]["timings_s"]
            if side == "swapped":
                self.data[side].update(self.swap_back_and_forth(server, base))
            log(f"{side}: server ready in {ready:.1f} s")
            self.save()
            for c in todo:
                key = "bench_1" if c == 1 else "bench_n"
                estimate = self.estimate(key, str(c))
                if not self.results.fits(f"{side} concurrency {c}", estimate):
                    return False
                start = time.monotonic()
                m = self.bench(side, base, server.url, c)
                m["wall_s"] = time.monotonic() - start
                self.data[side][str(c)] = m
                self.save()
                log(
                    f"{side} c={c}: {m.get('completed')} done, "
                    f"{m.get('output_throughput', 0):.0f} out tok/s, TTFT p50 "
                    f"{m.get('p50_ttft_ms', 0):.1f} ms, ITL p50 "
                    f"{m.get('p50_itl_ms', 0):.2f} ms ({m['wall_s']:.0f} s)"
                )
        finally:
            server.stop()
        return True

    def run(self) -> int:
        log(
            f"parity benchmark: {self.args.model}, concurrency {self.concurrency}, "
            f"{self.args.num_prompts} prompts; results {self.results.path}"
        )
        with self.results.call():
            model = self.args.model
            base = ensure_models(self.args.models_dir, [model])[model]
            for side in self.sides:
                try:
                    if not self.run_side(side, base):
                        break
                except Exception as e:
                    self.data[side]["error"] = clip(f"{type(e).__name__}: {e}")
                    log(f"{side}: FAILED: {e}")
            self.data["ratios"] = ratios(self.data)
        missing = [
            f"{s} c={c}"
            for s in self.sides
            for c in self.concurrency
            if str(c) not in self.data[s]
        ]
        for side, by_metric in self.data["ratios"].items():
            log(f"{side} / stock: {json.dumps(by_metric)}")
        return self.results.finish(missing)


def ratios(data: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """side / stock for each metric of ``RATIOS``, per side and concurrency."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side in data["metadata"]["settings"].get("sides", ["controller"]):
        if side == "stock":
            continue
        out[side] = {name: {} for name in RATIOS}
        for c, stock in data.get("stock", {}).items():
            ours = data.get(side, {}).get(c)
            if not (c.isdigit() and isinstance(stock, dict) and isinstance(ours, dict)):
                continue
            for name, metric in RATIOS.items():
                if stock.get(metric) and ours.get(metric) is not None:
                    out[side][name][c] = ours[metric] / stock[metric]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b", help="model shape")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=160)
    parser.add_argument("--sides", default="stock,controller", help=f"of {SIDES}")
    parser.add_argument("--swaps", type=int, default=20, help="swapped side's swaps")
    add_common_args(parser)
    args = parser.parse_args()
    if args.engine_args is None:
        args.engine_args = DEFAULT_ENGINE_ARGS
    install_sigterm_handler()
    sys.exit(Parity(args).run())


if __name__ == "__main__":
    main()
