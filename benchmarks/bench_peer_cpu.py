# SPDX-License-Identifier: Apache-2.0
"""Weight copy speed of a peer load vs a checkpoint load, on CPU.

Two workers; the demo model (SmolLM2-135M-Instruct) loaded once as the
source, then loaded N times per way, interleaved: from the checkpoint
(``disk``: the page cache), from the source through shared memory (``shm``)
and through a gloo broadcast (``gloo``). Per load: ``weights_load`` (the
target's copy: bytes, seconds, GB/s), the source's ``peer_export`` and the
whole weight phase; every load must give the source's greedy tokens.
Writes ``benchmarks/results/cpu-peer-<date>.json``.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import gpu_common as common  # noqa: E402

import vllm  # noqa: E402
from vllm.worker_controller import WorkerController  # noqa: E402
from vllm.worker_controller.demo_model import ensure_demo_model  # noqa: E402

ARGS = dict(dtype="float32", max_model_len=256, enforce_eager=True)
ARGS |= dict(max_num_seqs=4, max_num_batched_tokens=256)
WAYS = {"disk": "off", "shm": "shm", "gloo": "gloo"}


async def greedy(client) -> list[int]:
    return (await common.generate_ids(client, "The capital of France is", 8))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    model = str(ensure_demo_model())
    records = []
    with WorkerController(num_workers=2) as wc:
        wc.load(model, "source", **ARGS)
        expected = asyncio.run(greedy(wc.engine_client("source")))
        for run in range(args.runs):
            for way, transport in WAYS.items():
                wc.settings.peer_transport = transport
                loaded = wc.load(model, "target", **ARGS)
                tokens = asyncio.run(greedy(wc.engine_client("target")))
                wc.unload("target")
                figures = loaded.weights_load or {}
                assert tokens == expected, (way, tokens, expected)
                assert figures.get("source") == ("disk" if way == "disk" else "peer")
                record = {
                    "run": run,
                    "way": way,
                    "weights_phase_s": loaded.timings_s["weights"],
                    "export_s": loaded.timings_s.get("peer_export"),
                    **figures,
                }
                print(json.dumps(record))
                records.append(record)
    print(
        f"\n{'way':6} {'MiB':>8} {'export s':>9} {'copy s':>8} {'GB/s':>6} "
        f"{'weights phase s':>16}"
    )
    for way in WAYS:
        rows = [r for r in records if r["way"] == way]
        print(
            f"{way:6} {rows[0]['bytes'] / 2**20:8.1f} "
            f"{statistics.median(r['export_s'] or 0.0 for r in rows):9.3f} "
            f"{statistics.median(r['seconds'] for r in rows):8.3f} "
            f"{statistics.median(r['gb_per_s'] for r in rows):6.2f} "
            f"{statistics.median(r['weights_phase_s'] for r in rows):16.2f}"
        )
    path = args.out / f"cpu-peer-{datetime.date.today()}.json"
    machine = {"cpu": platform.processor() or platform.machine()}
    machine |= {"cores": os.cpu_count(), "vllm": vllm.__version__}
    data = {"machine": machine, "model": "SmolLM2-135M-Instruct"}
    common.write_json(path, data | {"engine_args": ARGS, "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
