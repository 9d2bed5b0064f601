# SPDX-License-Identifier: Apache-2.0
"""Time to the first completion: stock vLLM vs the controller, side by side.

One run per model shape, interleaved: every repetition goes round the
scenarios once, so slow drifts of the machine hit every scenario alike;
sleep_wake (one process, N cycles) runs after them. The scenarios are the
table ``SCENARIOS`` at the end (a method of ``Bench`` each):

- ``stock_serve``: a fresh ``vllm serve MODEL`` → first completion answered;
- ``stock_llm``: a fresh process, ``LLM(...)`` → first output;
- ``ctrl_new``: ``POST /v1/controller/models`` of a model this pool never
  loaded (a new hard-linked copy of the folder, new name and path, so
  nothing keyed by either helps) → first completion; its architecture was
  compiled before, as for a fine-tune of a served base model;
- ``ctrl_swap``: the base model is loaded and idle, the server may hold one
  model (``--max-loaded-models 1``); ``POST /v1/controller/models`` of a new
  checkpoint of the same shape (other random weights, from the page cache)
  → first completion. The placement gives the new checkpoint the base
  model's engine: its weights are copied into the kept engine (compiled
  model, CUDA graphs, KV cache). The run fails unless the reply says
  ``brought_up: swap``; its greedy token ids are compared with those of a
  normal load of the same checkpoint (``tokens_equal_normal_load``);
- ``ctrl_new_arch``: the same as ``ctrl_new``, but its ``config.json`` differs
  (a unique ``rms_norm_eps``), so no compiled artifact on the machine fits
  it: what a model of a never-seen architecture pays;
- ``ctrl_reload``: load again a model unloaded a few minutes earlier →
  first completion (its unload is timed as a phase);
- ``ctrl_unpark``: park a loaded model, then a completion request to it
  (the router unparks it) → first completion; the explicit ``/unpark`` is
  timed too;
- ``sleep_wake``: stock ``LLM(..., enable_sleep_mode=True)``:
  ``sleep(level=1)``, ``wake_up()``, next output (the anchor of parking).

The controller server is started once per model shape, before timing, with
a warm pool (``--num-workers 3``: a parked model keeps its processes). Its
first load of the base model also fills that architecture's compile cache,
which ``ctrl_reload`` and ``ctrl_new`` find (the pool keys it by the HF
config, not the path); a ``ctrl_new_arch`` copy never does.

Results go to ``startup-<gpu>-<date>.json`` after every run; a second call
resumes where the first stopped. Render them with ``report_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    MAX_TOKENS,
    PROMPT,
    SHAPES,
    HttpError,
    Results,
    Server,
    add_common_args,
    clip,
    ensure_models,
    gpu_memory_used_mib,
    install_sigterm_handler,
    log,
    make_copy,
    parse_log_phases,
    run_to_end,
    stock_llm_cmd,
    stock_llm_lines,
    stream_completion,
    summary,
    tail,
    wait_gpu_free,
)

# A scenario that failed this often is not tried again (it would fail again
# and eat the stage's time).
MAX_FAILURES = 2
# Seconds of the controller's boot and first load (small, large shape),
# until one was seen: for the deadline only.
CTRL_BOOT_ESTIMATE_S = (150, 240)


def large(model: str) -> int:
    """1 for a large shape (the index into the estimates), else 0."""
    return int(SHAPES.get(model, {}).get("hidden_size", 0) >= 2048)


def median_phases(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each numeric phase over the runs that have it."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for k, v in run.get("phases_s", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in values.items()}


class Ctrl(Server):
    """Our server, with the management API calls the scenarios make."""

    def models(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.api("GET", "/v1/controller/models")}

    def load(self, path: Path, name: str) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        body = {"model": str(path), "name": name}
        resp = self.api("POST", "/v1/controller/models", body)
        return time.perf_counter() - start, resp

    def unload(self, name: str) -> float:
        start = time.perf_counter()
        self.api("DELETE", f"/v1/controller/models/{name}")
        return time.perf_counter() - start

    def unload_all(self) -> dict[str, float]:
        """Unloads every model (parked ones too), so that the next start, stock
        or controller, finds the device as an idle pool leaves it."""
        return {name: self.unload(name) for name in self.models()}

    def park(self, name: str, action: str = "park") -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        resp = self.api("POST", f"/v1/controller/models/{name}/{action}")
        return time.perf_counter() - start, resp or {}

    def wait_cached(self, path: Path, timeout: float = 300.0) -> float:
        """Waits until the weight cache holds ``path`` (it copies a
        checkpoint in the background after its first load from disk)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            cache = self.api("GET", "/v1/controller/weight-cache")
            if str(path.resolve()) in {e["model"] for e in cache["entries"]}:
                return time.monotonic() - start
            time.sleep(0.2)
        raise RuntimeError(f"{path} did not reach the weight cache")

    def wait_settled(self, timeout: float = 120.0) -> float:
        """Waits until no pooled process is booting (a parked model's
        processes are replaced after its unload): a process starting or
        exiting during a stock engine's memory profiling would change the
        device's free memory under it. Returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            workers = self.api("GET", "/v1/controller/workers")
            if not any(w.get("state") == "booting" for w in workers):
                break
            time.sleep(0.5)
        return time.monotonic() - start


class Bench:
    """Runs the scenarios of one call (all models), resuming from and
    writing to the results file."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        settings = {
            "runs": args.runs,
            "num_workers": args.num_workers,
            "park_memory_gb": args.park_memory_gb,
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "scenario_order": list(SCENARIOS),
        }
        meta = {"engine_args": args.engine_args, "settings": settings}
        self.results = Results(args, "startup", meta, {"state": {}, "records": []})
        self.data = self.results.data
        self.state = self.data.setdefault("state", {})
        self.invocation = self.results.invocation
        self.invocation.update(deadline_s=args.deadline_s, ctrl_servers=[])
        self.ctrl: Ctrl | None = None
        self.ctrl_failed: str | None = None
        self.last_unload: dict[str, float] = {}

    # ------------------------------------------------------------- records

    def record(self, scenario: str, model: str) -> dict[str, Any]:
        for r in self.data["records"]:
            if r["scenario"] == scenario and r["model"] == model:
                return r
        r = {
            "scenario": scenario,
            "model": model,
            "gpu": self.data["metadata"]["gpu"],
            "status": "pending",
            "timed": SCENARIOS[scenario].timed,
            "runs_s": [],
            **summary([]),
            "phases_s": {},
            "runs": [],
            "failures": [],
        }
        self.data["records"].append(r)
        return r

    def add(
        self,
        scenario: str,
        model: str,
        run: dict[str, Any] | None = None,
        error: str = "",
        wall_s: float = 0.0,
    ) -> None:
        """Adds a run (or, without one, a failure), updates the record's
        summary and writes the file."""
        r = self.record(scenario, model)
        if run is not None:
            r["runs"].append(run)
        else:
            r["failures"].append({"error": clip(error), "wall_s": wall_s})
        r["runs_s"] = [x["total_s"] for x in r["runs"]]
        r.update(summary(r["runs_s"]))
        r["phases_s"] = median_phases(r["runs"])
        if len(r["runs"]) >= self.args.runs:
            r["status"] = "ok"
        elif r["runs"]:
            r["status"] = "partial"
        else:
            r["status"] = "failed" if len(r["failures"]) >= MAX_FAILURES else "pending"
        self.results.save()

    def pending(self, scenario: str, model: str, rep: int | None = None) -> bool:
        r = self.record(scenario, model)
        if r["status"] == "skipped" or len(r["failures"]) >= MAX_FAILURES:
            return False
        done = len(r["runs"])
        return done < self.args.runs and (rep is None or done <= rep)

    def estimate(self, scenario: str, model: str) -> float:
        walls = [x.get("wall_s", 0) for x in self.record(scenario, model)["runs"]]
        if walls:
            return max(walls) * 1.15
        return SCENARIOS[scenario].estimate_s[large(model)]

    def log_path(self, model: str, what: str) -> Path:
        return self.args.log_dir / f"{model}-{what}-{time.strftime('%H%M%S')}.log"

    # ----------------------------------------------------------- scenarios

    def stock_serve(self, model: str, base: Path) -> dict[str, Any]:
        used = wait_gpu_free()
        server = Server.stock(base, model, self.args.engine_args)
        log_path = self.log_path(model, "stock_serve")
        try:
            ready = server.start(log_path, self.args.server_timeout)
            c = stream_completion(server.url, model)
        finally:
            server.stop(60)
        return {
            "total_s": ready + c["completion_s"],
            "phases_s": {
                "ready": ready,
                "first_token": c["first_token_s"],
                "first_completion": c["completion_s"],
                **parse_log_phases(log_path),
            },
            "gpu_used_mib_before": used,
            "log": log_path.name,
        }

    def stock_llm(self, model: str, base: Path) -> dict[str, Any]:
        used = wait_gpu_free()
        cmd = stock_llm_cmd(base, self.args.engine_args)
        proc = run_to_end(
            cmd, self.log_path(model, "stock_llm"), self.args.server_timeout
        )
        lines = stock_llm_lines(
            proc.log_path.read_text(errors="replace"), "STOCK_RESULT"
        )
        if proc.popen.returncode != 0 or not lines:
            raise RuntimeError(
                f"stock LLM exited with {proc.popen.returncode}:\n{tail(proc.log_path)}"
            )
        r, launched = lines[0], proc.started_wall
        return {
            "total_s": r["first_output"] - launched,
            "phases_s": {
                "import": r["imported"] - launched,
                "llm_init": r["ready"] - r["imported"],
                "first_output": r["first_output"] - r["ready"],
                **parse_log_phases(proc.log_path),
            },
            "gpu_used_mib_before": used,
            "log": proc.log_path.name,
        }

    def sleep_wake(self, model: str, base: Path) -> list[dict[str, Any]]:
        """All the runs still to do, in one process."""
        used = wait_gpu_free()
        cycles = self.args.runs - len(self.record("sleep_wake", model)["runs"])
        cmd = stock_llm_cmd(base, self.args.engine_args, sleep_cycles=cycles)
        proc = run_to_end(
            cmd, self.log_path(model, "sleep_wake"), self.args.server_timeout
        )
        text = proc.log_path.read_text(errors="replace")
        start = stock_llm_lines(text, "STOCK_RESULT")
        runs = [
            {
                "total_s": x["wake_up_s"] + x["generate_s"],
                "phases_s": {
                    "sleep": x["sleep_s"],
                    "wake_up": x["wake_up_s"],
                    "generate": x["generate_s"],
                },
                "same_output": x["same_output"],
                "process_start_s": (
                    start[0]["first_output"] - proc.started_wall if start else None
                ),
                "gpu_used_mib_before": used,
                "log": proc.log_path.name,
            }
            for x in stock_llm_lines(text, "SLEEP_WAKE")
        ]
        if not runs:
            rc = proc.popen.returncode
            raise RuntimeError(f"sleep/wake exited with {rc}:\n{tail(proc.log_path)}")
        if len(runs) < cycles:
            error = f"{len(runs)} of {cycles} cycles; see the log"
            wall = time.monotonic() - proc.started
            self.add("sleep_wake", model, error=error, wall_s=wall)
        return runs

    def ctrl_new(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        unloaded = ctrl.unload_all()
        run, _, _ = self.timed_load_of_copy(ctrl, model, base, "new")
        return {**run, "unloaded_before": unloaded}

    def ctrl_new_arch(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        eps = json.loads((base / "config.json").read_text())["rms_norm_eps"]
        # Unique to this run, so no compile cache anywhere matches it.
        unique = {"rms_norm_eps": eps * (1 + (uuid.uuid4().int % 10**6) / 10**9)}
        unloaded = ctrl.unload_all()
        run, _, _ = self.timed_load_of_copy(ctrl, model, base, "arch", unique)
        return {**run, "unloaded_before": unloaded}

    def ctrl_swap(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        # A new checkpoint: the same shape and files, other random weights.
        other = ensure_models(base.parent, [model], seed=1)[model]
        unloaded = ctrl.unload_all()
        references = self.state.setdefault("swap_reference_token_ids", {})
        if model not in references:  # the new checkpoint's tokens, loaded anew
            ref = f"{other.name}-reference"
            ctrl.load(make_copy(other, ref), ref)
            references[model] = stream_completion(ctrl.url, ref)["token_ids"]
            ctrl.unload(ref)
            self.results.save()
        # The engine to swap into: the base model, loaded, served, idle.
        if ctrl.models().get(model) != "ready":
            ctrl.load(base, model)
            stream_completion(ctrl.url, model)
        run, resp, c = self.timed_load_of_copy(ctrl, model, other, "swap")
        if resp.get("brought_up") != "swap":
            raise RuntimeError(
                f"{run['copy']!r} was brought up by {resp.get('brought_up')!r}, "
                f"not a swap: {clip(json.dumps(resp))}"
            )
        run["tokens_equal_normal_load"] = c["token_ids"] == references[model]
        run["weights_load"] = resp.get("weights_load")
        # ctrl_swap_cached swaps this copy in again, from the weight cache.
        self.state.setdefault("swap_copy", {})[model] = str(other.parent / run["copy"])
        self.results.save()
        return {**run, "unloaded_before": unloaded}

    def ctrl_swap_cached(self, model: str, base: Path) -> dict[str, Any]:
        """ctrl_swap's new checkpoint, swapped in again: the weight cache took
        it in after ctrl_swap read it from disk."""
        ctrl = self.require_ctrl()
        copy = self.state.get("swap_copy", {}).get(model)
        if copy is None:
            raise RuntimeError("ctrl_swap_cached needs a ctrl_swap run before it")
        copy_path = Path(copy)
        cached_after_s = ctrl.wait_cached(copy_path)
        unloaded = ctrl.unload_all()
        ctrl.load(base, model)  # the engine to swap into, served and idle
        stream_completion(ctrl.url, model)
        post_s, resp = ctrl.load(copy_path, copy_path.name)
        source = (resp.get("weights_load") or {}).get("source")
        if resp.get("brought_up") != "swap" or source != "host_cache":
            raise RuntimeError(
                f"{copy_path.name!r}: brought up by {resp.get('brought_up')!r}, "
                f"weights from {source!r}: {clip(json.dumps(resp))}"
            )
        c = stream_completion(ctrl.url, copy_path.name)
        references = self.state.get("swap_reference_token_ids", {})
        return {
            "total_s": post_s + c["completion_s"],
            "phases_s": {
                **load_phases(post_s, resp),
                "first_token": c["first_token_s"],
                "first_completion": c["completion_s"],
                "unload_after": ctrl.unload(copy_path.name),
            },
            "copy": copy_path.name,
            "weights_load": resp.get("weights_load"),
            "tokens_equal_normal_load": c["token_ids"] == references.get(model),
            "cache_wait_s": cached_after_s,
            "unloaded_before": unloaded,
        }

    def ctrl_reload(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        unloaded = ctrl.unload_all()
        now = time.monotonic()
        if model in unloaded:
            self.last_unload[model] = now
        post_s, resp = ctrl.load(base, model)
        c = stream_completion(ctrl.url, model)
        phases = {
            **load_phases(post_s, resp),
            "first_token": c["first_token_s"],
            "first_completion": c["completion_s"],
        }
        if model in unloaded:
            phases["unload"] = unloaded[model]
        return {
            "total_s": post_s + c["completion_s"],
            "phases_s": phases,
            "unloaded_s_ago": now - self.last_unload.get(model, now),
            "unloaded_before": unloaded,
        }

    def ctrl_unpark(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        if ctrl.models().get(model) != "ready":
            # Not left loaded by ctrl_reload (not selected, or failed): load
            # it untimed, with one completion, as a served model would be.
            ctrl.unload_all()
            ctrl.load(base, model)
            stream_completion(ctrl.url, model)
        park_client, parked = ctrl.park(model)
        state = ctrl.models().get(model)
        if state != "parked":
            raise RuntimeError(f"after park, {model!r} is {state!r}: {parked}")
        c = stream_completion(ctrl.url, model)
        state_after = ctrl.models().get(model)
        # Parked again, its memory freed now: the unpark maps it again.
        _, parked2 = ctrl.park(model, "park?free_memory=true")
        unpark_client, unparked = ctrl.park(model, "unpark")
        c2 = stream_completion(ctrl.url, model)
        phases = {
            "park": parked.get("timings_s", {}).get("park"),
            "park_client": park_client,
            "first_token": c["first_token_s"],
            "first_completion": c["completion_s"],
            "explicit_park": parked2.get("timings_s", {}).get("park"),
            "explicit_unpark_client": unpark_client,
            "first_token_after_unpark": c2["first_token_s"],
            "first_completion_after_unpark": c2["completion_s"],
        }
        for k, v in unparked.get("timings_s", {}).items():
            phases[f"explicit_{k}"] = v
        return {
            "total_s": c["completion_s"],
            "phases_s": {k: v for k, v in phases.items() if v is not None},
            "state_after_request": state_after,
        }

    def timed_load_of_copy(
        self,
        ctrl: Ctrl,
        model: str,
        source: Path,
        kind: str,
        overrides: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Loads a never-used copy of ``source`` → first completion, then
        unloads it; the run record, the load reply and the completion."""
        used = self.state.setdefault("used_copies", {}).setdefault(model, [])
        name = f"{model}-{kind}-{len(used) + 1}"
        # Recorded before the load: a copy that a cut-short call loaded once
        # (compile cache written) is never "new" again.
        used.append(name)
        self.results.save()
        post_s, resp = ctrl.load(make_copy(source, name, overrides), name)
        c = stream_completion(ctrl.url, name)
        run = {
            "total_s": post_s + c["completion_s"],
            "phases_s": {
                **load_phases(post_s, resp),
                "first_token": c["first_token_s"],
                "first_completion": c["completion_s"],
                "unload_after": ctrl.unload(name),
            },
            "copy": name,
        }
        return run, resp, c

    # ---------------------------------------------------------- controller

    def require_ctrl(self) -> Ctrl:
        if self.ctrl is None or not self.ctrl.alive():
            raise RuntimeError(
                self.ctrl_failed or "the controller server is not running"
            )
        return self.ctrl

    def start_ctrl(self, model: str, base: Path) -> None:
        """Boots the controller with ``base`` (untimed), serves one
        completion from it and unloads it: from here on, ``base`` is a
        recently unloaded model whose compile cache is warm."""
        args = self.args
        flags = [str(base), "--num-workers", str(args.num_workers)]
        flags += ["--allowed-model-dir", str(base.parent), "--keep-alive", "-1"]
        # Every scenario unloads before it loads, except ctrl_swap, whose
        # load must find no room: then the idle model's engine is swapped.
        flags += ["--max-loaded-models", "1"]
        if self.results.on_gpu and args.park_memory_gb is not None:
            flags += ["--park-memory-gb", str(args.park_memory_gb)]
        flags += ["--weight-cache-gb", str(args.weight_cache_gb)]
        ctrl = Ctrl.controller(flags, args.engine_args)
        info: dict[str, Any] = {"model": model}
        self.invocation["ctrl_servers"].append(info)
        log(f"{model}: starting the controller server (untimed): {' '.join(ctrl.cmd)}")
        try:
            log_path = self.log_path(model, "ctrl_server")
            info["boot_and_first_load_s"] = ctrl.start(log_path, args.server_timeout)
            info["first_completion"] = stream_completion(ctrl.url, model)
            info["unload_s"] = ctrl.unload(model)
            self.last_unload[model] = time.monotonic()
            info["gpu_used_mib_idle_pool"] = (gpu_memory_used_mib() or (None,))[0]
            self.ctrl, self.ctrl_failed = ctrl, None
            log(
                f"{model}: controller ready in {info['boot_and_first_load_s']:.1f} s "
                f"(pool boot + first load of {model}); idle pool uses "
                f"{info['gpu_used_mib_idle_pool']} MiB of device memory"
            )
        except Exception as e:
            self.ctrl_failed = f"controller server failed to start: {e}"
            info["error"] = clip(str(e))
            log(self.ctrl_failed)
            ctrl.stop()
        self.results.save()

    def quiesce_ctrl(self) -> None:
        """Before a stock start: the controller holds no model and no pooled
        process is starting, so the device is as an idle pool leaves it."""
        if self.ctrl is None or not self.ctrl.alive():
            return
        try:
            for name in self.ctrl.unload_all():
                self.last_unload[name] = time.monotonic()
            waited = self.ctrl.wait_settled()
            if waited > 1:
                log(f"waited {waited:.1f} s for the pool's new processes")
        except (OSError, HttpError) as e:
            log(f"quiescing the controller failed: {e}")

    def stop_ctrl(self) -> None:
        if self.ctrl is not None:
            log("stopping the controller server")
            self.ctrl.stop()
            self.ctrl = None

    # ----------------------------------------------------------------- run

    def run_one(self, scenario: str, model: str, base: Path, rep: int) -> bool:
        """Runs one repetition of ``scenario`` (a batched one: all its runs
        left); False if the deadline stops it."""
        sc = SCENARIOS[scenario]
        if not self.results.fits(f"{model} {scenario}", self.estimate(scenario, model)):
            return False
        # wall_s, on which the deadline estimates rest, includes the quiescing.
        start = time.monotonic()
        try:
            if not sc.needs_ctrl:
                self.quiesce_ctrl()
            runs = sc.run(self, model, base)
        except Exception as e:
            wall = time.monotonic() - start
            self.add(scenario, model, error=f"{type(e).__name__}: {e}", wall_s=wall)
            log(f"{model} rep {rep + 1} {scenario}: FAILED after {wall:.1f} s: {e}")
            if sc.needs_ctrl and self.ctrl and not self.ctrl.alive():
                log(tail(self.ctrl.proc.log_path) if self.ctrl.proc else "")
            return True
        for run in runs if isinstance(runs, list) else [runs]:
            run["rep"] = len(self.record(scenario, model)["runs"])
            run["wall_s"] = time.monotonic() - start  # batched: the whole process
            self.add(scenario, model, run)
            self.progress(scenario, model, run)
        return True

    def progress(self, scenario: str, model: str, run: dict[str, Any]) -> None:
        keys = ("ready", "import", "stop_previous", "llm_init", "weights")
        keys += ("engine_init", "compile_and_warm_up", "unload", "park")
        keys += ("explicit_unpark", "sleep", "wake_up", "first_token")
        phases = run["phases_s"]
        shown = ", ".join(f"{k} {phases[k]:.2f}" for k in keys if k in phases)
        left = self.results.deadline.left()
        log(
            f"{model} rep {run['rep'] + 1}/{self.args.runs} {scenario}: "
            f"{run['total_s']:.2f} s ({shown}) | elapsed "
            f"{self.results.deadline.elapsed():.0f} s, left {left:.0f} s"
        )

    def run_model(self, model: str, base: Path, scenarios: list[str]) -> bool:
        """All pending runs of one model shape; False if the deadline hit."""
        for scenario in scenarios:
            r = self.record(scenario, model)
            if SCENARIOS[scenario].gpu_only and not self.results.on_gpu:
                r["status"] = "skipped"
                r["skip_reason"] = (
                    "no GPU: vLLM's sleep mode (which parking and sleep/wake "
                    "use) exists only on CUDA"
                )
        try:
            if any(
                SCENARIOS[s].needs_ctrl and self.pending(s, model) for s in scenarios
            ):
                seen = [
                    c["boot_and_first_load_s"]
                    for inv in self.data["metadata"]["invocations"]
                    for c in inv.get("ctrl_servers", [])
                    if c.get("model") == model and "boot_and_first_load_s" in c
                ]
                boot = (
                    max(seen) * 1.2 + 30 if seen else CTRL_BOOT_ESTIMATE_S[large(model)]
                )
                if not self.results.fits(f"{model} controller boot", boot):
                    return False
                self.start_ctrl(model, base)
            for rep in range(self.args.runs):
                for scenario in scenarios:
                    if SCENARIOS[scenario].batched or not self.pending(
                        scenario, model, rep
                    ):
                        continue
                    if not self.run_one(scenario, model, base, rep):
                        return False
            batched = [s for s in scenarios if SCENARIOS[s].batched]
            for scenario in batched:
                if self.pending(scenario, model) and not self.run_one(
                    scenario, model, base, 0
                ):
                    return False
        finally:
            self.stop_ctrl()
        return True

    def run(self) -> int:
        shapes = self.args.models.split(",")
        scenarios = [s for s in SCENARIOS if s in self.args.scenarios.split(",")]
        log(
            f"startup benchmark: {', '.join(shapes)}; {', '.join(scenarios)}; "
            f"{self.args.runs} runs; results {self.results.path}"
        )
        with self.results.call():
            for model in shapes:
                base = ensure_models(self.args.models_dir, [model])[model]
                if not self.run_model(model, base, scenarios):
                    break
        todo = [(m, s) for m in shapes for s in scenarios]
        failed = [
            f"{m}/{s}" for m, s in todo if self.record(s, m)["status"] == "failed"
        ]
        if failed:
            log(f"failed, not retried: {', '.join(failed)}")
        missing = [
            f"{m}/{s} {len(self.record(s, m)['runs'])}/{self.args.runs}"
            for m, s in todo
            if self.pending(s, m)
        ]
        return self.results.finish(missing)


def load_phases(post_s: float, resp: dict[str, Any]) -> dict[str, float]:
    """A load reply's per-phase timings, plus what the client saw beyond
    them (router: vLLM's OpenAI app for the model, HTTP)."""
    timings = dict(resp.get("timings_s", {}))
    phases = {k: v for k, v in timings.items() if k != "total"}
    if "total" in timings:
        phases["load_total"] = timings["total"]
        phases["router_http"] = post_s - timings["total"]
    phases["post"] = post_s
    return phases


@dataclass(frozen=True)
class Scenario:
    """A row of ``SCENARIOS``. ``kind``: ``stock`` (no controller; it is
    emptied first), ``load`` (a load through the controller), ``unpark``,
    ``sleep`` (stock, one process for every run, after the others)."""

    run: Callable[[Bench, str, Path], dict[str, Any] | list[dict[str, Any]]]
    kind: str
    timed: str  # what a run times, as the report prints it
    # One run's seconds (small shape, large shape) until one was seen: for
    # the deadline only.
    estimate_s: tuple[float, float]
    phases: tuple[str, ...]  # the median phases the report's table shows

    @property
    def needs_ctrl(self) -> bool:
        return self.kind in ("load", "unpark")

    @property
    def gpu_only(self) -> bool:
        """vLLM's sleep mode (parking, sleep/wake) exists only on CUDA."""
        return self.kind in ("unpark", "sleep")

    @property
    def batched(self) -> bool:
        return self.kind == "sleep"


# A controller load's phases, as its reply and the client report them.
LOAD = ("weights", "profile", "kv_cache", "compile_and_warm_up", "engine_init")
LOAD += ("client", "router_http", "first_token", "first_completion")
STOCK = ("model_loading", "torch_compile", "graph_capture", "engine_init")
NEW_COPY = "POST /v1/controller/models of a never-loaded copy"

# The scenarios, in the order each repetition runs them.
SCENARIOS: dict[str, Scenario] = {
    "stock_serve": Scenario(
        Bench.stock_serve,
        "stock",
        "launch of `vllm serve MODEL` → first completion answered "
        "(/health polled every 0.1 s, then one streamed completion)",
        (100, 150),
        ("ready", *STOCK, "first_token", "first_completion"),
    ),
    "stock_llm": Scenario(
        Bench.stock_llm,
        "stock",
        "launch of a Python process → `LLM(...)` → first output",
        (90, 150),
        ("import", "llm_init", *STOCK, "first_output"),
    ),
    "ctrl_new": Scenario(
        Bench.ctrl_new,
        "load",
        f"{NEW_COPY} (an architecture compiled before) → first completion answered",
        (60, 100),
        (*LOAD, "unload_after"),
    ),
    "ctrl_swap": Scenario(
        Bench.ctrl_swap,
        "load",
        "POST /v1/controller/models of a new checkpoint of the loaded, "
        "idle model's shape (other weights; one model slot: its engine is taken "
        "over) → first completion answered",
        (60, 120),
        ("stop_previous", *LOAD, "unload_after"),
    ),
    "ctrl_swap_cached": Scenario(
        Bench.ctrl_swap_cached,
        "load",
        "POST /v1/controller/models of ctrl_swap's checkpoint again, into the "
        "idle base model's engine, its weights from the host-RAM weight cache "
        "→ first completion answered",
        (30, 60),
        ("stop_previous", *LOAD, "unload_after"),
    ),
    "ctrl_new_arch": Scenario(
        Bench.ctrl_new_arch,
        "load",
        f"{NEW_COPY} with a config.json never compiled on this machine → first "
        "completion answered",
        (60, 100),
        (*LOAD, "unload_after"),
    ),
    "ctrl_reload": Scenario(
        Bench.ctrl_reload,
        "load",
        "POST /v1/controller/models of a model unloaded earlier in this pool → "
        "first completion answered (unload timed separately)",
        (40, 70),
        ("unload", *LOAD),
    ),
    "ctrl_unpark": Scenario(
        Bench.ctrl_unpark,
        "unpark",
        "completion request to a parked model (parked keeping its device "
        "memory, unparked on demand) → answered; explicit /unpark after a "
        "park?free_memory=true timed separately",
        (25, 60),
        ("park", "first_token", "first_completion", "explicit_park")
        + (
            "explicit_unpark",
            "explicit_unpark_client",
            "first_completion_after_unpark",
        ),
    ),
    "sleep_wake": Scenario(
        Bench.sleep_wake,
        "sleep",
        "stock LLM with sleep mode: wake_up() + next output "
        "(sleep(level=1) timed separately)",
        (110, 200),
        ("sleep", "wake_up", "generate"),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="qwen3-0.6b", help="shapes, comma-separated"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--num-workers", type=int, default=3)
    parser.add_argument(
        "--park-memory-gb",
        type=float,
        default=None,
        help="passed to the controller on a GPU (default: the controller's own)",
    )
    parser.add_argument(
        "--weight-cache-gb",
        type=float,
        default=48.0,
        help="the controller's host-RAM weight cache: room for the base "
        "model, ctrl_swap's checkpoint and one ctrl_new copy of the 8B shape",
    )
    add_common_args(parser)
    args = parser.parse_args()
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {list(SCENARIOS)}")
    if args.engine_args is None:
        args.engine_args = DEFAULT_ENGINE_ARGS
    install_sigterm_handler()
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
