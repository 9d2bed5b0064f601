# SPDX-License-Identifier: Apache-2.0
"""Time to the first completion: stock vLLM vs the controller, side by side.

One run per model shape, interleaved: every repetition goes round the
scenarios once (stock_serve, stock_llm, ctrl_new, ctrl_reload, ctrl_unpark),
so slow drifts of the machine hit every scenario alike; sleep_wake (one
process, N cycles) runs after them.

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
  ``brought_up: swap``; its greedy text is compared with that of a normal
  load of the same checkpoint (``tokens_equal_normal_load``);
- ``ctrl_new_arch``: the same as ``ctrl_new``, but its ``config.json`` differs (a unique
  ``rms_norm_eps``), so no compiled artifact on the machine fits it: what
  a model of a never-seen architecture pays;
- ``ctrl_reload``: load again a model unloaded a few minutes earlier →
  first completion (its unload is timed as a phase);
- ``ctrl_unpark``: park a loaded model, then a completion request to it
  (the router unparks it) → first completion; the explicit
  ``/unpark`` is timed too;
- ``sleep_wake``: stock ``LLM(..., enable_sleep_mode=True)``:
  ``sleep(level=1)``, ``wake_up()``, next output (the anchor of parking).

The controller server is started once per model shape, before timing, with
a warm pool (``--num-workers 3``: a parked model keeps its processes). Its
first load of the base model also fills that architecture's compile cache,
which ``ctrl_reload`` and ``ctrl_new`` find (the pool keys it by the HF
config, not the path); a ``ctrl_new_arch`` copy never does.

Results go to ``startup-<gpu>-<date>.json`` after every run; a second call
with the same output resumes where the first stopped (``--deadline-s``
makes a call stop before a run that would not fit). Render them with
``report_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    HERE,
    MAX_TOKENS,
    PROMPT,
    SCENARIOS,
    SHAPES,
    Deadline,
    HttpError,
    Proc,
    clip,
    engine_flags,
    ensure_models,
    free_port,
    gpu_memory_used_mib,
    install_sigterm_handler,
    launch,
    log,
    machine_metadata,
    make_copy,
    median_phases,
    parse_log_phases,
    request_json,
    stream_completion,
    summary,
    tail,
    vllm_cli,
    wait_gpu_free,
    wait_healthy,
    write_json,
)

CTRL_SCENARIOS = (
    "ctrl_new",
    "ctrl_swap",
    "ctrl_new_arch",
    "ctrl_reload",
    "ctrl_unpark",
)
# A scenario that failed this often is not tried again (it would fail again
# and eat the stage's time).
MAX_FAILURES = 2
# Seconds a run takes, until one has been seen (then its longest wall time):
# used only to decide whether a run still fits before the deadline.
DEFAULT_ESTIMATES_S = {
    "small": {
        "stock_serve": 100,
        "stock_llm": 90,
        "ctrl_new": 60,
        "ctrl_swap": 60,
        "ctrl_new_arch": 60,
        "ctrl_reload": 40,
        "ctrl_unpark": 25,
        "sleep_wake": 110,
        "ctrl_boot": 150,
    },
    "large": {
        "stock_serve": 150,
        "stock_llm": 150,
        "ctrl_new": 100,
        "ctrl_swap": 120,
        "ctrl_new_arch": 100,
        "ctrl_reload": 70,
        "ctrl_unpark": 60,
        "sleep_wake": 200,
        "ctrl_boot": 240,
    },
}
WHAT_IS_TIMED = {
    "stock_serve": "launch of `vllm serve MODEL` → first completion answered "
    "(/health polled every 0.1 s, then one streamed completion)",
    "stock_llm": "launch of a Python process → `LLM(...)` → first output",
    "ctrl_new": "POST /v1/controller/models of a never-loaded copy (an "
    "architecture compiled before) → first completion answered",
    "ctrl_swap": "POST /v1/controller/models of a new checkpoint of the loaded, "
    "idle model's shape (other weights; one model slot: its engine is taken "
    "over) → first completion answered",
    "ctrl_new_arch": "POST /v1/controller/models of a never-loaded copy with "
    "a config.json never compiled on this machine → first completion answered",
    "ctrl_reload": "POST /v1/controller/models of a model unloaded earlier "
    "in this pool → first completion answered (unload timed separately)",
    "ctrl_unpark": "completion request to a parked model (unparked on "
    "demand) → answered; explicit /unpark timed separately",
    "sleep_wake": "stock LLM with sleep mode: wake_up() + next output "
    "(sleep(level=1) timed separately)",
}


class Results:
    """The JSON file: metadata, resume state and one record per scenario and
    model, rewritten after every run."""

    def __init__(self, path: Path, mirror: list[str], meta: dict[str, Any]):
        self.path = path
        self.mirror = mirror
        if path.exists():
            self.data = json.loads(path.read_text())
            old = self.data["metadata"].get("engine_args")
            if old != meta["engine_args"]:
                log(f"WARNING: {path} was made with engine args {old}")
            self.data["metadata"].setdefault("invocations", [])
        else:
            self.data = {
                "metadata": {**meta, "invocations": []},
                "state": {},
                "records": [],
            }

    def record(self, scenario: str, model: str) -> dict[str, Any]:
        for r in self.data["records"]:
            if r["scenario"] == scenario and r["model"] == model:
                return r
        r = {
            "scenario": scenario,
            "model": model,
            "gpu": self.data["metadata"]["gpu"],
            "status": "pending",
            "timed": WHAT_IS_TIMED[scenario],
            "runs_s": [],
            "median_s": None,
            "min_s": None,
            "max_s": None,
            "phases_s": {},
            "runs": [],
            "failures": [],
        }
        self.data["records"].append(r)
        return r

    def done(self, scenario: str, model: str) -> int:
        return len(self.record(scenario, model)["runs"])

    def add_run(self, scenario: str, model: str, run: dict[str, Any], target: int):
        r = self.record(scenario, model)
        r["runs"].append(run)
        self._update(r, target)
        self.save()

    def add_failure(
        self, scenario: str, model: str, error: str, wall_s: float, target: int
    ):
        r = self.record(scenario, model)
        r["failures"].append({"error": clip(error), "wall_s": wall_s})
        self._update(r, target)
        self.save()

    def skip(self, scenario: str, model: str, reason: str) -> None:
        r = self.record(scenario, model)
        r["status"] = "skipped"
        r["skip_reason"] = reason
        self.save()

    def _update(self, r: dict[str, Any], target: int) -> None:
        r["runs_s"] = [x["total_s"] for x in r["runs"]]
        r.update(summary(r["runs_s"]))
        r["phases_s"] = median_phases(r["runs"])
        if len(r["runs"]) >= target:
            r["status"] = "ok"
        elif r["runs"]:
            r["status"] = "partial"
        else:
            r["status"] = "failed" if len(r["failures"]) >= MAX_FAILURES else "pending"

    def estimate(self, scenario: str, model: str) -> float:
        walls = [x.get("wall_s", 0) for x in self.record(scenario, model)["runs"]]
        if walls:
            return max(walls) * 1.15
        return DEFAULT_ESTIMATES_S[size_class(model)][scenario]

    def save(self) -> None:
        write_json(self.path, self.data, self.mirror)


def size_class(model: str) -> str:
    spec = SHAPES.get(model, {})
    return "large" if spec.get("hidden_size", 0) >= 2048 else "small"


class CtrlServer:
    """``python -m vllm.worker_controller.serve`` with the base model and a
    warm pool, and its management API."""

    def __init__(
        self,
        args: argparse.Namespace,
        base: Path,
        engine_args: dict[str, Any],
        on_gpu: bool,
    ):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = os.urandom(12).hex()
        cmd = [
            sys.executable,
            "-m",
            "vllm.worker_controller.serve",
            str(base),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num-workers",
            str(args.num_workers),
            "--admin-token",
            self.token,
            "--allowed-model-dir",
            str(base.parent),
            "--keep-alive",
            "-1",
            # Every scenario unloads before it loads, except ctrl_swap, whose
            # load must find no room: then the idle model's engine is swapped.
            "--max-loaded-models",
            "1",
            *engine_flags(engine_args),
        ]
        if on_gpu and args.park_memory_gb is not None:
            cmd += ["--park-memory-gb", str(args.park_memory_gb)]
        self.cmd = cmd
        self.args = args
        self.proc: Proc | None = None

    def start(self, log_path: Path) -> float:
        self.proc = launch(self.cmd, log_path)
        return wait_healthy(self.url, self.proc, self.args.server_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return request_json(
            method,
            self.url + path,
            body,
            token=self.token,
            timeout=self.args.request_timeout,
        )

    def models(self) -> dict[str, str]:
        listing = self.api("GET", "/v1/controller/models")
        if isinstance(listing, dict):
            listing = listing.get("data", listing.get("models", []))
        return {m["name"]: m.get("state", "?") for m in listing}

    def load(self, path: Path, name: str) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        resp = self.api(
            "POST", "/v1/controller/models", {"model": str(path), "name": name}
        )
        return time.perf_counter() - start, resp

    def unload(self, name: str) -> float:
        start = time.perf_counter()
        self.api("DELETE", f"/v1/controller/models/{name}")
        return time.perf_counter() - start

    def unload_all(self) -> dict[str, float]:
        """Unloads every model (parked ones too), so that the next start, stock
        or controller, finds the device as an idle pool leaves it."""
        return {name: self.unload(name) for name in self.models()}

    def wait_settled(self, timeout: float = 120.0) -> float:
        """Waits until no pooled process is booting (a parked model's
        processes are replaced after its unload): a process starting or
        exiting during a stock engine's memory profiling would change the
        device's free memory under it. Returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            workers = self.api("GET", "/v1/controller/workers")
            if isinstance(workers, dict):
                workers = workers.get("data", workers.get("workers", []))
            if not any(w.get("state") == "booting" for w in workers):
                break
            time.sleep(0.5)
        return time.monotonic() - start

    def park(self, name: str, action: str = "park") -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        resp = self.api("POST", f"/v1/controller/models/{name}/{action}")
        return time.perf_counter() - start, resp or {}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s=90)


