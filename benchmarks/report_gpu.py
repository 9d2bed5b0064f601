# SPDX-License-Identifier: Apache-2.0
"""Renders the GPU benchmarks' JSON into ``docs/benchmarks.md`` and a plot.

No vLLM or GPU needed. The published sections come from::

    python benchmarks/report_gpu.py \\
        --startup benchmarks/results/startup-h200-2026-11-21.json \\
                  benchmarks/results/startup-h200-2026-11-21-qwen.json \\
        --parity benchmarks/results/parity-h200-2026-11-21.json

Startup files are merged (later runs of a scenario win). Each result goes
between its marker comments (``gpu-startup``, ``gpu-parity``); the plot
(``docs/img/startup-phases-<gpu>.png``) is redrawn where matplotlib is.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bench_startup import SCENARIOS
from gpu_common import REPO, replace_section

# Plot segments: one category each, the same colour for every bar.
CATEGORIES = (
    ("start-up & imports", "#9e9e9e"),
    ("weights & model init", "#1f77b4"),
    ("engine init: profile, KV cache, compile, CUDA graphs", "#ff7f0e"),
    ("serving set-up (client, OpenAI app)", "#8c564b"),
    ("unpark / wake up", "#2ca02c"),
    ("first completion", "#d62728"),
)


def segments(record: dict[str, Any]) -> list[float]:
    """Median phases of a record, mapped onto ``CATEGORIES`` (seconds)."""
    p = record.get("phases_s", {})

    def g(*keys: str) -> float:  # the first of ``keys`` that the run has
        return next((p[k] for k in keys if k in p), 0.0)

    kind = SCENARIOS[record["scenario"]].kind
    if kind == "stock":
        model, engine = g("model_loading", "weights"), g("engine_init")
        start = max(g("ready", "llm_init") - model - engine, 0.0) + g("import")
        return [start, model, engine, 0.0, 0.0, g("first_completion", "first_output")]
    if kind == "load":
        weights = sum(g(k) for k in ("config", "stop_previous", "lease", "weights"))
        serving = g("client") + max(g("router_http"), 0.0)
        return [0.0, weights, g("engine_init"), serving, 0.0, g("first_completion")]
    if kind == "unpark":
        first = g("first_token")
        return [0.0, 0.0, 0.0, 0.0, first, g("first_completion") - first]
    return [0.0, 0.0, 0.0, 0.0, g("wake_up"), g("generate")]


def draw_plot(records: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Stacked bars of the phase medians, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = [r for r in records if r.get("runs")]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(bars) + 2.2))
    for i, r in enumerate(bars):
        left = 0.0
        for (label, color), width in zip(CATEGORIES, segments(r), strict=True):
            ax.barh(i, width, left=left, color=color, label=label if i == 0 else None)
            left += width
        if r.get("median_s") is not None:
            ax.text(left, i, f" {r['median_s']:.1f} s", va="center", fontsize=8)
    names = [f"{r['model']} {r['scenario']}" for r in bars]
    ax.set_yticks(range(len(bars)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (medians of each phase)")
    ax.set_title(title)
    ax.margins(x=0.08)
    fig.legend(fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def error_summary(error: str) -> str:
    """An error's first line and the last line naming an error (the cause)."""
    lines = [x.strip() for x in (error or "").strip().splitlines() if x.strip()]
    if not lines:
        return ""
    named = [x for x in lines[1:] if re.search(r"[A-Za-z]+(Error|Exception)\b", x)]
    cause = named[-1] if named else lines[-1]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {cause}"
    return text.replace("`", "'")[:400]


def fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


# ------------------------------------------------------------------ startup


