# SPDX-License-Identifier: Apache-2.0
"""Time to the first completion: stock vLLM vs the controller, side by side.

Per model shape, each repetition goes once round the scenarios (``SCENARIOS``
at the end), so that slow drifts hit all alike; sleep_wake (one process)
follows. Fairness:

- a "new" model (``ctrl_new``, ``ctrl_swap``) is a never-used hard-linked
  copy: new name and path, its files in the page cache as stock's are;
- ``ctrl_new_arch``'s copy has a unique ``rms_norm_eps``: no compiled
  artifact fits it;
- ``ctrl_swap`` counts only if the reply says ``brought_up: swap``, its tokens
  compared with a normal load's; ``ctrl_swap_cached`` swaps it in again from
  the host-RAM weight cache;
- the controller starts before timing (``--num-workers 3``); its first load
  of the base model fills the compile cache that ``ctrl_reload`` and
  ``ctrl_new`` find (keyed by the HF config, not the path).

Results: ``startup-<gpu>-<date>.json`` (a second call resumes);
``report_gpu.py`` renders them.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gpu_common as common
from gpu_common import HttpError, Server, log, stream_completion

MAX_FAILURES = 2  # then a scenario is not tried again
# The controller's boot and first load (small, large shape) until one was
# seen: for the deadline only.
CTRL_BOOT_ESTIMATE_S = (150, 240)
# Room for the base model, ctrl_swap's checkpoint and a ctrl_new copy (8B).
WEIGHT_CACHE_GB = 48.0


def large(model: str) -> int:
    """1 for a large shape (the index into the estimates), else 0."""
    return int(common.SHAPES.get(model, {}).get("hidden_size", 0) >= 2048)


def load_phases(post_s: float, resp: dict[str, Any]) -> dict[str, float]:
    """A load reply's phases, plus what the client saw beyond them."""
    phases = dict(resp.get("timings_s", {}))
    if "total" in phases:
        phases["load_total"] = phases.pop("total")
        phases["router_http"] = post_s - phases["load_total"]
    return phases | {"post": post_s}


