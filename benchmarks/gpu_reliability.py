# SPDX-License-Identifier: Apache-2.0
"""Reliability of ``python -m vllm.worker_controller.serve`` under model churn,
process kills and a cold start of several models at once, on a real GPU.

Three scenarios, each one server (or two) within one device command:

- ``churn``: copies of one model shape under ``--allowed-model-dir``
  (``rel-a``, ``rel-b``, ``rel-c``: different names and paths, the same
  weights). Upstream's ``vllm bench serve`` streams to ``rel-a`` while side
  clients keep asking for ``rel-b`` / ``rel-c`` (forcing loads, LRU
  evictions, parks, unparks) and the management API loads, parks, unparks and
  unloads them. Two server configurations: ``max1`` (``--max-loaded-models
  1``, three workers) and ``fewworkers`` (two workers for three models).
  Each: a bench under churn, a tail of churn alone, a second bench (``rel-a``
  may have been parked or unloaded meanwhile).
- ``kill``: while the bench streams to ``rel-a``, SIGKILL its pooled worker
  (then, in a second phase, its engine host). Measures when the in-flight
  requests got answers, whether and when the next request to ``rel-a``
  succeeds (an automatic reload), the errors of ``rel-b`` (served meanwhile
  by a small client loop) and how long until the pool is full again.
- ``cold3``: 200 concurrent requests over three models none of which is
  loaded (``--num-workers 3``, ``--gpu-memory-utilization 0.25``, one GPU).

Every response of our own clients is counted: status codes, error ``type``
and message (first 200 characters, deduplicated with counts), transport
errors (connection refused / reset / closed, truncated bodies) and timeouts
(a hang, by a per-request limit). The bench's own JSON gives its completed
and failed counts; it counts a stream that breaks off after its first token
as completed, so streams shorter than the fixed output length are counted
apart (``completed_short``).

Nothing here assumes a status code, every outcome is recorded, and the
server's process group is always stopped at the end (SIGTERM, then
SIGKILL). Every loop is bounded in time and count; ``--deadline-s`` bounds
the whole call, which stops before a run that would not fit and exits 3
("NOT DONE"): calling it again resumes with the runs not yet in the results
file, ``gpu-reliability-<gpu>-<date>.json``. The client is aiohttp (what
``vllm bench serve`` itself uses, so it is on every machine that can run the
bench), with a new connection per request so that a keep-alive race cannot
pass for a server reset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    DEFAULT_ENGINE_ARGS,
    PROMPT,
    HttpError,
    Proc,
    Results,
    Server,
    add_common_args,
    bench_serve_cmd,
    clip,
    ensure_models,
    gpu_memory_used_mib,
    install_sigterm_handler,
    launch,
    log,
    make_copy,
    tail,
    wait_gpu_free,
)

SCENARIOS = ("churn", "kill", "cold3")
CHURN_RUNS = ("max1", "fewworkers")
KILL_TARGETS = ("worker", "engine_host")
MODELS = ("rel-a", "rel-b", "rel-c")
# Seconds, for the deadline only (H200, Qwen3-0.6B shape, compile cache warm
# after the first start; a fresh machine's first compile adds ~30-70 s).
ESTIMATES_S = {"churn": 270, "kill_server": 90, "kill": 150, "cold3": 180}
# What stopping a server may take: SIGTERM drains for up to 30 s, then
# unloads every model and stops the pool.
STOP_RESERVE_S = 60
MESSAGE_CHARS = 200
# The bench's warm-up requests run before its timed ones: more requests than
# this running at once means the timed part has begun.
BENCH_WARMUPS = 2
MAX_ERROR_KINDS = 40
GPU_ENGINE_ARGS = {**DEFAULT_ENGINE_ARGS, "dtype": "bfloat16"}
SMOKE_ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256}


@dataclass
class Settings:
    """The tunables of a call (recorded in the results' metadata): the
    GPU's values; ``SMOKE`` changes them for the CPU smoke run."""

    base_shape: str = "qwen3-0.6b"
    num_prompts: int = 1000
    concurrency: int = 32
    input_len: int = 256
    output_len: int = 128
    kill_output_len: int = 256
    seed: int = 0
    request_timeout: float = 120  # before one of our requests counts as a hang
    gpu_memory_utilization: float = 0.25
    park_memory_gb: float = 48
    side_concurrency: int = 4
    admin_period_s: float = 2.0
    tail_s: float = 20
    bench_timeout: float = 300
    bench2_timeout: float = 90  # churn's 2nd bench: rel-a may wait behind others
    # A client loop's requests in flight get this long to finish at its stop
    # (a router's busy wait is 30 s); cut ones are counted as such.
    stop_grace_s: float = 40
    probes: int = 4
    probe_tokens: int = 2048
    kill_delay_s: float = 3.0
    pool_budget_s: float = 90
    kill_workers: int = 2
    recovery_budget_s: float = 90
    cold_requests: int = 200
    cold_timeout: float = 300  # per request in cold3: three first loads, compiles


# CPU development machine: tiny model, eager, few requests.
SMOKE = {
    "base_shape": "tiny-qwen3",
    "num_prompts": 40,
    "concurrency": 4,
    "input_len": 32,
    "output_len": 16,
    "kill_output_len": 64,
    "side_concurrency": 2,
    "tail_s": 10,
    "probes": 2,
    "probe_tokens": 200,
    "kill_delay_s": 0.5,
    "cold_requests": 12,
    "recovery_budget_s": 40,
    "pool_budget_s": 60,
}

# ----------------------------------------------------------------- counting


@dataclass
class Answer:
    """One request's outcome: an HTTP status ("200", "503", ...; "200_short"
    for a 200 without all its tokens) or a transport outcome ("timeout",
    "reset", "disconnected", "refused", "truncated", "cancelled_at_stop")."""

    outcome: str
    latency_s: float
    body: Any = None
    err_type: str | None = None
    message: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "200"

    def brief(self) -> dict[str, Any]:
        out = {"outcome": self.outcome, "latency_s": round(self.latency_s, 3)}
        if self.err_type:
            out["type"] = self.err_type
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class Tally:
    """Every answer of one client, by outcome. Errors are deduplicated by
    (outcome, type, message's first 200 characters), with a count and when
    they were first and last seen (seconds since ``t0``)."""

    t0: float
    statuses: Counter = field(default_factory=Counter)
    errors: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    retry_after: Counter = field(default_factory=Counter)

    def add(self, a: Answer) -> Answer:
        self.statuses[a.outcome] += 1
        self.latencies.setdefault(a.outcome, []).append(a.latency_s)
        if a.outcome == "503":
            self.retry_after[a.retry_after or "missing"] += 1
        if not a.ok:
            key = (a.outcome, a.err_type or "", (a.message or "")[:MESSAGE_CHARS])
            now = round(time.monotonic() - self.t0, 2)
            seen = self.errors.setdefault(key, {"count": 0, "first_s": now})
            seen["count"] += 1
            seen["last_s"] = now
        return a

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> dict[str, Any]:
        errors = sorted(self.errors.items(), key=lambda kv: -kv[1]["count"])
        out: dict[str, Any] = {
            "total": self.total,
            "by_outcome": dict(self.statuses.most_common()),
            "latency_s": {k: percentiles(v) for k, v in sorted(self.latencies.items())},
            "errors": [
                {"outcome": o, "type": t, "message": m, **seen}
                for (o, t, m), seen in errors[:MAX_ERROR_KINDS]
            ],
        }
        if len(errors) > MAX_ERROR_KINDS:
            out["errors_left_out"] = len(errors) - MAX_ERROR_KINDS
        if self.retry_after:
            out["retry_after_of_503"] = dict(self.retry_after)
        return out


def percentiles(values: list[float]) -> dict[str, float | int]:
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"n": len(values), "p50": at(0.5), "p90": at(0.9), "max": at(1.0)}