def load_startup(paths: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metadata of the first file, records of all (later files win)."""
    meta: dict[str, Any] = {}
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        meta = meta or data["metadata"]
        records |= {(r["model"], r["scenario"]): r for r in data["records"]}
    order = list(SCENARIOS)
    return meta, sorted(
        records.values(), key=lambda r: (r["model"], order.index(r["scenario"]))
    )


def record_notes(r: dict[str, Any]) -> list[str]:
    """Notes on one record: failures, compile-cache hits, sleep/wake outputs."""
    name, runs = f"{r['model']} {r['scenario']}", r.get("runs", [])
    failures: dict[str, int] = {}
    for f in r.get("failures", []):
        line = error_summary(f["error"])
        failures[line] = failures.get(line, 0) + 1
    notes = [
        f"- {name}: failed{f' ({n} runs)' if n > 1 else ''}: `{line}`"
        for line, n in failures.items()
    ]
    hits = [x["phases_s"].get("compile_cache_hit") for x in runs]
    if hits := [h for h in hits if h is not None]:
        notes.append(
            f"- {name}: compiled graphs loaded from vLLM's compile cache in "
            f"{sum(hits)} of {len(hits)} runs"
        )
    if r["scenario"] == "sleep_wake" and runs:
        same = sum(bool(x.get("same_output")) for x in runs)
        notes.append(
            f"- {name}: output after wake-up equal to the first in {same} of "
            f"{len(runs)} cycles"
        )
    return notes


def startup_markdown(
    paths: list[Path], meta: dict[str, Any], records: list[dict[str, Any]], plot: str
) -> str:
    rows, notes, speedups = [], [], []
    for r in records:
        p, shown = r.get("phases_s", {}), SCENARIOS[r["scenario"]].phases
        phases = ", ".join(f"{k} {p[k]:.2f}" for k in shown if k in p)
        runs = " / ".join(f"{x:.2f}" for x in r.get("runs_s", []))
        rows.append(
            f"| {r['scenario']} | {r['model']} | {r['status']} | "
            f"{fmt(r.get('median_s'))} | {fmt(r.get('min_s'))} | "
            f"{fmt(r.get('max_s'))} | {runs or '–'} | {phases or '–'} |"
        )
        notes += record_notes(r)
    models = sorted({r["model"] for r in records})
    for model in models:
        by = {r["scenario"]: r.get("median_s") for r in records if r["model"] == model}
        for stock in ("stock_serve", "stock_llm"):
            parts = [
                f"{ctrl} {by[stock] / by[ctrl]:.1f}x"
                for ctrl in SCENARIOS
                if ctrl.startswith("ctrl") and by.get(stock) and by.get(ctrl)
            ]
            if parts:
                speedups.append(f"- {model}, {stock} / " + ", ".join(parts))
    settings = meta.get("settings", {})
    arch_keyed = sorted(
        {r["model"] for r in records if r["scenario"] == "ctrl_new_arch"}
    )
    path_keyed = sorted(set(models) - set(arch_keyed))
    compile_cache = []
    if arch_keyed:
        compile_cache.append(
            f"for {', '.join(arch_keyed)}, the pool keyed it by the model's HF "
            "config, so a `ctrl_new` copy found its base's compiled model, as "
            "`ctrl_reload` and the stock runs of the same folder do, while a "
            "`ctrl_new_arch` copy compiled (with Inductor's and Triton's caches "
            "warm)."
        )
    if path_keyed:
        compile_cache.append(
            f"For {', '.join(path_keyed)} (runs made before the pool keyed "
            "it by HF config), vLLM's key included the model path, so each "
            "`ctrl_new` copy compiled."
        )
    present = {r["scenario"] for r in records}
    rounds = ", ".join(s for s in SCENARIOS if s in present and s != "sleep_wake")
    boots = [
        f"{c['model']} {c['boot_and_first_load_s']:.1f} s"
        for inv in meta.get("invocations", [])
        for c in inv.get("ctrl_servers", [])
        if "boot_and_first_load_s" in c
    ]
    files = ", ".join(f"`benchmarks/results/{p.name}`" for p in paths)
    timed = {r["scenario"]: r.get("timed", "") for r in records}
    machine = (
        f"{meta.get('gpu')} ({meta.get('gpu_memory_mib')} MiB, driver "
        f"{meta.get('gpu_driver')}), {meta.get('cores')} cores; Python "
        f"{meta.get('python')}, vLLM {meta.get('vllm')}, torch {meta.get('torch')}, "
        f"transformers {meta.get('transformers')}; {meta.get('date')}"
    )
    ctrl = (
        f"`--num-workers {settings.get('num_workers')}`, `--park-memory-gb "
        f"{settings.get('park_memory_gb')}`"
    )
    return f"""## GPU ({meta.get("gpu")}): time to first completion, stock vs controller

Produced by `benchmarks/bench_startup.py` (driver `benchmarks/gpu/run.sh`);
raw records in {files}. Machine: {machine}.

Method: random-weight bf16 models of the real shapes, built on the machine.
Engine args on every side: `{json.dumps(meta.get("engine_args"))}`; vLLM's
defaults otherwise (torch.compile, CUDA graphs). One run per shape,
interleaved: each repetition goes once round {rounds};
sleep_wake (one process) follows;
{settings.get("runs")} runs each. The first completion is the same
everywhere: greedy, {settings.get("max_tokens")} tokens, streamed. The
controller server ({ctrl}) was started before timing, with a first load of
the base model (not counted; boot + that load: {", ".join(boots) or "–"}).
What each scenario times:

{chr(10).join(f"- `{k}`: {v}" for k, v in timed.items())}

Compile cache: {" ".join(compile_cache)} The controller turns on sleep mode for
parking, which is a different key than stock's (each side fills its own
once). Phases are medians, in seconds.

| scenario | model | status | median s | min s | max s | runs s | phases (median s) |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Speed-up of the median time to first completion (stock / controller):
{chr(10).join(speedups) or "- –"}

{chr(10).join(notes)}