class Ctrl(Server):
    """Our server, with the scenarios' management calls."""

    def unload_all(self) -> dict[str, float]:
        """Unloads every model (parked ones too): an idle pool's device."""
        return {name: self.unload(name) for name in self.models()}

    def serve_idle(self, base: Path, model: str) -> None:
        """``base`` loaded, served once and idle (to swap over or park)."""
        if self.models().get(model) != "ready":
            self.unload_all()
            self.load(base, model)
            stream_completion(self.url, model)

    def wait(self, path: str, done: Callable[[Any], bool], timeout: float) -> float:
        """Polls ``GET path`` until ``done(reply)``; the seconds it took."""
        start = time.monotonic()
        while not done(self.api("GET", path)):
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{path}: not there after {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - start


class Bench:
    """One call's scenarios (all models), resuming the results file."""

    def __init__(self, args: Any):
        self.args = args
        settings = {
            "runs": args.runs,
            "num_workers": args.num_workers,
            "park_memory_gb": args.park_memory_gb,
            "prompt": common.PROMPT,
            "max_tokens": common.MAX_TOKENS,
            "scenario_order": list(SCENARIOS),
        }
        meta = {"engine_args": args.engine_args, "settings": settings}
        empty = {"state": {}, "records": []}
        self.results = common.Results(args, "startup", meta, empty)
        self.data = self.results.data
        self.state = self.data.setdefault("state", {})
        self.results.invocation.update(deadline_s=args.deadline_s, ctrl_servers=[])
        self.ctrl: Ctrl | None = None
        self.ctrl_failed = "the controller server is not running"
        self.last_unload: dict[str, float] = {}

    # ------------------------------------------------------------- records

    def record(self, scenario: str, model: str) -> dict[str, Any]:
        for r in self.data["records"]:
            if r["scenario"] == scenario and r["model"] == model:
                return r
        r = {"scenario": scenario, "model": model, "gpu": self.data["metadata"]["gpu"]}
        r |= {"status": "pending", "timed": SCENARIOS[scenario].timed, "runs_s": []}
        r |= common.summary([]) | {"phases_s": {}, "runs": [], "failures": []}
        self.data["records"].append(r)
        return r

    def add(
        self, scenario: str, model: str, run: dict | None = None, error="", wall_s=0.0
    ) -> None:
        """Adds a run (or a failure), updates the summary, saves."""
        r = self.record(scenario, model)
        if run is not None:
            r["runs"].append(run)
        else:
            r["failures"].append({"error": common.clip(error), "wall_s": wall_s})
        r["runs_s"] = [x["total_s"] for x in r["runs"]]
        r.update(common.summary(r["runs_s"]))
        values: dict[str, list[float]] = {}
        for x in r["runs"]:
            for k, v in x.get("phases_s", {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    values.setdefault(k, []).append(v)
        r["phases_s"] = {k: statistics.median(v) for k, v in values.items()}
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

    def log_path(self, model: str, what: str) -> Path:
        return self.args.log_dir / f"{model}-{what}-{time.strftime('%H%M%S')}.log"

    # ----------------------------------------------------------- scenarios

    def stock_serve(self, model: str, base: Path) -> dict[str, Any]:
        used = common.wait_gpu_free()
        server = Server.stock(base, model, self.args.engine_args)
        log_path = self.log_path(model, "stock_serve")
        try:
            ready = server.start(log_path, self.args.server_timeout)
            c = stream_completion(server.url, model)
        finally:
            server.stop(60)
        phases = {"ready": ready, "first_token": c["first_token_s"]}
        phases |= {"first_completion": c["completion_s"]}
        return {
            "total_s": ready + c["completion_s"],
            "phases_s": phases | common.parse_log_phases(log_path),
            "gpu_used_mib_before": used,
            "log": log_path.name,
        }

    def stock_llm(self, model: str, base: Path, cycles: int = 0) -> Any:
        used = common.wait_gpu_free()
        log_path = self.log_path(model, "sleep_wake" if cycles else "stock_llm")
        args = (base, self.args.engine_args, log_path, self.args.server_timeout)
        proc, run, lines = common.run_stock_llm(*args, sleep_cycles=cycles)
        info = {"gpu_used_mib_before": used, "log": log_path.name}
        del run["token_ids"]
        if not cycles:
            run["phases_s"] |= common.parse_log_phases(log_path)
            return run | info
        runs = []
        for x in lines:
            phases = {"sleep": x["sleep_s"], "wake_up": x["wake_up_s"]}
            runs.append(
                {
                    "total_s": x["wake_up_s"] + x["generate_s"],
                    "phases_s": phases | {"generate": x["generate_s"]},
                    "same_output": x["same_output"],
                    "process_start_s": run["total_s"],
                }
                | info
            )
        if len(runs) < cycles:
            error = f"{len(runs)} of {cycles} cycles; see the log"
            wall = time.monotonic() - proc.started
            self.add("sleep_wake", model, error=error, wall_s=wall)
        return runs

    def sleep_wake(self, model: str, base: Path) -> list[dict[str, Any]]:
        """All the runs still to do, in one process."""
        done = len(self.record("sleep_wake", model)["runs"])
        return self.stock_llm(model, base, cycles=self.args.runs - done)

    def ctrl_new(self, model: str, base: Path, arch: bool = False) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        config = None
        if arch:  # unique to this run, so no compile cache anywhere matches it
            eps = json.loads((base / "config.json").read_text())["rms_norm_eps"]
            config = {"rms_norm_eps": eps * (1 + uuid.uuid4().int % 10**6 / 10**9)}
        unloaded = ctrl.unload_all()
        run, _, _ = self.load_copy(ctrl, model, base, "arch" if arch else "new", config)
        return run | {"unloaded_before": unloaded}

    def ctrl_new_arch(self, model: str, base: Path) -> dict[str, Any]:
        return self.ctrl_new(model, base, arch=True)

    def ctrl_swap(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        # A new checkpoint: the same shape and files, other random weights.
        other = common.ensure_models(base.parent, [model], seed=1)[model]
        unloaded = ctrl.unload_all()
        references = self.state.setdefault("swap_reference_token_ids", {})
        if model not in references:  # the new checkpoint's tokens, loaded anew
            ref = f"{other.name}-reference"
            ctrl.load(common.make_copy(other, ref), ref)
            references[model] = stream_completion(ctrl.url, ref)["token_ids"]
            ctrl.unload(ref)
            self.results.save()
        ctrl.serve_idle(base, model)
        run, resp, c = self.load_copy(ctrl, model, other, "swap")
        check_swap(run["copy"], resp)
        run["tokens_equal_normal_load"] = c["token_ids"] == references[model]
        run["weights_load"] = resp.get("weights_load")
        # ctrl_swap_cached swaps this copy in again, from the weight cache.
        self.state.setdefault("swap_copy", {})[model] = str(other.parent / run["copy"])
        self.results.save()
        return run | {"unloaded_before": unloaded}

    def ctrl_swap_cached(self, model: str, base: Path) -> dict[str, Any]:
        """ctrl_swap's checkpoint again, from the weight cache."""
        ctrl = self.require_ctrl()
        copy = self.state.get("swap_copy", {}).get(model)
        if copy is None:
            raise RuntimeError("ctrl_swap_cached needs a ctrl_swap run before it")
        path = Path(copy)

        def cached(cache: dict[str, Any]) -> bool:
            return str(path.resolve()) in {e["model"] for e in cache["entries"]}

        cached_after_s = ctrl.wait("/v1/controller/weight-cache", cached, 300)
        unloaded = ctrl.unload_all()
        ctrl.serve_idle(base, model)
        run, resp, c = self.timed_load(ctrl, path, path.name)
        check_swap(path.name, resp, "host_cache")
        references = self.state.get("swap_reference_token_ids", {})
        return run | {
            "copy": path.name,
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
        run, _, _ = self.timed_load(ctrl, base, model, unload_after=False)
        if model in unloaded:
            run["phases_s"]["unload"] = unloaded[model]
        return run | {
            "unloaded_s_ago": now - self.last_unload.get(model, now),
            "unloaded_before": unloaded,
        }

    def ctrl_unpark(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        # Left loaded by ctrl_reload, else loaded untimed, as a served model.
        ctrl.serve_idle(base, model)
        park_client, parked = ctrl.post(f"/{model}/park")
        if (state := ctrl.models().get(model)) != "parked":
            raise RuntimeError(f"after park, {model!r} is {state!r}: {parked}")
        c = stream_completion(ctrl.url, model)
        state_after = ctrl.models().get(model)
        # Parked again, its memory freed now: the unpark maps it again.
        _, parked2 = ctrl.post(f"/{model}/park?free_memory=true")
        unpark_client, unparked = ctrl.post(f"/{model}/unpark")
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

    def timed_load(
        self, ctrl: Ctrl, path: Path, name: str, unload_after: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Timed POST of ``path`` as ``name`` and first completion (unload
        untimed): the run record, the reply, the completion."""
        post_s, resp = ctrl.load(path, name)
        c = stream_completion(ctrl.url, name)
        phases = load_phases(post_s, resp) | {"first_token": c["first_token_s"]}
        phases["first_completion"] = c["completion_s"]
        if unload_after:
            phases["unload_after"] = ctrl.unload(name)
        return {"total_s": post_s + c["completion_s"], "phases_s": phases}, resp, c

    def load_copy(
        self, ctrl: Ctrl, model: str, source: Path, kind: str, config=None
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``timed_load`` of a never-used copy of ``source``."""
        used = self.state.setdefault("used_copies", {}).setdefault(model, [])
        name = f"{model}-{kind}-{len(used) + 1}"
        # Recorded before the load: a copy that a cut-short call loaded once
        # (compile cache written) is never "new" again.
        used.append(name)
        self.results.save()
        copy = common.make_copy(source, name, config)
        run, resp, c = self.timed_load(ctrl, copy, name)
        return run | {"copy": name}, resp, c

    # ---------------------------------------------------------- controller

    def require_ctrl(self) -> Ctrl:
        if self.ctrl is None or not self.ctrl.alive():
            raise RuntimeError(self.ctrl_failed)
        return self.ctrl

    def start_ctrl(self, model: str, base: Path) -> None:
        """Boots the controller with ``base`` (untimed), serves and unloads it:
        ``base`` is now a recently unloaded model, its compile cache warm."""
        args = self.args
        flags = [str(base), "--num-workers", str(args.num_workers)]
        flags += ["--allowed-model-dir", str(base.parent), "--keep-alive", "-1"]
        # One slot: ctrl_swap's load finds no room and swaps the idle engine.
        flags += ["--max-loaded-models", "1"]
        if self.results.on_gpu and args.park_memory_gb is not None:
            flags += ["--park-memory-gb", str(args.park_memory_gb)]
        flags += ["--weight-cache-gb", str(WEIGHT_CACHE_GB)]
        ctrl = Ctrl.controller(flags, args.engine_args)
        info: dict[str, Any] = {"model": model}
        self.results.invocation["ctrl_servers"].append(info)
        log(f"{model}: starting the controller server (untimed): {' '.join(ctrl.cmd)}")
        try:
            log_path = self.log_path(model, "ctrl_server")
            info["boot_and_first_load_s"] = ctrl.start(log_path, args.server_timeout)
            info["first_completion"] = stream_completion(ctrl.url, model)
            info["unload_s"] = ctrl.unload(model)
            self.last_unload[model] = time.monotonic()
            info["gpu_used_mib_idle_pool"] = (common.gpu_memory_used_mib() or [None])[0]
            self.ctrl = ctrl
            self.ctrl_failed = "the controller server is not running"
            log(
                f"{model}: controller ready in {info['boot_and_first_load_s']:.1f} s "
                f"(pool boot + first load); idle pool uses "
                f"{info['gpu_used_mib_idle_pool']} MiB of device memory"
            )
        except Exception as e:
            self.ctrl_failed = f"controller server failed to start: {e}"
            info["error"] = common.clip(str(e))
            log(self.ctrl_failed)
            ctrl.stop()
        self.results.save()

    def quiesce_ctrl(self) -> None:
        """Before a stock start: no model loaded, no pooled process booting
        (it would change free memory under stock's memory profiling)."""
        if self.ctrl is None or not self.ctrl.alive():
            return
        try:
            for name in self.ctrl.unload_all():
                self.last_unload[name] = time.monotonic()

            def settled(workers: list[dict[str, Any]]) -> bool:
                return not any(w.get("state") == "booting" for w in workers)

            self.ctrl.wait("/v1/controller/workers", settled, 120)
        except (OSError, HttpError, RuntimeError) as e:
            log(f"quiescing the controller failed: {e}")

    # ----------------------------------------------------------------- run

    def run_one(self, scenario: str, model: str, base: Path) -> bool:
        """One repetition of ``scenario`` (batched: all); False at the deadline."""
        sc = SCENARIOS[scenario]
        walls = [x.get("wall_s", 0) for x in self.record(scenario, model)["runs"]]
        estimate = max(walls) * 1.15 if walls else sc.estimate_s[large(model)]
        if not self.results.fits(f"{model} {scenario}", estimate):
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
            log(f"{model} {scenario}: FAILED after {wall:.1f} s: {e}")
            ctrl = self.ctrl
            if sc.needs_ctrl and ctrl and ctrl.proc and not ctrl.alive():
                log(common.tail(ctrl.proc.log_path))
            return True
        for run in runs if isinstance(runs, list) else [runs]:
            run["rep"] = len(self.record(scenario, model)["runs"])
            run["wall_s"] = time.monotonic() - start  # batched: the whole process
            self.add(scenario, model, run)
            phases = ", ".join(
                f"{k} {v:.2f}" for k, v in run["phases_s"].items() if k in sc.phases
            )
            log(
                f"{model} rep {run['rep'] + 1}/{self.args.runs} {scenario}: "
                f"{run['total_s']:.2f} s ({phases}) | elapsed "
                f"{self.results.elapsed():.0f} s, left {self.results.left():.0f} s"
            )
        return True

    def run_model(self, model: str, base: Path, scenarios: list[str]) -> bool:
        """All pending runs of one shape; False at the deadline."""
        for scenario in scenarios:  # the records in the scenarios' order
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
            # Each repetition goes round the scenarios; the batched ones last.
            order = [(rep, s) for rep in range(self.args.runs) for s in scenarios]
            order = [x for x in order if not SCENARIOS[x[1]].batched]
            order += [(None, s) for s in scenarios if SCENARIOS[s].batched]
            for rep, scenario in order:
                pending = self.pending(scenario, model, rep)
                if pending and not self.run_one(scenario, model, base):
                    return False
        finally:
            if self.ctrl is not None:
                log("stopping the controller server")
                self.ctrl.stop()
                self.ctrl = None
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
                base = common.ensure_models(self.args.models_dir, [model])[model]
                if not self.run_model(model, base, scenarios):
                    break
        todo = [(m, s) for m in shapes for s in scenarios]
        if failed := [
            f"{m}/{s}" for m, s in todo if self.record(s, m)["status"] == "failed"
        ]:
            log(f"failed, not retried: {', '.join(failed)}")
        missing = [
            f"{m}/{s} {len(self.record(s, m)['runs'])}/{self.args.runs}"
            for m, s in todo
            if self.pending(s, m)
        ]
        return self.results.finish(missing)


def check_swap(name: str, resp: dict[str, Any], source: str | None = None) -> None:
    """A swap run counts only if the reply says so (weights from ``source``)."""
    got = (resp.get("weights_load") or {}).get("source")
    if resp.get("brought_up") != "swap" or (source and got != source):
        raise RuntimeError(
            f"{name!r}: brought up by {resp.get('brought_up')!r}, weights from "
            f"{got!r}: {common.clip(json.dumps(resp))}"
        )


@dataclass(frozen=True)
class Scenario:
    """A row of ``SCENARIOS``: its ``Bench`` method, kind, what a run times."""

    run: Callable[[Bench, str, Path], dict[str, Any] | list[dict[str, Any]]]
    kind: str
    timed: str

    @property
    def needs_ctrl(self) -> bool:
        return self.kind in ("load", "unpark")

    @property
    def gpu_only(self) -> bool:
        """vLLM's sleep mode (parking, sleep/wake) exists only on CUDA."""
        return self.kind in ("unpark", "sleep")

    @property
    def batched(self) -> bool:
        """One process for all its runs, after the other scenarios."""
        return self.kind == "sleep"

    @property
    def estimate_s(self) -> tuple[float, float]:
        return KINDS[self.kind][0]

    @property
    def phases(self) -> tuple[str, ...]:
        return KINDS[self.kind][1]


STOCK = ("model_loading", "torch_compile", "graph_capture", "engine_init")
FIRST = ("first_token", "first_completion", "first_output")
LOAD = ("weights", "profile", "kv_cache", "compile_and_warm_up", "engine_init")
LOAD += ("client", "router_http", "first_token", "first_completion")
UNPARK = ("park", "first_token", "first_completion", "explicit_park")
UNPARK += ("explicit_unpark", "explicit_unpark_client", "first_completion_after_unpark")
# Per kind: one run's seconds (small shape, large shape) until one was seen,
# for the deadline only; the median phases the report's table shows, in this
# order, where a run has them.
KINDS: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {
    "stock": ((100, 150), ("ready", "import", "llm_init", *STOCK, *FIRST)),
    "load": ((60, 120), ("unload", "stop_previous", *LOAD, "unload_after")),
    "unpark": ((25, 60), UNPARK),
    "sleep": ((110, 200), ("sleep", "wake_up", "generate")),
}
NEW_COPY = "POST /v1/controller/models of a never-loaded copy"
ANSWERED = "→ first completion answered"

# The scenarios, in the order each repetition runs them.
SCENARIOS: dict[str, Scenario] = {
    "stock_serve": Scenario(
        Bench.stock_serve,
        "stock",
        f"launch of `vllm serve MODEL` {ANSWERED} "
        "(/health polled every 0.1 s, then one streamed completion)",
    ),
    "stock_llm": Scenario(
        Bench.stock_llm,
        "stock",
        "launch of a Python process → `LLM(...)` → first output",
    ),
    "ctrl_new": Scenario(
        Bench.ctrl_new,
        "load",
        f"{NEW_COPY} (an architecture compiled before) {ANSWERED}",
    ),
    "ctrl_swap": Scenario(
        Bench.ctrl_swap,
        "load",
        "POST /v1/controller/models of a new checkpoint of the loaded, "
        "idle model's shape (other weights; one model slot: its engine is taken "
        f"over) {ANSWERED}",
    ),
    "ctrl_swap_cached": Scenario(
        Bench.ctrl_swap_cached,
        "load",
        "POST /v1/controller/models of ctrl_swap's checkpoint again, into the "
        "idle base model's engine, its weights from the host-RAM weight cache "
        + ANSWERED,
    ),
    "ctrl_new_arch": Scenario(
        Bench.ctrl_new_arch,
        "load",
        f"{NEW_COPY} with a config.json never compiled on this machine {ANSWERED}",
    ),
    "ctrl_reload": Scenario(
        Bench.ctrl_reload,
        "load",
        "POST /v1/controller/models of a model unloaded earlier in this pool "
        f"{ANSWERED} (unload timed separately)",
    ),
    "ctrl_unpark": Scenario(
        Bench.ctrl_unpark,
        "unpark",
        "completion request to a parked model (parked keeping its device "
        "memory, unparked on demand) → answered; explicit /unpark after a "
        "park?free_memory=true timed separately",
    ),
    "sleep_wake": Scenario(
        Bench.sleep_wake,
        "sleep",
        "stock LLM with sleep mode: wake_up() + next output "
        "(sleep(level=1) timed separately)",
    ),
}


def main() -> None:
    parser = common.common_parser(__doc__, common.DEFAULT_ENGINE_ARGS)
    parser.add_argument("--models", default="qwen3-0.6b", help="shapes, a,b")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--num-workers", type=int, default=3)
    parser.add_argument(
        "--park-memory-gb", type=float, help="on a GPU (default: the controller's)"
    )
    args = parser.parse_args()
    if unknown := set(args.scenarios.split(",")) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {list(SCENARIOS)}")
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