class Bench:
    """Runs the scenarios of one invocation (all models), resuming from and
    writing to ``Results``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine_args = json.loads(args.engine_args)
        meta = machine_metadata()
        self.on_gpu = meta["gpu"] != "cpu"
        meta.update(
            engine_args=self.engine_args,
            settings={
                "runs": args.runs,
                "num_workers": args.num_workers,
                "park_memory_gb": args.park_memory_gb,
                "prompt": PROMPT,
                "max_tokens": MAX_TOKENS,
                "scenario_order": list(SCENARIOS),
            },
        )
        out = (
            args.out
            or args.results_dir
            / f"startup-{meta['gpu_slug']}-{args.date or meta['date']}.json"
        )
        self.results = Results(out, [d for d in (args.mirror_dir,) if d], meta)
        self.deadline = Deadline(args.deadline_s)
        self.invocation: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "deadline_s": args.deadline_s,
            "stopped": None,
            "ctrl_servers": [],
        }
        self.results.data["metadata"]["invocations"].append(self.invocation)
        self.log_dir = args.log_dir
        self.ctrl: CtrlServer | None = None
        self.ctrl_failed: str | None = None
        self.last_unload: dict[str, float] = {}

    # ------------------------------------------------------------ plumbing

    def log_path(self, model: str, what: str) -> Path:
        return self.log_dir / f"{model}-{what}-{time.strftime('%H%M%S')}.log"

    def pending(self, scenario: str, model: str, rep: int | None = None) -> bool:
        r = self.results.record(scenario, model)
        if r["status"] == "skipped" or len(r["failures"]) >= MAX_FAILURES:
            return False
        done = len(r["runs"])
        return done < self.args.runs and (rep is None or done <= rep)

    def fits(self, what: str, estimate: float) -> bool:
        if self.deadline.fits(estimate):
            return True
        self.invocation["stopped"] = (
            f"deadline: {what} (~{estimate:.0f} s) would not fit in the "
            f"{self.deadline.left():.0f} s left"
        )
        return False

    def gpu_used(self) -> int | None:
        mem = gpu_memory_used_mib()
        return mem[0] if mem else None

    # ---------------------------------------------------------- scenarios

    def stock_serve(self, model: str, base: Path) -> dict[str, Any]:
        used = wait_gpu_free()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            *vllm_cli(),
            "serve",
            str(base),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            model,
            *engine_flags(self.engine_args),
        ]
        proc = launch(cmd, self.log_path(model, "stock_serve"))
        try:
            ready = wait_healthy(url, proc, self.args.server_timeout)
            c = stream_completion(url, model, timeout=self.args.request_timeout)
        finally:
            proc.stop()
        return {
            "total_s": ready + c["completion_s"],
            "phases_s": {
                "ready": ready,
                "first_token": c["first_token_s"],
                "first_completion": c["completion_s"],
                **parse_log_phases(proc.log_path),
            },
            "gpu_used_mib_before": used,
            "log": proc.log_path.name,
        }

    def stock_script_cmd(self, script: str, base: Path, *extra: str) -> list[str]:
        """Command line of a stock-vLLM helper script: the model, these
        engine args, the prompt and the number of tokens, then ``extra``."""
        return [
            sys.executable,
            str(HERE / script),
            str(base),
            json.dumps(self.engine_args),
            PROMPT,
            str(MAX_TOKENS),
            *extra,
        ]

    def stock_llm(self, model: str, base: Path) -> dict[str, Any]:
        used = wait_gpu_free()
        cmd = self.stock_script_cmd("stock_cold_start.py", base)
        proc = launch(cmd, self.log_path(model, "stock_llm"))
        try:
            rc = proc.popen.wait(timeout=self.args.server_timeout)
        finally:
            proc.stop()
        text = proc.log_path.read_text(errors="replace")
        line = next(
            (x for x in text.splitlines() if x.startswith("STOCK_RESULT")), None
        )
        if rc != 0 or line is None:
            raise RuntimeError(f"stock LLM exited with {rc}:\n{tail(proc.log_path)}")
        r = json.loads(line.split(" ", 1)[1])
        return {
            "total_s": r["first_output"] - proc.started_wall,
            "phases_s": {
                "import": r["imported"] - proc.started_wall,
                "llm_init": r["ready"] - r["imported"],
                "first_output": r["first_output"] - r["ready"],
                **parse_log_phases(proc.log_path),
            },
            "gpu_used_mib_before": used,
            "log": proc.log_path.name,
        }

    def _ctrl_phases(self, post_s: float, resp: dict[str, Any]) -> dict[str, float]:
        """The load response's per-phase timings, plus what the client saw
        beyond them (router: vLLM's OpenAI app for the model, HTTP)."""
        timings = dict(resp.get("timings_s", {}))
        phases = {k: v for k, v in timings.items() if k != "total"}
        if "total" in timings:
            phases["load_total"] = timings["total"]
            phases["router_http"] = post_s - timings["total"]
        phases["post"] = post_s
        return phases

    def ctrl_new(self, model: str, base: Path) -> dict[str, Any]:
        return self._ctrl_new_copy(model, base, "new", None)

    def ctrl_swap(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        # A new checkpoint: the same shape and files, other random weights.
        other = ensure_models(base.parent, [model], seed=1)[model]
        unloaded = ctrl.unload_all()
        references = self.results.data.setdefault("state", {}).setdefault(
            "swap_reference_text", {}
        )
        if model not in references:  # the new checkpoint's text, loaded anew
            ref = f"{other.name}-reference"
            ctrl.load(make_copy(other, ref), ref)
            c = stream_completion(ctrl.url, ref, timeout=self.args.request_timeout)
            references[model] = c["text"]
            ctrl.unload(ref)
            self.results.save()
        # The engine to swap into: the base model, loaded, served, idle.
        if ctrl.models().get(model) != "ready":
            ctrl.load(base, model)
            stream_completion(ctrl.url, model, timeout=self.args.request_timeout)
        run, resp, text = self._timed_load_of_copy(ctrl, model, other, "swap")
        if resp.get("brought_up") != "swap":
            raise RuntimeError(
                f"{run['copy']!r} was brought up by {resp.get('brought_up')!r}, "
                f"not a swap: {clip(json.dumps(resp))}"
            )
        run["tokens_equal_normal_load"] = text == references[model]
        run["unloaded_before"] = unloaded
        return run

    def ctrl_new_arch(self, model: str, base: Path) -> dict[str, Any]:
        eps = json.loads((base / "config.json").read_text())["rms_norm_eps"]
        # Unique to this run, so no compile cache anywhere matches it.
        unique = 1 + (uuid.uuid4().int % 10**6) / 10**9
        return self._ctrl_new_copy(model, base, "arch", {"rms_norm_eps": eps * unique})

    def _ctrl_new_copy(
        self, model: str, base: Path, kind: str, overrides: dict[str, Any] | None
    ) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        unloaded = ctrl.unload_all()
        run, _, _ = self._timed_load_of_copy(ctrl, model, base, kind, overrides)
        run["unloaded_before"] = unloaded
        return run

    def _timed_load_of_copy(
        self,
        ctrl: CtrlServer,
        model: str,
        source: Path,
        kind: str,
        overrides: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """Loads a never-used copy of ``source`` → first completion, then
        unloads it; the run record, the load reply and the completion."""
        state = self.results.data.setdefault("state", {})
        used = state.setdefault("used_copies", {}).setdefault(model, [])
        name = f"{model}-{kind}-{len(used) + 1}"
        # Recorded before the load: a copy that a cut-short call loaded once
        # (compile cache written) is never "new" again.
        used.append(name)
        self.results.save()
        post_s, resp = ctrl.load(make_copy(source, name, overrides), name)
        c = stream_completion(ctrl.url, name, timeout=self.args.request_timeout)
        unload_s = ctrl.unload(name)
        run = {
            "total_s": post_s + c["completion_s"],
            "phases_s": {
                **self._ctrl_phases(post_s, resp),
                "first_token": c["first_token_s"],
                "first_completion": c["completion_s"],
                "unload_after": unload_s,
            },
            "copy": name,
        }
        return run, resp, c["text"]

    def ctrl_reload(self, model: str, base: Path) -> dict[str, Any]:
        ctrl = self.require_ctrl()
        unloaded = ctrl.unload_all()
        now = time.monotonic()
        if model in unloaded:
            self.last_unload[model] = now
        post_s, resp = ctrl.load(base, model)
        c = stream_completion(ctrl.url, model, timeout=self.args.request_timeout)
        phases = {
            **self._ctrl_phases(post_s, resp),
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
        models = ctrl.models()
        if models.get(model) != "ready":
            # Not left loaded by ctrl_reload (not selected, or failed): load
            # it untimed, with one completion, as a served model would be.
            ctrl.unload_all()
            ctrl.load(base, model)
            stream_completion(ctrl.url, model, timeout=self.args.request_timeout)
        park_client, parked = ctrl.park(model)
        state = ctrl.models().get(model)
        if state != "parked":
            raise RuntimeError(f"after park, {model!r} is {state!r}: {parked}")
        c = stream_completion(ctrl.url, model, timeout=self.args.request_timeout)
        state_after = ctrl.models().get(model)
        park2_client, parked2 = ctrl.park(model)
        unpark_client, unparked = ctrl.park(model, "unpark")
        c2 = stream_completion(ctrl.url, model, timeout=self.args.request_timeout)
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

    def sleep_wake(self, model: str, base: Path, cycles: int) -> list[dict[str, Any]]:
        self.quiesce_ctrl()
        used = wait_gpu_free()
        cmd = self.stock_script_cmd("stock_sleep_wake.py", base, str(cycles))
        proc = launch(cmd, self.log_path(model, "sleep_wake"))
        rc: int | None = None
        try:
            rc = proc.popen.wait(timeout=self.args.server_timeout)
        except subprocess.TimeoutExpired:
            log(f"sleep/wake still running after {self.args.server_timeout:.0f} s")
        finally:
            proc.stop()
        lines = [
            json.loads(x.split(" ", 1)[1])
            for x in proc.log_path.read_text(errors="replace").splitlines()
            if x.startswith("SLEEP_WAKE ")
        ]
        start = next((x for x in lines if x["kind"] == "start"), None)
        runs = []
        for x in lines:
            if x["kind"] != "cycle":
                continue
            runs.append(
                {
                    "total_s": x["wake_up_s"] + x["generate_s"],
                    "phases_s": {
                        "sleep": x["sleep_s"],
                        "wake_up": x["wake_up_s"],
                        "generate": x["generate_s"],
                    },
                    "same_output": x["same_output"],
                    "process_start_s": (
                        start["first_output"] - proc.started_wall if start else None
                    ),
                    "gpu_used_mib_before": used,
                    "log": proc.log_path.name,
                }
            )
        if rc != 0 and not runs:
            raise RuntimeError(f"sleep/wake exited with {rc}:\n{tail(proc.log_path)}")
        return runs

    # ----------------------------------------------------------- controller

    def require_ctrl(self) -> CtrlServer:
        if self.ctrl is None or not self.ctrl.alive():
            raise RuntimeError(
                self.ctrl_failed or "the controller server is not running"
            )
        return self.ctrl

    def start_ctrl(self, model: str, base: Path) -> None:
        """Boots the controller with ``base`` (untimed), serves one
        completion from it and unloads it: from here on, ``base`` is a
        recently unloaded model whose compile cache is warm."""
        ctrl = CtrlServer(self.args, base, self.engine_args, self.on_gpu)
        info: dict[str, Any] = {"model": model}
        self.invocation["ctrl_servers"].append(info)
        log(f"{model}: starting the controller server (untimed): {' '.join(ctrl.cmd)}")
        try:
            info["boot_and_first_load_s"] = ctrl.start(
                self.log_path(model, "ctrl_server")
            )
            info["first_completion"] = stream_completion(
                ctrl.url, model, timeout=self.args.request_timeout
            )
            info["unload_s"] = ctrl.unload(model)
            self.last_unload[model] = time.monotonic()
            info["gpu_used_mib_idle_pool"] = self.gpu_used()
            self.ctrl = ctrl
            self.ctrl_failed = None
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

    # ------------------------------------------------------------------ run

    def run_one(self, scenario: str, model: str, base: Path, rep: int) -> bool:
        """Runs one repetition of ``scenario``; False if the deadline stops it."""
        if not self.fits(f"{model} {scenario}", self.results.estimate(scenario, model)):
            return False
        # wall_s, on which the deadline estimates rest, includes the quiescing.
        start = time.monotonic()
        if scenario.startswith("stock"):
            self.quiesce_ctrl()
        try:
            run = getattr(self, scenario)(model, base)
        except Exception as e:
            wall = time.monotonic() - start
            self.results.add_failure(
                scenario, model, f"{type(e).__name__}: {e}", wall, self.args.runs
            )
            log(f"{model} rep {rep + 1} {scenario}: FAILED after {wall:.1f} s: {e}")
            if scenario in CTRL_SCENARIOS and not (self.ctrl and self.ctrl.alive()):
                log(
                    tail(self.ctrl.proc.log_path)
                    if self.ctrl and self.ctrl.proc
                    else ""
                )
            return True
        run["rep"] = rep
        run["wall_s"] = time.monotonic() - start
        self.results.add_run(scenario, model, run, self.args.runs)
        self.progress(scenario, model, rep, run)
        return True

    def progress(self, scenario: str, model: str, rep: int, run: dict[str, Any]):
        keys = (
            "ready",
            "import",
            "stop_previous",
            "llm_init",
            "weights",
            "engine_init",
            "compile_and_warm_up",
            "unload",
            "park",
            "explicit_unpark",
            "sleep",
            "wake_up",
            "first_token",
        )
        phases = ", ".join(
            f"{k} {run['phases_s'][k]:.2f}" for k in keys if k in run["phases_s"]
        )
        log(
            f"{model} rep {rep + 1}/{self.args.runs} {scenario}: "
            f"{run['total_s']:.2f} s ({phases}) | elapsed "
            f"{self.deadline.elapsed():.0f} s, left {self.deadline.left():.0f} s"
        )

    def run_model(self, model: str, base: Path, scenarios: list[str]) -> bool:
        """All pending runs of one model shape; False if the deadline hit."""
        for scenario in scenarios:
            if (
                scenario in ("ctrl_unpark", "sleep_wake")
                and not self.on_gpu
                and self.results.record(scenario, model)["status"] != "skipped"
            ):
                self.results.skip(
                    scenario,
                    model,
                    "no GPU: vLLM's sleep mode (which parking and "
                    "sleep/wake use) exists only on CUDA",
                )
        ctrl_pending = [
            s for s in scenarios if s in CTRL_SCENARIOS and self.pending(s, model)
        ]
        if ctrl_pending:
            seen = [
                c["boot_and_first_load_s"]
                for inv in self.results.data["metadata"]["invocations"]
                for c in inv.get("ctrl_servers", [])
                if c.get("model") == model and "boot_and_first_load_s" in c
            ]
            estimate = (
                max(seen) * 1.2 + 30
                if seen
                else DEFAULT_ESTIMATES_S[size_class(model)]["ctrl_boot"]
            )
            if not self.fits(f"{model} controller boot", estimate):
                return False
            self.start_ctrl(model, base)
        try:
            for rep in range(self.args.runs):
                for scenario in scenarios:
                    if scenario == "sleep_wake" or not self.pending(
                        scenario, model, rep
                    ):
                        continue
                    if scenario in CTRL_SCENARIOS and self.ctrl_failed:
                        self.results.add_failure(
                            scenario, model, self.ctrl_failed, 0.0, self.args.runs
                        )
                        continue
                    if not self.run_one(scenario, model, base, rep):
                        return False
            if "sleep_wake" in scenarios and self.pending("sleep_wake", model):
                if not self.fits(
                    f"{model} sleep_wake", self.results.estimate("sleep_wake", model)
                ):
                    return False
                self.run_sleep_wake(model, base)
        finally:
            self.stop_ctrl()
        return True

    def run_sleep_wake(self, model: str, base: Path) -> None:
        cycles = self.args.runs - self.results.done("sleep_wake", model)
        start = time.monotonic()
        try:
            runs = self.sleep_wake(model, base, cycles)
        except Exception as e:
            wall = time.monotonic() - start
            self.results.add_failure(
                "sleep_wake", model, f"{type(e).__name__}: {e}", wall, self.args.runs
            )
            log(f"{model} sleep_wake: FAILED after {wall:.1f} s: {e}")
            return
        wall = time.monotonic() - start
        for i, run in enumerate(runs):
            run["rep"] = self.results.done("sleep_wake", model)
            run["wall_s"] = wall  # the whole process, for the deadline estimate
            self.results.add_run("sleep_wake", model, run, self.args.runs)
            self.progress("sleep_wake", model, i, run)
        if len(runs) < cycles:
            self.results.add_failure(
                "sleep_wake",
                model,
                f"{len(runs)} of {cycles} cycles; see the log",
                wall,
                self.args.runs,
            )

    def run(self) -> int:
        shapes = self.args.models.split(",")
        scenarios = [s for s in SCENARIOS if s in self.args.scenarios.split(",")]
        log(
            f"startup benchmark: {', '.join(shapes)}; {', '.join(scenarios)}; "
            f"{self.args.runs} runs; results {self.results.path}"
        )
        try:
            for model in shapes:
                paths = ensure_models(self.args.models_dir, [model])
                if not self.run_model(model, paths[model], scenarios):
                    log(f"STOPPED: {self.invocation['stopped']}")
                    break
        except BaseException as e:  # SIGTERM (SystemExit), Ctrl-C, a bug
            self.invocation["stopped"] = f"interrupted: {type(e).__name__}: {e}"
            raise
        finally:
            self.stop_ctrl()
            self.invocation["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.results.save()
        remaining = [
            f"{model}/{scenario} {self.results.done(scenario, model)}/{self.args.runs}"
            for model in shapes
            for scenario in scenarios
            if self.pending(scenario, model)
        ]
        if remaining:
            log(
                "NOT DONE (run the same command again to continue): "
                + "; ".join(remaining)
            )
            return 3
        failed = [
            f"{model}/{scenario}"
            for model in shapes
            for scenario in scenarios
            if self.results.record(scenario, model)["status"] == "failed"
        ]
        log(
            f"DONE: {self.results.path}"
            + (f" (failed, not retried: {', '.join(failed)})" if failed else "")
        )
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="qwen3-0.6b", help="shapes, comma-separated"
    )
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/bench/models"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario")
    parser.add_argument(
        "--engine-args",
        default=json.dumps(DEFAULT_ENGINE_ARGS),
        help="JSON of EngineArgs fields, the same for every side",
    )
    parser.add_argument("--num-workers", type=int, default=3)
    parser.add_argument(
        "--park-memory-gb",
        type=float,
        default=None,
        help="passed to the controller on a GPU (default: the controller's own)",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    parser.add_argument(
        "--date",
        default=None,
        help="date in the results file's name (default: today); the driver "
        "fixes it so that a call after midnight still resumes",
    )
    parser.add_argument("--mirror-dir", default=None, help="also copy results here")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench/logs"))
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no run that would not end within this many seconds",
    )
    parser.add_argument("--server-timeout", type=float, default=600)
    parser.add_argument("--request-timeout", type=float, default=600)
    args = parser.parse_args()
    install_sigterm_handler()
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
