# SPDX-License-Identifier: Apache-2.0
"""Serving parity: the same requests to stock ``vllm serve`` and to the
controller's OpenAI port, on the same GPU, one after the other.

The load is upstream's ``vllm bench serve`` (seeded random dataset, fixed
output with ``ignore_eos``, greedy, streamed): the same prompts and
measurement for each side; concurrency 1 shows per-request overhead, 32
batched throughput. Same engine args everywhere; the controller has one
worker and ``--park-memory-gb 0`` (parking's sleep mode is an engine arg
stock lacks). Sides (``--sides``): ``stock``; ``controller`` (loaded into the
pool); ``swapped`` (brought up by ``--swaps`` same-shape swaps, one model
slot: serving from an engine built for another checkpoint); ``fewgraphs``
(CUDA-graph sizes cut to ``FEW_CAPTURE_SIZES``: load time vs throughput).

Writes ``parity-<gpu>-<date>.json`` (a second call resumes) with ``ratios``
(side / stock); ``report_gpu.py`` renders it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import gpu_common as common
from gpu_common import Server, log, stream_completion

# vLLM's default for these engine args: 51 sizes (1, 2, 4, every 8 to 256,
# every 16 to 512).
FEW_CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
# Lengths uniform in len*(1-r)..len*(1+r): prompts of 52-972, outputs 64-256.
RANGE_RATIO = '{"input": 0.9, "output": 0.6}'
SEED = 0
# Seconds until one was seen; for the deadline only.
ESTIMATES_S = {"server": 150, "bench_1": 240, "bench_n": 90}
# Ratios reported (side / stock): metric key in vLLM's result JSON.
RATIOS = {"throughput_ratio": "output_throughput"}
RATIOS |= {"request_throughput_ratio": "request_throughput"}
RATIOS |= {"ttft_p50_ratio": "p50_ttft_ms", "ttft_p99_ratio": "p99_ttft_ms"}
RATIOS |= {"itl_p50_ratio": "p50_itl_ms", "itl_p99_ratio": "p99_itl_ms"}
RATIOS |= {"tpot_p50_ratio": "p50_tpot_ms"}


class Parity:
    def __init__(self, args: Any):
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
        self.results = common.Results(args, "parity", meta, empty)
        self.data = self.results.data

    def save(self) -> None:
        self.data["ratios"] = ratios(self.data)
        self.results.save()

    def server(self, side: str, base: Path) -> Server:
        engine_args = self.args.engine_args
        if side == "stock":
            return Server.stock(base, self.args.model, engine_args)
        flags = [str(base), "--num-workers", "1", "--keep-alive", "-1"]
        flags += ["--park-memory-gb", "0"]
        if side == "swapped":
            flags += ["--max-loaded-models", "1"]
            flags += ["--allowed-model-dir", str(base.parent)]
        if side == "fewgraphs":
            sizes = {"cudagraph_capture_sizes": FEW_CAPTURE_SIZES}
            engine_args = engine_args | {"compilation_config": sizes}
        return Server.controller(flags, engine_args)

    def swap_back_and_forth(self, server: Server, base: Path) -> dict[str, Any]:
        """``--swaps`` swaps between ``base`` and a checkpoint of its shape
        with other weights, ending with ``base``; per swap: seconds, device
        memory after it, and whether the tokens equal that model's first."""
        model = self.args.model
        other = common.ensure_models(base.parent, [model], seed=1)[model]
        tokens = {model: stream_completion(server.url, model)["token_ids"]}
        swaps = []
        for i in range(self.args.swaps):
            path, name = (other, other.name) if i % 2 == 0 else (base, model)
            load_s, resp = server.load(path, name)
            if resp.get("brought_up") != "swap":
                raise RuntimeError(f"swap {i + 1} to {name}: {resp.get('brought_up')}")
            ids = stream_completion(server.url, name)["token_ids"]
            swaps.append(
                {
                    "to": name,
                    "load_s": load_s,
                    "gpu_used_mib": (common.gpu_memory_used_mib() or [None])[0],
                    "tokens_as_first_time": tokens.setdefault(name, ids) == ids,
                }
            )
        if swaps and swaps[-1]["to"] != model:
            raise RuntimeError("--swaps must be even: the benchmark serves the base")
        differ = len({*map(tuple, tokens.values())}) > 1
        return {"swaps": swaps, "checkpoints_differ": differ}

    def bench(self, side: str, base: Path, url: str, concurrency: int) -> dict:
        """One ``vllm bench serve`` run; its summary metrics (lists dropped)."""
        name = f"{side}-c{concurrency}-{time.strftime('%H%M%S')}.json"
        path = self.args.log_dir / "bench-results" / name
        a = self.args
        kw = dict(num_prompts=a.num_prompts, input_len=a.input_len)
        kw |= dict(output_len=a.output_len, range_ratio=RANGE_RATIO, seed=SEED)
        kw |= dict(concurrency=concurrency, warmups=max(8, concurrency))
        cmd = common.bench_serve_cmd(url, base, a.model, path, **kw)
        log_path = self.args.log_dir / f"parity-{side}-bench-c{concurrency}.log"
        proc = common.run_to_end(cmd, log_path, 900)
        if proc.popen.returncode != 0 or not path.exists():
            raise RuntimeError(
                f"vllm bench serve exited with {proc.popen.returncode}:\n"
                f"{common.tail(log_path)}"
            )
        result = json.loads(path.read_text())
        return {k: v for k, v in result.items() if not isinstance(v, list | dict)}

    def run_side(self, side: str, base: Path) -> bool:
        """The side's server and each concurrency left; False at the deadline."""
        todo = [c for c in self.concurrency if str(c) not in self.data[side]]
        if not todo:
            return True
        ready = self.data[side].get("server", {}).get("ready_s")
        estimate = ready * 1.2 + 20 if ready else ESTIMATES_S["server"]
        if not self.results.fits(f"{side} server start", estimate):
            return False
        common.wait_gpu_free()
        server = self.server(side, base)
        try:
            log_path = self.args.log_dir / f"parity-{side}.log"
            ready = server.start(log_path, self.args.server_timeout)
            first = stream_completion(server.url, self.args.model)
            info = {"ready_s": ready, "first_completion_s": first["completion_s"]}
            self.data[side]["server"] = info | {"log": log_path.name}
            if side != "stock":
                listing = server.api("GET", "/v1/controller/models")
                self.data[side]["server"]["load_timings_s"] = listing[0]["timings_s"]
            if side == "swapped":
                self.data[side].update(self.swap_back_and_forth(server, base))
            log(f"{side}: server ready in {ready:.1f} s")
            self.save()
            for c in todo:
                seen = [self.data[s].get(str(c), {}).get("wall_s") for s in self.sides]
                seen = [x for x in seen if x]
                key = "bench_1" if c == 1 else "bench_n"
                estimate = max(seen) * 1.2 if seen else ESTIMATES_S[key]
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
        model = self.args.model
        log(
            f"parity benchmark: {model}, concurrency {self.concurrency}, "
            f"{self.args.num_prompts} prompts; results {self.results.path}"
        )
        with self.results.call():
            base = common.ensure_models(self.args.models_dir, [model])[model]
            for side in self.sides:
                try:
                    if not self.run_side(side, base):
                        break
                except Exception as e:
                    self.data[side]["error"] = common.clip(f"{type(e).__name__}: {e}")
                    log(f"{side}: FAILED: {e}")
            self.data["ratios"] = ratios(self.data)
        for side, by_metric in self.data["ratios"].items():
            log(f"{side} / stock: {json.dumps(by_metric)}")
        todo = [(s, c) for s in self.sides for c in self.concurrency]
        missing = [f"{s} c={c}" for s, c in todo if str(c) not in self.data[s]]
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
    parser = common.common_parser(__doc__, common.DEFAULT_ENGINE_ARGS)
    parser.add_argument("--model", default="qwen3-0.6b", help="model shape")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=160)
    sides = "of stock, controller, swapped, fewgraphs"
    parser.add_argument("--sides", default="stock,controller", help=sides)
    parser.add_argument("--swaps", type=int, default=20, help="swapped side's swaps")
    args = parser.parse_args()
    sys.exit(Parity(args).run())


if __name__ == "__main__":
    main()