def error_fields(text: str) -> tuple[str, str]:
    """(type, message) of an error body: OpenAI's ``{"error": {...}}``,
    FastAPI's ``{"detail": ...}``, else the raw text."""
    try:
        body = json.loads(text)
    except ValueError:
        return "non-json", text[:MESSAGE_CHARS]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("type")), str(err.get("message"))[:MESSAGE_CHARS]
    if isinstance(body, dict) and "error" in body:
        return "error", str(body["error"])[:MESSAGE_CHARS]
    if isinstance(body, dict) and "detail" in body:
        return "detail", str(body["detail"])[:MESSAGE_CHARS]
    return "json", text[:MESSAGE_CHARS]


def transport_outcome(e: BaseException) -> str:
    """A transport failure's name in the tallies. Order matters: aiohttp's
    connector error is an OSError subclass, its timeouts TimeoutErrors."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "truncated"
    if isinstance(e, aiohttp.ClientOSError | ConnectionError):
        return "reset" if getattr(e, "errno", None) == errno.ECONNRESET else "oserror"
    return type(e).__name__


# --------------------------------------------------------------------- HTTP


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 120.0,
    expect_tokens: int | None = None,
) -> Answer:
    """One JSON request; never raises (but for cancellation): what went
    wrong is the answer's outcome. ``expect_tokens``: a 200 is counted as
    such only with that many completion tokens."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    try:
        async with session.request(
            method,
            url,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text(errors="replace")
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        latency = time.monotonic() - start
        return Answer(
            transport_outcome(e),
            latency,
            None,
            type(e).__name__,
            str(e)[:MESSAGE_CHARS],
        )
    latency = time.monotonic() - start
    if not 200 <= status < 300:
        err_type, message = error_fields(text)
        return Answer(str(status), latency, text, err_type, message, retry_after)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return Answer("200_bad_body", latency, text, "non-json", text[:MESSAGE_CHARS])
    if expect_tokens is not None:
        got = ((data or {}).get("usage") or {}).get("completion_tokens")
        if got != expect_tokens:
            message = f"{got} of {expect_tokens} completion tokens"
            return Answer("200_short", latency, data, "tokens", message)
    return Answer("200", latency, data)


def completion_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


async def stream_probe(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    max_tokens: int,
    timeout: float,
    first_chunk: asyncio.Event,
) -> dict[str, Any]:
    """One long streamed completion, kept in flight across a kill: how and
    when (monotonic ``end_t``) it ended, and how many tokens it got."""
    out: dict[str, Any] = {"status": None, "tokens": 0, "outcome": None}
    start = time.monotonic()
    body = {**completion_body(model, max_tokens), "stream": True}
    try:
        async with session.post(
            url + "/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            out["status"] = resp.status
            if resp.status != 200:
                out["outcome"] = f"http_{resp.status}"
                out["type"], out["message"] = error_fields(await resp.text())
                return out
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    out["outcome"] = "done"
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["outcome"] = "error_chunk"
                    out["type"], out["message"] = error_fields(data.decode())
                    break
                if chunk.get("choices"):
                    out["tokens"] += 1
                    if "first_chunk_s" not in out:
                        out["first_chunk_s"] = round(time.monotonic() - start, 3)
                        first_chunk.set()
            out["outcome"] = out["outcome"] or "eof_without_done"
    except asyncio.CancelledError:
        out["outcome"] = "cancelled_at_stop"
        raise
    except Exception as e:
        out["outcome"] = transport_outcome(e)
        out["type"], out["message"] = type(e).__name__, str(e)[:MESSAGE_CHARS]
    finally:
        out["end_t"] = time.monotonic()
        first_chunk.set()  # a probe that failed early must not stall the kill
    return out


async def stop_tasks(tasks: list[asyncio.Task], grace_s: float) -> int:
    """Gives ``tasks`` ``grace_s`` to end, then cancels the rest; how many
    were cut."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return len(pending)


class Loop:
    """A client loop run as tasks until ``stop()``: ``step`` again and again
    (at most ``max_steps`` in all), each step's requests counted by the step
    itself. At the stop, requests still in flight get ``grace_s`` to finish,
    then are cancelled; ``bugs`` counts the steps that raised (a bug of this
    script, not an answer)."""

    def __init__(
        self,
        step: Callable[[], Awaitable[Any]],
        concurrency: int = 1,
        max_steps: int = 5000,
        pause_s: float = 0.2,
    ):
        self.step = step
        self.bugs = Tally(time.monotonic())
        self.max_steps = max_steps
        self.pause_s = pause_s
        self.steps = 0
        self._stopping = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(concurrency)]

    async def _run(self) -> None:
        while not self._stopping.is_set() and self.steps < self.max_steps:
            self.steps += 1
            try:
                await self.step()
            except Exception as e:  # a bug in the step: count it, go on
                self.bugs.add(Answer("client_bug", 0.0, None, type(e).__name__, str(e)))
                await asyncio.sleep(1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.pause_s)

    async def stop(self, grace_s: float) -> dict[str, Any]:
        self._stopping.set()
        cut = await stop_tasks(self._tasks, grace_s)
        return {
            "steps": self.steps,
            "hit_max_steps": self.steps >= self.max_steps,
            "cut_at_stop": cut,
            "client_bugs": self.bugs.summary() if self.bugs.total else None,
        }


async def counted(tally: Tally, request: Awaitable[Answer]) -> Answer:
    """An answer counted in ``tally``; a request cut by a loop's stop counts
    as ``cancelled_at_stop``, with how long it had been in flight."""
    start = time.monotonic()
    try:
        return tally.add(await request)
    except asyncio.CancelledError:
        tally.add(Answer("cancelled_at_stop", time.monotonic() - start))
        raise


# ------------------------------------------------------------------- server


class RelServer(Server):
    """Our server, with async management calls; remembers every pooled pid
    it saw, so that none is left running after the stop."""

    def __init__(self, cmd: list[str], token: str | None = None):
        super().__init__(cmd, token)
        self.pids: set[int] = set()
        self.info: dict[str, Any] = {"flags": [f for f in self.cmd[3:] if f != token]}

    def start(self, log_path: Path, timeout: float) -> float:
        self.info["log"] = log_path.name
        self.info["gpu_used_mib_before"] = wait_gpu_free(0.5, timeout=60)
        ready = super().start(log_path, timeout)
        self.info["ready_s"] = round(ready, 2)
        log(f"{log_path.stem}: server ready in {ready:.1f} s")
        return ready

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM to the server process alone, as an operator's ``kill``
        sends it (the server drains, unloads and stops its pool itself);
        then whatever is left of its process group gets SIGTERM and SIGKILL,
        and any pooled pid seen that still lives outside the group SIGKILL.

        (SIGTERM to the whole group would also reach the pooled processes
        directly, which the controller takes for deaths and respawns.)"""
        if self.proc is None:
            return
        self.dump_stacks_if_busy()
        start = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.popen.send_signal(signal.SIGTERM)
        graceful = False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.popen.wait(timeout=70)
            graceful = self.proc.wait_group(10)
        self.info["stopped_by_sigterm"] = graceful
        self.info["sigterm_exit_s"] = round(time.monotonic() - start, 2)
        self.proc.stop(grace_s)
        self.info["stop_s"] = round(time.monotonic() - start, 2)
        self.info["exit_code"] = self.proc.popen.returncode
        left = [p for p in sorted(self.pids) if alive_python(p)]
        if left:
            log(f"pooled processes left after the stop: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.info["pids_left_after_stop"] = left
        self.info["gpu_used_mib_after"] = (gpu_memory_used_mib() or (None,))[0]
        self.info["log_errors"] = log_errors(self.proc.log_path)
        self.proc = None

    def dump_stacks(self) -> None:
        """SIGUSR1: every server process prints its stacks to the log."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pgid, signal.SIGUSR1)

    def dump_stacks_if_busy(self) -> None:
        """Before the stop: a model still loading, parking or unloading when
        the scenario is over may be a hang; its stacks show where it waits."""
        try:
            listing = self.api("GET", "/v1/controller/models", timeout=10)
        except (OSError, HttpError) as e:
            busy = [f"listing failed: {e}"]
        else:
            busy = [
                f"{m.get('name')}: {m.get('state')}"
                for m in listing
                if m.get("state") not in ("ready", "parked", "failed")
            ]
        if busy:
            log(f"still busy at the stop ({busy}): dumping stacks")
            self.info["stacks_dumped_for"] = busy
            self.dump_stacks()
            time.sleep(2)

    async def admin(
        self,
        s: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 120.0,
    ) -> Answer:
        return await call(s, method, self.url + path, body, self.token, timeout)

    async def complete(
        self, s: aiohttp.ClientSession, model: str, tokens: int, timeout: float
    ) -> Answer:
        """A greedy completion that must bring ``tokens`` tokens."""
        body = completion_body(model, tokens)
        url = self.url + "/v1/completions"
        return await call(s, "POST", url, body, timeout=timeout, expect_tokens=tokens)

    async def models(self, s: aiohttp.ClientSession) -> list[dict[str, Any]]:
        a = await self.admin(s, "GET", "/v1/controller/models", timeout=30)
        models = a.body if a.ok and isinstance(a.body, list) else []
        for m in models:
            self.pids.update(p for p in m.get("worker_pids") or [] if p)
            if m.get("engine_host_pid"):
                self.pids.add(m["engine_host_pid"])
        return models

    async def workers(self, s: aiohttp.ClientSession) -> list[dict[str, Any]] | None:
        a = await self.admin(s, "GET", "/v1/controller/workers", timeout=30)
        if not (a.ok and isinstance(a.body, list)):
            return None
        self.pids.update(w["pid"] for w in a.body if w.get("pid"))
        return a.body

    async def metrics(self, s: aiohttp.ClientSession, timeout: float = 30) -> list[str]:
        """``/metrics``' lines (an error's text as the only line)."""
        try:
            limit = aiohttp.ClientTimeout(total=timeout)
            async with s.get(self.url + "/metrics", timeout=limit) as resp:
                return (await resp.text()).splitlines()
        except Exception as e:
            return [f"error {type(e).__name__}: {e}"[:MESSAGE_CHARS]]

    async def running(self, s: aiohttp.ClientSession, model: str) -> float | None:
        """vLLM's ``num_requests_running`` of one model (None if absent)."""
        for line in await self.metrics(s, timeout=10):
            if line.startswith("vllm:num_requests_running{") and (
                f'model_name="{model}"' in line
            ):
                with contextlib.suppress(ValueError):
                    return float(line.rpartition(" ")[2])
        return None

    async def snapshot(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        """Models, processes and the controller's own counters, compactly."""
        keys = ("name", "state", "worker_pids", "engine_host_pid", "error")
        models = [
            {k: m.get(k) for k in keys}
            | {"timings_s": rounded(m.get("timings_s") or {})}
            for m in await self.models(s)
        ]
        counters: dict[str, Any] = {}
        for line in await self.metrics(s):
            if line.startswith("error "):
                counters["error"] = line[6:]
            elif line.startswith("vllm_wc_") and not re.search(
                "_bucket|_created", line
            ):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    counters[key] = float(value)
        workers = compact_workers(await self.workers(s))
        return {"models": models, "workers": workers, "counters": counters}


def alive_python(pid: int) -> bool:
    """Alive and still a Python process (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return False
    return b"python" in cmdline or b"vllm" in cmdline


def rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def compact_workers(workers: list[dict[str, Any]] | None) -> list[dict] | None:
    if workers is None:
        return None
    keys = ("kind", "index", "pid", "state", "model")
    return [{k: w.get(k) for k in keys} for w in workers]


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b[\w.]*: ")
_FRAME_LINE = re.compile(r"^(\s|\^|Traceback|$)")


def log_errors(path: Path, limit: int = 25) -> dict[str, Any]:
    """The server log's ERROR lines, WARNING lines about dead, recycled or
    respawned processes, and exception lines, deduplicated (timestamps and
    pids stripped, traceback frames left out), most frequent first."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    seen: Counter = Counter()
    for line in lines:
        text = line
        if " ERROR " in f" {line}" or " WARNING " in f" {line}":
            # "(pid=1) ERROR 12-01 23:56:06 [x.py:12] msg" -> "ERROR [x.py:12] msg"
            level = "ERROR" if "ERROR" in line else "WARNING"
            parts = (level + line.split(level, 1)[1]).split(" ", 3)
            if len(parts) < 4:
                continue
            body = parts[3].split("] ", 1)[-1]
            wanted = ("died", "Recycl", "respawn", "failed")
            if level == "WARNING" and not any(w in body for w in wanted):
                continue  # vLLM's start-up warnings
            text = f"{level} {parts[3]}"
        elif not _EXCEPTION_LINE.match(line):
            continue
        # Traceback frames and carets say where, the message says what.
        if not _FRAME_LINE.match(text.split("] ", 1)[-1]):
            seen[text[:MESSAGE_CHARS]] += 1
    return {
        "lines": len(lines),
        "tracebacks": sum(x.lstrip().startswith("Traceback") for x in lines),
        "error_lines": sum(seen.values()),
        "distinct": [{"line": k, "count": v} for k, v in seen.most_common(limit)],
    }


class Watch:
    """Probes of one server, once a second, while a run goes on: ``/health``
    latency (a stalled event loop shows here first) and the models' states
    (a timeline of changes)."""

    def __init__(self, server: RelServer, s: aiohttp.ClientSession, t0: float):
        self.server = server
        self.s = s
        self.t0 = t0
        self.health = Tally(t0)
        self.timeline: list[list[Any]] = []
        self.model_errors: Counter = Counter()
        self.states: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            url = self.server.url + "/health"
            self.health.add(await call(self.s, "GET", url, timeout=10))
            now = round(time.monotonic() - self.t0, 1)
            for m in await self.server.models(self.s):
                if self.states.get(m["name"]) != m["state"]:
                    self.states[m["name"]] = m["state"]
                    if len(self.timeline) < 400:
                        self.timeline.append([now, m["name"], m["state"]])
                if m.get("error"):
                    error = str(m["error"])[:MESSAGE_CHARS]
                    self.model_errors[f"{m['name']}: {error}"] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        await stop_tasks([self._task], 35)
        return {
            "health": self.health.summary(),
            "state_timeline_s": self.timeline,
            "model_errors_seen": dict(self.model_errors),
        }


def session() -> aiohttp.ClientSession:
    """No connection limit (200 requests at once), a new connection per
    request (no keep-alive race mistaken for a reset)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector)


# -------------------------------------------------------------------- bench


@dataclass
class BenchRun:
    """One ``vllm bench serve`` process, waited for without blocking the
    event loop; ``end_t`` is when it exited (monotonic)."""

    proc: Proc
    result_path: Path
    output_len: int
    start_t: float = field(default_factory=time.monotonic)
    end_t: float | None = None
    timed_out: bool = False

    def __post_init__(self) -> None:
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Notes when the process exits (polled every 0.1 s)."""
        while self.running():
            await asyncio.sleep(0.1)
        self.end_t = time.monotonic()

    def running(self) -> bool:
        return self.proc.popen.poll() is None

    async def wait(self, timeout: float, server: RelServer) -> None:
        """Waits for its end; after ``timeout`` (a hang?) stops it, and every
        server process logs its stacks."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.running():
            self.timed_out = True
            log(f"bench still running after {timeout:.0f} s: stopping it (a hang?)")
            server.dump_stacks()
        await asyncio.to_thread(self.proc.stop, 10)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.watcher, 5)
        self.end_t = self.end_t or time.monotonic()

    def result(self) -> dict[str, Any]:
        """The bench's counts and metrics (lists summarised: errors
        deduplicated, streams shorter than the output length counted)."""
        out: dict[str, Any] = {
            "exit_code": self.proc.popen.returncode,
            "timed_out": self.timed_out,
            "wall_s": round((self.end_t or time.monotonic()) - self.start_t, 2),
            "log": self.proc.log_path.name,
        }
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError) as e:
            out["error"] = clip(
                f"no result JSON ({type(e).__name__}: {e}); log tail:\n"
                f"{tail(self.proc.log_path, 25)}"
            )
            return out
        errs = result.get("errors") or []
        errors = Counter(e.strip().splitlines()[-1][:MESSAGE_CHARS] for e in errs if e)
        lens = result.get("output_lens") or []
        errs = errs or [None] * len(lens)
        short = sum(
            1 for n, e in zip(lens, errs, strict=False) if not e and n < self.output_len
        )
        for k, v in result.items():
            if not isinstance(v, list | dict) and k not in ("date", "tokenizer_id"):
                out[k] = v
        out["completed_short"] = short
        out["errors"] = [{"message": m, "count": c} for m, c in errors.most_common(20)]
        return out

    def summary(self) -> str:
        r = self.result()
        return (
            f"bench completed {r.get('completed')} failed {r.get('failed')} short "
            f"{r.get('completed_short')} in {r['wall_s']} s"
        )


class Reliability:
    def __init__(self, args: argparse.Namespace, settings: Settings):
        self.args = args
        self.s = settings
        self.engine_args = args.engine_args
        meta = {
            "engine_args": self.engine_args,
            "smoke": args.smoke,
            "settings": dataclasses.asdict(settings),
            "client": "aiohttp, a new connection per request; load: vllm bench "
            "serve (upstream), --dataset-name random, fixed lengths, streaming, "
            "/v1/completions",
            "compile": "vLLM defaults (torch.compile + CUDA graphs) unless "
            "engine_args say otherwise",
        }
        self.results = Results(args, "gpu-reliability", meta, {})
        self.data = self.results.data
        self.results.invocation["scenarios"] = args.scenario
        self.deadline = self.results.deadline
        self.paths: dict[str, Path] = {}

    def fits(self, what: str, estimate_s: float) -> bool:
        """Whether ``what`` and the server's stop fit before the deadline."""
        return self.results.fits(
            f"{what} (+ {STOP_RESERVE_S} s to stop)", estimate_s + STOP_RESERVE_S
        )

    def left_for(self, wanted_s: float) -> float:
        """``wanted_s``, cut to what the deadline leaves (stop reserved)."""
        return max(5.0, min(wanted_s, self.deadline.left() - STOP_RESERVE_S))

    def section(self, scenario: str) -> dict[str, Any]:
        return self.data.setdefault(scenario, {})

    def server_flags(self, *flags: str) -> list[str]:
        out = [*flags, "--park-memory-gb", str(self.s.park_memory_gb)]
        if "gpu_memory_utilization" not in self.engine_args:
            out += ["--gpu-memory-utilization", str(self.s.gpu_memory_utilization)]
        return out

    def start_bench(
        self, url: str, tag: str, num_prompts: int, output_len: int
    ) -> BenchRun:
        """Starts ``vllm bench serve`` to ``rel-a`` (fixed lengths, so that a
        stream cut short shows as fewer output tokens), with its per-request
        details."""
        result = (
            self.args.log_dir
            / "bench-results"
            / f"rel-{tag}-{time.strftime('%H%M%S')}.json"
        )
        cmd = bench_serve_cmd(
            url,
            self.paths["rel-a"],
            "rel-a",
            num_prompts=num_prompts,
            input_len=self.s.input_len,
            output_len=output_len,
            range_ratio="0",
            seed=self.s.seed,
            concurrency=self.s.concurrency,
            warmups=BENCH_WARMUPS,
            result_file=result,
            detailed=True,
        )
        proc = launch(cmd, self.args.log_dir / f"rel-bench-{tag}.log")
        return BenchRun(proc, result, output_len)

    async def wait_streaming(
        self, server: RelServer, s: aiohttp.ClientSession, run: BenchRun
    ) -> float | None:
        """Waits (at most 120 s) until the bench's timed part runs: vLLM's
        own gauge shows more requests running than the warm-up sends.
        Returns the last gauge value seen."""
        want = min(BENCH_WARMUPS + 1, self.s.concurrency)
        end = time.monotonic() + self.left_for(120)
        running = None
        while time.monotonic() < end and run.running():
            running = await server.running(s, "rel-a")
            if running is not None and running >= want:
                break
            await asyncio.sleep(0.3)
        return running

    # ----------------------------------------------------------------- run

    def run(self) -> int:
        scenarios = [x for x in self.args.scenario.split(",") if x]
        log(f"reliability: {scenarios}; results {self.results.path}")
        done = True
        with self.results.call():
            base = ensure_models(self.args.models_dir, [self.s.base_shape])[
                self.s.base_shape
            ]
            self.paths = {name: make_copy(base, name) for name in MODELS}
            for scenario in scenarios:
                if not getattr(self, f"scenario_{scenario}")():
                    done = False
                    break
            self.results.invocation["wall_s"] = round(self.deadline.elapsed(), 1)
        return self.results.finish([] if done else scenarios)

    def with_server(
        self,
        record: dict[str, Any],
        label: str,
        flags: list[str],
        body: Callable[[RelServer], Awaitable[None]],
    ) -> None:
        """Starts a server, runs ``body`` against it, always stops it; what
        failed is kept in ``record["error"]``; ``record["done"]`` only when
        it ran to its end (a later call skips it then)."""
        server = RelServer.controller(self.server_flags(*flags), self.engine_args)
        record["server"] = server.info
        start = time.monotonic()
        try:
            server.start(
                self.args.log_dir / f"rel-{label}.log",
                self.left_for(self.args.server_timeout),
            )
            self.results.save()
            asyncio.run(body(server))
            record["done"] = not record.get("stopped")
        except Exception as e:
            record["error"] = clip(f"{type(e).__name__}: {e}")
            log(f"{label}: FAILED: {type(e).__name__}: {str(e)[:500]}")
        finally:
            try:
                server.stop()
            finally:
                record["wall_s"] = round(time.monotonic() - start, 1)
                record["ended"] = time.strftime("%H:%M:%S")
                self.results.save()

    # churn ---------------------------------------------------------------

    def scenario_churn(self) -> bool:
        for label in [r for r in self.args.churn_runs.split(",") if r]:
            if self.section("churn").get(label, {}).get("done"):
                log(f"churn {label}: already in the results, skipped")
                continue
            if not self.fits(f"churn {label}", ESTIMATES_S["churn"]):
                return False
            workers = 3 if label == "max1" else 2
            flags = [
                str(self.paths["rel-a"]),
                "--allowed-model-dir",
                str(self.args.models_dir),
            ]
            flags += ["--num-workers", str(workers)]
            if label == "max1":
                flags += ["--max-loaded-models", "1"]
            record: dict[str, Any] = {"started": time.strftime("%H:%M:%S")}
            self.section("churn")[label] = record
            log(f"churn {label}: {workers} workers, models {MODELS}")
            self.with_server(
                record,
                f"churn-{label}",
                flags,
                lambda server, r=record, lb=label: self.churn(server, r, lb),
            )
        return True

    async def churn(
        self, server: RelServer, record: dict[str, Any], label: str
    ) -> None:
        st = self.s
        async with session() as s:
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            record["phases"] = {}
            # One side loop for the whole run; each request is counted in
            # the tally of the phase in which it was sent.
            side_tallies: dict[str, Tally] = {}
            phase_now = "bench"
            rng = random.Random(0)

            async def side_step() -> None:
                tally = side_tallies.setdefault(phase_now, Tally(t0))
                model = rng.choice(["rel-b", "rel-c"])
                await counted(tally, server.complete(s, model, 16, st.request_timeout))

            admin_tallies: dict[str, Tally] = {}
            ops = churn_ops(self.paths)
            op_index = 0

            async def admin_step() -> None:
                nonlocal op_index
                name, method, path, body = ops[op_index % len(ops)]
                op_index += 1
                tally = admin_tallies.setdefault(name, Tally(t0))
                await counted(
                    tally, server.admin(s, method, path, body, st.request_timeout)
                )

            loops: dict[str, Loop] = {}

            def start_churn() -> None:
                """The side clients and the management API, once the bench
                streams (before, the churn would only race its start-up)."""
                if not loops:
                    loops["side"] = Loop(side_step, concurrency=st.side_concurrency)
                    loops["admin"] = Loop(
                        admin_step, max_steps=500, pause_s=st.admin_period_s
                    )
                    record["churn_started_s"] = round(time.monotonic() - t0, 1)

            phases = [
                ("bench", st.num_prompts, st.bench_timeout),
                ("tail", 0, st.tail_s),
                ("bench2", max(1, st.num_prompts // 5), st.bench2_timeout),
            ]
            try:
                for phase, prompts, budget in phases:
                    log(f"churn {label}: phase {phase}")
                    phase_now = phase
                    p: dict[str, Any] = {"start_s": round(time.monotonic() - t0, 1)}
                    record["phases"][phase] = p
                    if prompts:
                        tag = f"churn-{label}-{phase}"
                        run = self.start_bench(server.url, tag, prompts, st.output_len)
                        if not loops:
                            p["running_at_churn_start"] = await self.wait_streaming(
                                server, s, run
                            )
                            start_churn()
                        await run.wait(self.left_for(budget), server)
                        p["bench"] = run.result()
                        log(f"churn {label} {phase}: {run.summary()}")
                    else:
                        start_churn()
                        await asyncio.sleep(self.left_for(budget))
                    p["end_s"] = round(time.monotonic() - t0, 1)
                    self.results.save()
                    if not self.deadline.fits(STOP_RESERVE_S + 60):
                        record["stopped"] = f"deadline after phase {phase}"
                        break
            finally:
                phase_now = "stop"
                grace = self.left_for(st.stop_grace_s)
                stopped = await asyncio.gather(
                    *(lp.stop(grace) for lp in loops.values())
                )
                record["loops"] = dict(zip(loops, stopped, strict=True))
                for phase, tally in side_tallies.items():
                    record["phases"].setdefault(phase, {})["side"] = tally.summary()
                    log(f"churn {label} {phase}: side {dict(tally.statuses)}")
                record["admin"] = {"ops": op_index}
                record["admin"].update(
                    {k: v.summary() for k, v in admin_tallies.items()}
                )
                record["watch"] = await watch.stop()
                record["final"] = await server.snapshot(s)

    # kill ----------------------------------------------------------------

    def scenario_kill(self) -> bool:
        todo = [
            t for t in KILL_TARGETS if not self.section("kill").get(t, {}).get("done")
        ]
        if not todo:
            log("kill: already in the results, skipped")
            return True
        if not self.fits(
            "kill server start", ESTIMATES_S["kill_server"] + ESTIMATES_S["kill"]
        ):
            return False
        flags = [str(self.paths["rel-a"]), str(self.paths["rel-b"])]
        flags += ["--allowed-model-dir", str(self.args.models_dir)]
        flags += ["--num-workers", str(self.s.kill_workers)]
        record: dict[str, Any] = {"targets": todo, "started": time.strftime("%H:%M:%S")}
        self.section("kill")["server"] = record
        finished: list[str] = []

        async def body(server: RelServer) -> None:
            async with session() as s:
                for target in todo:
                    if not self.fits(f"kill {target}", ESTIMATES_S["kill"]):
                        return
                    phase: dict[str, Any] = {"started": time.strftime("%H:%M:%S")}
                    self.section("kill")[target] = phase
                    try:
                        await self.kill(server, s, target, phase)
                        finished.append(target)
                    except Exception as e:
                        phase["error"] = clip(f"{type(e).__name__}: {e}")
                        log(f"kill {target}: FAILED: {e}")
                    self.results.save()
                record["final"] = await server.snapshot(s)

        self.with_server(record, "kill", flags, body)
        return set(finished) == set(todo)

    async def kill(
        self,
        server: RelServer,
        s: aiohttp.ClientSession,
        target: str,
        phase: dict[str, Any],
    ) -> None:
        st = self.s
        t0 = time.monotonic()
        watch = Watch(server, s, t0)
        b_tally = Tally(t0)

        async def b_step() -> None:
            await counted(b_tally, server.complete(s, "rel-b", 16, st.request_timeout))

        side_b = Loop(b_step, concurrency=2)
        probes: list[asyncio.Task] = []
        pool: asyncio.Task | None = None
        run: BenchRun | None = None
        try:
            # rel-a must be ready (an earlier phase may have left it failed).
            phase["before"] = await self.ensure_ready(server, s, "rel-a")
            models = {m["name"]: m for m in await server.models(s)}
            a = models.get("rel-a") or {}
            if target == "worker":
                pid = (a.get("worker_pids") or [None])[0]
            else:
                pid = a.get("engine_host_pid")
            phase["pid"] = pid
            if not pid:
                raise RuntimeError(f"no {target} pid for rel-a in {a}")
            run = self.start_bench(
                server.url, f"kill-{target}", st.num_prompts, st.kill_output_len
            )
            # Kill only once the bench's timed part streams.
            phase["running_before_probes"] = await self.wait_streaming(server, s, run)
            firsts = [asyncio.Event() for _ in range(st.probes)]
            probes = [
                asyncio.create_task(
                    stream_probe(
                        s, server.url, "rel-a", st.probe_tokens, st.request_timeout, ev
                    )
                )
                for ev in firsts
            ]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(e.wait() for e in firsts)), timeout=60
                )
            await asyncio.sleep(st.kill_delay_s)
            phase["running_at_kill"] = await server.running(s, "rel-a")
            phase["bench_alive_at_kill"] = run.running()
            kill_t = time.monotonic()
            phase["kill_s"] = round(kill_t - t0, 2)
            try:
                os.kill(pid, signal.SIGKILL)
                log(f"kill {target}: SIGKILL {pid}")
            except ProcessLookupError:
                phase["kill_error"] = "process already gone"
            pool = asyncio.create_task(self.pool_full(server, s, pid, kill_t))

            # In-flight requests: our probes' ends, then the bench's.
            done, pending = await asyncio.wait(
                probes, timeout=self.left_for(st.request_timeout + 10)
            )
            results = [
                t.result() for t in done if not t.cancelled() and not t.exception()
            ]
            for r in results:
                r["end_after_kill_s"] = round(r.pop("end_t") - kill_t, 3)
            phase["probes"] = results
            phase["probes_unanswered"] = len(pending)
            ends = [r["end_after_kill_s"] for r in results]
            errs = [r["end_after_kill_s"] for r in results if r["outcome"] != "done"]
            phase["in_flight_answered_after_kill_s"] = max(ends) if ends else None
            phase["first_error_after_kill_s"] = min(errs) if errs else None
            log(
                f"kill {target}: probes {[r['outcome'] for r in results]}, "
                f"last answered {phase['in_flight_answered_after_kill_s']} s after"
            )

            phase["recovery"] = await self.recover(server, s, "rel-a", kill_t)
            phase["pool"] = await pool
            self.results.save()
            await run.wait(self.left_for(st.bench_timeout), server)
            phase["bench"] = run.result()
            phase["bench"]["end_after_kill_s"] = round((run.end_t or 0) - kill_t, 2)
            ended = phase["bench"]["end_after_kill_s"]
            log(f"kill {target}: {run.summary()}, ended {ended} s after the kill")
            phase["done"] = True
        finally:
            await stop_tasks([*probes, *([pool] if pool else [])], 0)
            if run is not None and run.running():
                await asyncio.to_thread(run.proc.stop, 10)
            phase["side_b_loop"] = await side_b.stop(self.left_for(st.stop_grace_s))
            phase["side_b"] = b_tally.summary()
            phase["watch"] = await watch.stop()
            phase["after"] = await server.snapshot(s)
            log(f"kill {target}: rel-b {phase['side_b']['by_outcome']}")

    async def ensure_ready(
        self, server: RelServer, s: aiohttp.ClientSession, model: str
    ) -> dict[str, Any]:
        """A completion from ``model``; if it fails, unload and load it over
        the management API (a manual recovery, recorded)."""
        first = await server.complete(s, model, 8, self.s.request_timeout)
        out: dict[str, Any] = {"request": first.brief()}
        if not first.ok:
            out["manual"] = await self.manual_reload(server, s, model)
        return out

    async def manual_reload(
        self, server: RelServer, s: aiohttp.ClientSession, model: str
    ) -> dict[str, Any]:
        unload = await server.admin(s, "DELETE", f"/v1/controller/models/{model}")
        body = {"model": str(self.paths[model]), "name": model}
        load = await server.admin(
            s, "POST", "/v1/controller/models", body, self.left_for(300)
        )
        after = await server.complete(s, model, 8, self.s.request_timeout)
        log(
            f"manual reload of {model}: delete {unload.outcome}, load "
            f"{load.outcome}, then {after.outcome}"
        )
        return {"delete": unload.brief(), "load": load.brief(), "then": after.brief()}

    async def recover(
        self, server: RelServer, s: aiohttp.ClientSession, model: str, kill_t: float
    ) -> dict[str, Any]:
        """Requests ``model`` one after the other until one succeeds (an
        automatic reload) or the budget ends; then, if none did, reloads it
        by hand so that the next phase has it."""
        tally = Tally(kill_t)
        attempts: list[dict[str, Any]] = []
        budget_end = time.monotonic() + self.left_for(self.s.recovery_budget_s)
        ok_after = None
        for _ in range(2000):
            if time.monotonic() >= budget_end:
                break
            sent = time.monotonic() - kill_t
            timeout = max(
                5.0, min(self.s.request_timeout, budget_end - time.monotonic())
            )
            a = tally.add(await server.complete(s, model, 8, timeout))
            if len(attempts) < 60:
                attempts.append({"sent_after_kill_s": round(sent, 2), **a.brief()})
            if a.ok:
                ok_after = round(time.monotonic() - kill_t, 2)
                break
            await asyncio.sleep(0.5)
        out: dict[str, Any] = {
            "next_request": attempts[0] if attempts else None,
            "first_success_after_kill_s": ok_after,
            "automatic": ok_after is not None,
            "attempts": tally.summary(),
            "attempt_log": attempts,
        }
        log(
            f"recovery of {model}: first success {ok_after} s after the kill; "
            f"{dict(tally.statuses)}"
        )
        if ok_after is None:
            out["manual"] = await self.manual_reload(server, s, model)
        return out

    async def pool_full(
        self, server: RelServer, s: aiohttp.ClientSession, killed: int, kill_t: float
    ) -> dict[str, Any]:
        """Polls ``/v1/controller/workers`` until every slot holds a live
        process (idle or leased, the killed pid gone), recording changes."""
        expected = 2 * self.s.kill_workers  # engine hosts default to workers
        timeline: list[list[Any]] = []
        full_after = None
        end = time.monotonic() + self.left_for(self.s.pool_budget_s)
        listing = None
        for _ in range(1000):
            if time.monotonic() >= end:
                break
            listing = await server.workers(s)
            now = round(time.monotonic() - kill_t, 2)
            if listing is not None:
                states = ",".join(
                    f"{w['kind']}-{w['index']}:{w['state']}" for w in listing
                )
                if (not timeline or states != timeline[-1][1]) and len(timeline) < 100:
                    timeline.append([now, states])
                if (
                    len(listing) >= expected
                    and killed not in {w["pid"] for w in listing}
                    and all(w["state"] in ("idle", "leased") for w in listing)
                ):
                    full_after = now
                    break
            await asyncio.sleep(1.0)
        return {
            "full_after_kill_s": full_after,
            "expected_processes": expected,
            "timeline": timeline,
            "workers": compact_workers(listing),
        }

    # cold3 ---------------------------------------------------------------

    def scenario_cold3(self) -> bool:
        if self.section("cold3").get("cold3", {}).get("done"):
            log("cold3: already in the results, skipped")
            return True
        if not self.fits("cold3", ESTIMATES_S["cold3"]):
            return False
        catalog = self.args.log_dir / "rel-cold3-catalog.yaml"
        catalog.parent.mkdir(parents=True, exist_ok=True)
        entries = "".join(f"  {n}:\n    model: {self.paths[n]}\n" for n in MODELS)
        catalog.write_text("models:\n" + entries)
        flags = ["--model-catalog", str(catalog), "--num-workers", "3"]
        record: dict[str, Any] = {"started": time.strftime("%H:%M:%S")}
        self.section("cold3")["cold3"] = record
        self.with_server(
            record, "cold3", flags, lambda server: self.cold3(server, record)
        )
        return bool(record.get("done"))

    async def cold3(self, server: RelServer, record: dict[str, Any]) -> None:
        async with session() as s:
            record["before"] = await server.snapshot(s)
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            total = Tally(t0)
            per_model = {m: Tally(t0) for m in MODELS}
            first_ok: dict[str, float] = {}
            timeout = self.left_for(self.s.cold_timeout)

            async def one(i: int) -> None:
                model = MODELS[i % len(MODELS)]
                a = per_model[model].add(
                    total.add(await server.complete(s, model, 16, timeout))
                )
                if a.ok:
                    first_ok.setdefault(model, round(time.monotonic() - t0, 2))

            tasks = [asyncio.create_task(one(i)) for i in range(self.s.cold_requests)]
            cut = await stop_tasks(tasks, timeout + 15)
            for _ in range(cut):
                total.add(Answer("cancelled_at_stop", 0.0))
            last = time.monotonic() - t0
            record["requests"] = total.summary()
            record["per_model"] = {m: t.summary() for m, t in per_model.items()}
            record["first_success_s"] = first_ok
            record["last_answer_s"] = round(last, 2)
            statuses = dict(total.statuses)
            log(f"cold3: {statuses} in {last:.1f} s; first success {first_ok}")
            record["watch"] = await watch.stop()
            record["final"] = await server.snapshot(s)


def churn_ops(paths: dict[str, Path]) -> list[tuple[str, str, str, Any]]:
    """The management API's cycle of operations under churn: load, park,
    unpark and unload the side models, and try to park the busy one (a 409
    is right while it has requests in flight)."""
    ops: list[tuple[str, str, str, Any]] = []
    for m in ("rel-b", "rel-c"):
        load = {"model": str(paths[m]), "name": m}
        ops.append((f"load {m}", "POST", "/v1/controller/models", load))
        ops.append((f"park {m}", "POST", f"/v1/controller/models/{m}/park", None))
        ops.append((f"unpark {m}", "POST", f"/v1/controller/models/{m}/unpark", None))
        ops.append((f"delete {m}", "DELETE", f"/v1/controller/models/{m}", None))
    ops.insert(4, ("park rel-a", "POST", "/v1/controller/models/rel-a/park", None))
    ops.append(("list workers", "GET", "/v1/controller/workers", None))
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", default="churn", help=f"comma-separated, of {SCENARIOS}"
    )
    parser.add_argument("--churn-runs", default=",".join(CHURN_RUNS))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU development machine: tiny model, eager, few requests",
    )
    # The Settings that a call may change (the others: edit Settings).
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--park-memory-gb", type=float)
    add_common_args(parser)
    parser.set_defaults(server_timeout=420)
    args = parser.parse_args()
    unknown = set(args.scenario.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    settings = Settings(**(SMOKE if args.smoke else {}))
    if args.num_prompts is not None:
        settings.num_prompts = args.num_prompts
    if args.park_memory_gb is not None:
        settings.park_memory_gb = args.park_memory_gb
    if args.smoke:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.engine_args is None:
        args.engine_args = SMOKE_ENGINE_ARGS if args.smoke else GPU_ENGINE_ARGS
    install_sigterm_handler()
    sys.exit(Reliability(args, settings).run())


if __name__ == "__main__":
    main()