![Start-up phases]({plot})
"""


# ------------------------------------------------------------------- parity

PARITY_HEADER = (
    "| concurrency | server | completed | output tok/s | req/s "
    "| TTFT p50 / p99 ms | ITL p50 / p99 ms | TPOT p50 ms | E2E p50 ms |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
RATIO_HEADER = " output throughput | TTFT p50 | ITL p50 | ITL p99 |"


def parity_markdown(path: Path, data: dict[str, Any]) -> str:
    """The parity section (files from before ``--sides``: the controller's
    ratios at the top level)."""
    meta, s = data["metadata"], data["metadata"].get("settings", {})
    sides = s.get("sides", ["stock", "controller"])
    rows, ratio_rows = [], []
    for c in s.get("concurrency", []):
        for side in sides:
            m = data.get(side, {}).get(str(c))
            if not isinstance(m, dict):
                rows.append(f"| {c} | {side} | – | – | – | – | – | – | – |")
                continue
            g = m.get
            rows.append(
                f"| {c} | {side} | {g('completed')} | "
                f"{fmt(g('output_throughput'), 0)} | {fmt(g('request_throughput'))} | "
                f"{fmt(g('p50_ttft_ms'), 1)} / {fmt(g('p99_ttft_ms'), 1)} | "
                f"{fmt(g('p50_itl_ms'))} / {fmt(g('p99_itl_ms'))} | "
                f"{fmt(g('p50_tpot_ms'))} | {fmt(g('p50_e2el_ms'), 0)} |"
            )
    by_side = data.get("ratios") or {"controller": data}
    one = list(by_side) == ["controller"]
    keys = ("throughput_ratio", "ttft_p50_ratio", "itl_p50_ratio", "itl_p99_ratio")
    for side, r in by_side.items():
        for c in s.get("concurrency", []):
            cells = [str(c), *([] if one else [side])]
            cells += [fmt(r.get(k, {}).get(str(c)), 3) for k in keys]
            ratio_rows.append("| " + " | ".join(cells) + " |")
    errors = [
        f"- {side} failed: `{error_summary(data[side]['error'])}`"
        for side in sides
        if isinstance(data.get(side), dict) and data[side].get("error")
    ]
    servers = ", ".join(
        f"{side} {data[side]['server']['ready_s']:.1f} s"
        for side in sides
        if isinstance(data.get(side, {}).get("server"), dict)
    )
    rr, il, ol = s.get("range_ratio", {}), s.get("input_len", 0), s.get("output_len", 0)
    ri, ro = rr.get("input", 0), rr.get("output", 0)
    prompts = (
        f"prompts of {int(il * (1 - ri))}–{int(il * (1 + ri))} tokens, "
        f"{int(ol * (1 - ro))}–{int(ol * (1 + ro))} output tokens"
    )
    park = s.get("controller", {}).get("park_memory_gb")
    both, ratio = ("both sides", "Controller") if one else ("every side", "Side")
    ratio_header = "| concurrency |" + ("" if one else " side |") + RATIO_HEADER
    return f"""## GPU ({meta.get("gpu")}): serving parity, `vllm serve` vs controller

Produced by `benchmarks/bench_parity.py`; raw results in
`benchmarks/results/{path.name}`. {meta.get("gpu")}, vLLM {meta.get("vllm")},
torch {meta.get("torch")}; {meta.get("date")}.

Method: the same {s.get("num_prompts")} requests to each server, one server
at a time on the same GPU, through upstream's `vllm bench serve` (random
dataset, seed {s.get("seed")}: {prompts} with `ignore_eos`; greedy;
streamed `/v1/completions`), all submitted at once behind a concurrency
limit. Model: {s.get("model")} shape. Engine args on {both}:
`{json.dumps(meta.get("engine_args"))}`. The controller had one pooled
worker and `--park-memory-gb {park}` (0: no sleep mode, so its engine args
equal stock's). Server start to ready: {servers or "–"}.

{PARITY_HEADER}
{chr(10).join(rows)}

{ratio} / stock (1.0 = parity; above 1 is better for throughput, worse
for latencies):

{ratio_header}
|{"---|" * (ratio_header.count("|") - 1)}
{chr(10).join(ratio_rows)}
{chr(10) + chr(10).join(errors) if errors else ""}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", type=Path, nargs="*", default=[])
    parser.add_argument("--parity", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if not args.startup and not args.parity:
        parser.error("give --startup FILE... and/or --parity FILE")
    if args.startup:
        meta, records = load_startup(args.startup)
        plot = Path("img") / f"startup-phases-{meta.get('gpu_slug', 'gpu')}.png"
        title = f"Time to first completion, {meta.get('gpu')} (median phases)"
        if not draw_plot(records, args.doc.parent / plot, title):
            print(f"no matplotlib: {plot} left as it is")
        text = startup_markdown(args.startup, meta, records, str(plot))
        replace_section(args.doc, "gpu-startup", text)
        print(f"startup: {', '.join(map(str, args.startup))} -> {args.doc}")
    if args.parity:
        data = json.loads(args.parity.read_text())
        replace_section(args.doc, "gpu-parity", parity_markdown(args.parity, data))
        print(f"parity: {args.parity} -> {args.doc}")


if __name__ == "__main__":
    main()
