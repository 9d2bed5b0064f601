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

The server may not have every recovery feature yet: nothing here assumes a
status code, every outcome is recorded, and the server's process group is
always stopped at the end (SIGTERM, then SIGKILL). Every loop is bounded in
time and count; ``--deadline-s`` bounds the whole call, which stops before a
run that would not fit and exits 3 ("NOT DONE"): calling it again resumes
with the runs not yet in the results file.

Writes ``gpu-reliability-<gpu>-<date>.json`` after every run. The client is
aiohttp (what ``vllm bench serve`` itself uses, so it is on every machine
that can run the bench), with a new connection per request so that a
keep-alive race cannot pass for a server reset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    HERE,
    PROMPT,
    Deadline,
    HttpError,
    Proc,
    bench_serve_cmd,
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
    request_json,
    tail,
    wait_gpu_free,
    wait_healthy,
    write_json,
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


# ----------------------------------------------------------------- counting


@dataclass
class Tally:
    """Every answer of one client, by outcome: an HTTP status ("200",
    "503", ...; "200_short" for a 200 without all its tokens) or a transport
    outcome ("timeout", "reset", "disconnected", "refused", "truncated",
    "cancelled_at_stop", ...). Errors are deduplicated by (outcome, type,
    message's first 200 characters), with a count and when they were first
    and last seen (seconds since ``t0``)."""

    t0: float
    statuses: Counter = field(default_factory=Counter)
    errors: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    retry_after: Counter = field(default_factory=Counter)

    def add(
        self,
        outcome: str,
        latency_s: float,
        err_type: str | None = None,
        message: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        self.statuses[outcome] += 1
        self.latencies.setdefault(outcome, []).append(latency_s)
        if outcome == "503":
            self.retry_after[retry_after or "missing"] += 1
        if outcome == "200":
            return
        key = (outcome, err_type or "", (message or "")[:MESSAGE_CHARS])
        now = time.monotonic() - self.t0
        seen = self.errors.setdefault(key, {"count": 0, "first_s": now})
        seen["count"] += 1
        seen["last_s"] = now

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
                {
                    "outcome": o,
                    "type": t,
                    "message": m,
                    **{
                        k: round(v, 2) if isinstance(v, float) else v
                        for k, v in s.items()
                    },
                }
                for (o, t, m), s in errors[:MAX_ERROR_KINDS]
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


@dataclass
class Answer:
    """One request's outcome, as the tallies count it."""

    outcome: str
    latency_s: float
    body: Any = None
    err_type: str | None = None
    message: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "200"

    def record(self, tally: Tally) -> Answer:
        tally.add(
            self.outcome, self.latency_s, self.err_type, self.message, self.retry_after
        )
        return self

    def brief(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "latency_s": round(self.latency_s, 3),
            **({"type": self.err_type} if self.err_type else {}),
            **({"message": self.message} if self.message else {}),
        }


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
        return Answer(
            transport_outcome(e),
            time.monotonic() - start,
            err_type=type(e).__name__,
            message=str(e)[:MESSAGE_CHARS],
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
            return Answer(
                "200_short",
                latency,
                data,
                "tokens",
                f"{got} of {expect_tokens} completion tokens",
            )
    return Answer("200", latency, data)


def completion_body(model: str, max_tokens: int, prompt: str = PROMPT) -> dict:
    return {
        "model": model,
        "prompt": prompt,
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
            else:
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
                if out["outcome"] is None:
                    out["outcome"] = "eof_without_done"
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


async def counted_call(tally: Tally, *args: Any, **kwargs: Any) -> Answer:
    """``call``, counted in ``tally``; a request cut by a loop's stop counts
    as ``cancelled_at_stop``, with how long it had been in flight."""
    start = time.monotonic()
    try:
        return (await call(*args, **kwargs)).record(tally)
    except asyncio.CancelledError:
        tally.add("cancelled_at_stop", time.monotonic() - start)
        raise


class Loop:
    """A client loop run as tasks until ``stop()``: ``step`` again and again
    (at most ``max_steps`` in all), each step's requests counted by the step
    itself (``counted_call``). At the stop, requests still in flight get
    ``grace_s`` to finish, then are cancelled; ``tally`` counts the steps
    that raised (a bug of this script, not an answer)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        tally: Tally,
        concurrency: int = 1,
        max_steps: int = 10_000,
        pause_s: float = 0.0,
    ):
        self.name = name
        self.step = step
        self.tally = tally
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
                self.tally.add("client_bug", 0.0, type(e).__name__, str(e))
                await asyncio.sleep(1.0)
            if self.pause_s:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.pause_s)

    async def stop(self, grace_s: float) -> dict[str, Any]:
        self._stopping.set()
        _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return {
            "steps": self.steps,
            "hit_max_steps": self.steps >= self.max_steps,
            "cut_at_stop": len(pending),
            "client_bugs": self.tally.summary() if self.tally.total else None,
        }


# ------------------------------------------------------------------- server


class Server:
    """One ``python -m vllm.worker_controller.serve`` in its own process
    group, with the management token; remembers every pooled pid it saw."""

    def __init__(self, bench: Reliability, label: str, flags: list[str]):
        self.bench = bench
        self.label = label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = os.urandom(12).hex()
        self.cmd = [
            sys.executable,
            "-m",
            "vllm.worker_controller.serve",
            *flags,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--admin-token",
            self.token,
            "--park-memory-gb",
            str(bench.args.park_memory_gb),
            *engine_flags(bench.engine_args),
        ]
        self.proc: Proc | None = None
        self.pids: set[int] = set()
        self.info: dict[str, Any] = {
            "flags": [f for f in self.cmd[3:] if f != self.token],
            "log": f"rel-{label}.log",
        }

    def start(self, timeout: float) -> float:
        self.info["gpu_used_mib_before"] = wait_gpu_free(0.5, timeout=60)
        self.proc = launch(self.cmd, self.bench.args.log_dir / self.info["log"])
        ready = wait_healthy(self.url, self.proc, timeout)
        self.info["ready_s"] = round(ready, 2)
        log(f"{self.label}: server ready in {ready:.1f} s")
        return ready

    def stop(self) -> None:
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
            end = time.monotonic() + 10
            while self.proc.group_alive() and time.monotonic() < end:
                time.sleep(0.2)
            graceful = not self.proc.group_alive()
        self.info["stopped_by_sigterm"] = graceful
        self.info["sigterm_exit_s"] = round(time.monotonic() - start, 2)
        self.proc.stop(grace_s=20)
        self.info["stop_s"] = round(time.monotonic() - start, 2)
        self.info["exit_code"] = self.proc.popen.returncode
        left = [p for p in sorted(self.pids) if _alive_python(p)]
        if left:
            log(f"{self.label}: pooled processes left after the stop: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.info["pids_left_after_stop"] = left
        self.info["gpu_used_mib_after"] = (gpu_memory_used_mib() or (None,))[0]
        self.info["log_errors"] = log_errors(self.proc.log_path)
        self.proc = None

    def dump_stacks_if_busy(self) -> None:
        """Before the stop: a model still loading, parking or unloading when
        the scenario is over may be a hang; SIGUSR1 has every server process
        print its stacks to the log, so the log shows where it waits."""
        assert self.proc is not None
        try:
            listing = request_json(
                "GET", self.url + "/v1/controller/models", token=self.token, timeout=10
            )
        except (OSError, HttpError) as e:
            busy = [f"listing failed: {e}"]
        else:
            busy = [
                f"{m.get('name')}: {m.get('state')}"
                for m in listing
                if m.get("state") not in ("ready", "parked", "failed")
            ]
        if busy:
            log(f"{self.label}: still busy at the stop ({busy}): dumping stacks")
            self.info["stacks_dumped_for"] = busy
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pgid, signal.SIGUSR1)
            time.sleep(2)

    async def admin(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 120.0,
    ) -> Answer:
        return await call(
            session, method, self.url + path, body, self.token, timeout=timeout
        )

    async def models(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        a = await self.admin(session, "GET", "/v1/controller/models", timeout=30)
        models = a.body if a.ok and isinstance(a.body, list) else []
        for m in models:
            self.pids.update(p for p in m.get("worker_pids") or [] if p)
            if m.get("engine_host_pid"):
                self.pids.add(m["engine_host_pid"])
        return models

    async def workers(
        self, session: aiohttp.ClientSession
    ) -> list[dict[str, Any]] | None:
        a = await self.admin(session, "GET", "/v1/controller/workers", timeout=30)
        if not (a.ok and isinstance(a.body, list)):
            return None
        self.pids.update(w["pid"] for w in a.body if w.get("pid"))
        return a.body

    async def snapshot(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """Models, processes and the controller's counters, compactly."""
        models = await self.models(session)
        workers = await self.workers(session)
        return {
            "models": [
                {
                    k: m.get(k)
                    for k in (
                        "name",
                        "state",
                        "worker_pids",
                        "engine_host_pid",
                        "error",
                    )
                }
                | {"timings_s": _round(m.get("timings_s") or {})}
                for m in models
            ],
            "workers": compact_workers(workers),
            "counters": await self.counters(session),
        }

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """The controller's own counters and gauges from ``/metrics``."""
        try:
            async with session.get(
                self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                text = await resp.text()
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"[:MESSAGE_CHARS]}  # type: ignore[dict-item]
        out = {}
        for line in text.splitlines():
            if line.startswith("vllm_wc_") and not any(
                x in line for x in ("_bucket", "_created")
            ):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    async def running(self, session: aiohttp.ClientSession, model: str) -> float | None:
        """vLLM's ``num_requests_running`` of one model (None if absent)."""
        try:
            async with session.get(
                self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                text = await resp.text()
        except Exception:
            return None
        for line in text.splitlines():
            if line.startswith("vllm:num_requests_running{") and (
                f'model_name="{model}"' in line
            ):
                with contextlib.suppress(ValueError):
                    return float(line.rpartition(" ")[2])
        return None


def _alive_python(pid: int) -> bool:
    """Alive and still a Python process (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline.lower() or b"vllm" in cmdline.lower()


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def compact_workers(workers: list[dict[str, Any]] | None) -> list[dict] | None:
    if workers is None:
        return None
    return [
        {k: w.get(k) for k in ("kind", "index", "pid", "state", "model")}
        for w in workers
    ]


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
    tracebacks = 0
    for line in lines:
        if line.lstrip().startswith("Traceback"):
            tracebacks += 1
        text = line
        if " ERROR " in f" {line}" or " WARNING " in f" {line}":
            # "(pid=1) ERROR 12-01 23:56:06 [x.py:12] msg" -> "ERROR [x.py:12] msg"
            level = "ERROR" if "ERROR" in line else "WARNING"
            parts = (level + line.split(level, 1)[1]).split(" ", 3)
            if len(parts) < 4:
                continue
            body = parts[3].split("] ", 1)[-1]
            if level == "WARNING" and not any(
                w in body for w in ("died", "Recycl", "respawn", "failed")
            ):
                continue  # vLLM's start-up warnings
            text = f"{level} {parts[3]}"
        elif not _EXCEPTION_LINE.match(line):
            continue
        # Traceback frames and carets say where, the message says what.
        if _FRAME_LINE.match(text.split("] ", 1)[-1]):
            continue
        seen[text[:MESSAGE_CHARS]] += 1
    return {
        "lines": len(lines),
        "tracebacks": tracebacks,
        "error_lines": sum(seen.values()),
        "distinct": [{"line": k, "count": v} for k, v in seen.most_common(limit)],
    }


class Watch:
    """Background probes of one server while a run goes on: ``/health``
    latency (a stalled event loop shows here first) and the models' states
    (a timeline of changes)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession, t0: float):
        self.server = server
        self.session = session
        self.t0 = t0
        self.health = Tally(t0)
        self.timeline: list[list[Any]] = []
        self.model_errors: Counter = Counter()
        self._states: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._health()),
            asyncio.create_task(self._states_loop()),
        ]

    async def _health(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            answer = await call(
                self.session, "GET", self.server.url + "/health", timeout=10
            )
            answer.record(self.health)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def _states_loop(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            now = round(time.monotonic() - self.t0, 1)
            for m in await self.server.models(self.session):
                if self._states.get(m["name"]) != m["state"]:
                    self._states[m["name"]] = m["state"]
                    if len(self.timeline) < 400:
                        self.timeline.append([now, m["name"], m["state"]])
                if m.get("error"):
                    self.model_errors[
                        f"{m['name']}: {str(m['error'])[:MESSAGE_CHARS]}"
                    ] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        _, pending = await asyncio.wait(self._tasks, timeout=35)
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return {
            "health": self.health.summary(),
            "state_timeline_s": self.timeline,
            "model_errors_seen": dict(self.model_errors),
        }


def session() -> aiohttp.ClientSession:
    """No connection limit (200 requests at once), a new connection per
    request (no keep-alive race mistaken for a reset)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    )


# -------------------------------------------------------------------- bench


@dataclass
class BenchRun:
    """One ``vllm bench serve`` process, waited for without blocking the
    event loop; ``end_t`` is when it exited (monotonic)."""

    proc: Proc
    result_path: Path
    start_t: float
    end_t: float | None = None
    timed_out: bool = False
    watcher: asyncio.Task | None = None

    async def watch(self) -> None:
        """Notes when the process exits (polled every 0.1 s)."""
        while self.proc.popen.poll() is None:
            await asyncio.sleep(0.1)
        self.end_t = time.monotonic()


class Reliability:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine_args = json.loads(args.engine_args)
        meta = machine_metadata()
        meta.update(
            engine_args=self.engine_args,
            smoke=args.smoke,
            settings={
                k: getattr(args, k)
                for k in (
                    "base_shape",
                    "num_prompts",
                    "concurrency",
                    "input_len",
                    "output_len",
                    "request_timeout",
                    "gpu_memory_utilization",
                    "park_memory_gb",
                    "side_concurrency",
                    "admin_period_s",
                    "tail_s",
                    "bench_timeout",
                    "bench2_timeout",
                    "stop_grace_s",
                    "probes",
                    "probe_tokens",
                    "kill_delay_s",
                    "pool_budget_s",
                    "kill_workers",
                    "recovery_budget_s",
                    "cold_requests",
                    "cold_timeout",
                )
            },
            client="aiohttp, a new connection per request; load: vllm bench serve "
            "(upstream), --dataset-name random, fixed lengths, streaming, "
            "/v1/completions",
            compile="vLLM defaults (torch.compile + CUDA graphs) unless engine_args "
            "say otherwise",
        )
        self.path = args.out or (
            args.results_dir
            / f"gpu-reliability-{meta['gpu_slug']}-{args.date or meta['date']}.json"
        )
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.data["metadata"].setdefault("invocations", [])
        else:
            self.data = {"metadata": {**meta, "invocations": []}}
        self.invocation: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "scenarios": args.scenario,
            "stopped": None,
        }
        self.data["metadata"]["invocations"].append(self.invocation)
        self.deadline = Deadline(args.deadline_s)
        self.mirror = [args.mirror_dir] if args.mirror_dir else []
        self.paths: dict[str, Path] = {}

    def save(self) -> None:
        write_json(self.path, self.data, self.mirror)

    def fits(self, what: str, estimate_s: float) -> bool:
        if self.deadline.fits(estimate_s + STOP_RESERVE_S):
            return True
        self.invocation["stopped"] = (
            f"deadline: {what} (~{estimate_s:.0f} s + {STOP_RESERVE_S} s to stop) "
            f"would not fit in the {self.deadline.left():.0f} s left"
        )
        log(f"STOPPED: {self.invocation['stopped']}")
        return False

    def left_for(self, wanted_s: float) -> float:
        """``wanted_s``, cut to what the deadline leaves (stop reserved)."""
        return max(5.0, min(wanted_s, self.deadline.left() - STOP_RESERVE_S))

    # ------------------------------------------------------------- helpers

    def prepare_models(self) -> None:
        base = ensure_models(self.args.models_dir, [self.args.base_shape])[
            self.args.base_shape
        ]
        for name in MODELS:
            self.paths[name] = make_copy(base, name)

    def gmu_flags(self) -> list[str]:
        if "gpu_memory_utilization" in self.engine_args:
            return []
        return ["--gpu-memory-utilization", str(self.args.gpu_memory_utilization)]

    def start_bench(
        self, url: str, model: str, tag: str, num_prompts: int, output_len: int
    ) -> BenchRun:
        """Starts ``vllm bench serve`` (fixed lengths, so that a stream cut
        short shows as fewer output tokens) with its per-request details."""
        result_dir = self.args.log_dir / "bench-results"
        result_file = f"rel-{tag}-{time.strftime('%H%M%S')}.json"
        path = self.paths[model]
        cmd = bench_serve_cmd(
            url,
            path,
            model,
            num_prompts=num_prompts,
            input_len=self.args.input_len,
            output_len=output_len,
            range_ratio="0",
            seed=self.args.seed,
            concurrency=self.args.concurrency,
            warmups=BENCH_WARMUPS,
            result_file=result_dir / result_file,
            detailed=True,
        )
        proc = launch(cmd, self.args.log_dir / f"rel-bench-{tag}.log")
        run = BenchRun(proc, result_dir / result_file, time.monotonic())
        run.watcher = asyncio.create_task(run.watch())
        return run

    async def wait_streaming(
        self, server: Server, s: aiohttp.ClientSession, run: BenchRun, model: str
    ) -> float | None:
        """Waits (at most 120 s) until the bench's timed part runs: vLLM's
        own gauge shows more requests running than the warm-up sends.
        Returns the last gauge value seen."""
        want = min(BENCH_WARMUPS + 1, self.args.concurrency)
        end = time.monotonic() + self.left_for(120)
        running = None
        while time.monotonic() < end and run.proc.popen.poll() is None:
            running = await server.running(s, model)
            if running is not None and running >= want:
                break
            await asyncio.sleep(0.3)
        return running

    async def wait_bench(self, run: BenchRun, timeout: float, server: Server) -> None:
        deadline = time.monotonic() + timeout
        while run.proc.popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if run.proc.popen.poll() is None:
            run.timed_out = True
            log(f"bench still running after {timeout:.0f} s: stopping it (a hang?)")
            if server.proc is not None:  # every server process logs its stacks
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pgid, signal.SIGUSR1)
        await asyncio.to_thread(run.proc.stop, 10)
        if run.watcher is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.watcher, 5)
        run.end_t = run.end_t or time.monotonic()

    def bench_result(self, run: BenchRun, output_len: int) -> dict[str, Any]:
        """The bench's counts and metrics (lists summarised: errors
        deduplicated, streams shorter than ``output_len`` counted)."""
        out: dict[str, Any] = {
            "exit_code": run.proc.popen.returncode,
            "timed_out": run.timed_out,
            "wall_s": round((run.end_t or time.monotonic()) - run.start_t, 2),
            "log": run.proc.log_path.name,
        }
        try:
            result = json.loads(run.result_path.read_text())
        except (OSError, ValueError) as e:
            out["error"] = clip(
                f"no result JSON ({type(e).__name__}: {e}); log tail:\n"
                f"{tail(run.proc.log_path, 25)}"
            )
            return out
        errors = Counter(
            (e or "").strip().splitlines()[-1][:MESSAGE_CHARS]
            for e in result.get("errors") or []
            if e
        )
        lens = result.get("output_lens") or []
        errs = result.get("errors") or [None] * len(lens)
        short = sum(
            1 for n, e in zip(lens, errs, strict=False) if not e and n < output_len
        )
        out.update(
            {
                k: v
                for k, v in result.items()
                if not isinstance(v, list | dict) and k not in ("date", "tokenizer_id")
            }
        )
        out["completed_short"] = short
        out["errors"] = [{"message": m, "count": c} for m, c in errors.most_common(20)]
        return out

    # ----------------------------------------------------------- scenarios

    def run(self) -> int:
        scenarios = [s for s in self.args.scenario.split(",") if s]
        log(f"reliability: {scenarios}; results {self.path}")
        done = True
        try:
            self.prepare_models()
            for scenario in scenarios:
                if scenario not in SCENARIOS:
                    raise SystemExit(f"unknown scenario {scenario!r} ({SCENARIOS})")
                if not getattr(self, f"scenario_{scenario}")():
                    done = False
                    break
        except BaseException as e:  # SIGTERM (SystemExit), Ctrl-C, a bug
            self.invocation["stopped"] = f"interrupted: {type(e).__name__}: {e}"
            raise
        finally:
            self.invocation["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.invocation["wall_s"] = round(self.deadline.elapsed(), 1)
            self.save()
        if not done:
            log("NOT DONE (run the same command again to continue)")
            return 3
        log(f"DONE: {self.path}")
        return 0

    def section(self, scenario: str) -> dict[str, Any]:
        return self.data.setdefault(scenario, {})

    def with_server(
        self,
        record: dict[str, Any],
        label: str,
        flags: list[str],
        body: Callable[[Server], Awaitable[None]],
    ) -> None:
        """Starts a server, runs ``body`` against it, always stops it; what
        failed is kept in ``record["error"]``; ``record["done"]`` only when
        it ran to its end (a later call skips it then)."""
        server = Server(self, label, flags)
        record["server"] = server.info
        start = time.monotonic()
        try:
            server.start(self.left_for(self.args.server_timeout))
            self.save()
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
                self.save()

    # churn ---------------------------------------------------------------

    def scenario_churn(self) -> bool:
        runs = [r for r in self.args.churn_runs.split(",") if r]
        for label in runs:
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
                "--num-workers",
                str(workers),
                *self.gmu_flags(),
            ]
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

    async def churn(self, server: Server, record: dict[str, Any], label: str) -> None:
        args = self.args
        async with session() as s:
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            record["phases"] = {}
            # One side loop for the whole run; each request is counted in
            # the tally of the phase in which it was sent.
            side_tallies: dict[str, Tally] = {}
            phase_now = ["bench"]
            rng = random.Random(0)

            async def side_step() -> None:
                tally = side_tallies.setdefault(phase_now[0], Tally(t0))
                await counted_call(
                    tally,
                    s,
                    "POST",
                    server.url + "/v1/completions",
                    completion_body(rng.choice(["rel-b", "rel-c"]), 16),
                    timeout=args.request_timeout,
                    expect_tokens=16,
                )

            admin_tallies: dict[str, Tally] = {}
            ops = churn_ops(self.paths)
            op_index = 0

            async def admin_step() -> None:
                nonlocal op_index
                name, method, path, body = ops[op_index % len(ops)]
                op_index += 1
                await counted_call(
                    admin_tallies.setdefault(name, Tally(t0)),
                    s,
                    method,
                    server.url + path,
                    body,
                    server.token,
                    timeout=args.request_timeout,
                )

            loops: list[Loop] = []

            def start_churn() -> None:
                """The side clients and the management API, once the bench
                streams (before, the churn would only race its start-up)."""
                if loops:
                    return
                loops.append(
                    Loop(
                        "side",
                        side_step,
                        Tally(t0),
                        concurrency=args.side_concurrency,
                        max_steps=5000,
                        pause_s=0.2,
                    )
                )
                loops.append(
                    Loop(
                        "admin",
                        admin_step,
                        Tally(t0),
                        max_steps=500,
                        pause_s=args.admin_period_s,
                    )
                )
                record["churn_started_s"] = round(time.monotonic() - t0, 1)

            phases = [
                ("bench", args.num_prompts, args.bench_timeout),
                ("tail", 0, args.tail_s),
                ("bench2", max(1, args.num_prompts // 5), args.bench2_timeout),
            ]
            try:
                for phase, prompts, budget in phases:
                    log(f"churn {label}: phase {phase}")
                    phase_now[0] = phase
                    p: dict[str, Any] = {"start_s": round(time.monotonic() - t0, 1)}
                    record["phases"][phase] = p
                    if prompts:
                        run = self.start_bench(
                            server.url,
                            "rel-a",
                            f"churn-{label}-{phase}",
                            prompts,
                            args.output_len,
                        )
                        if not loops:
                            p["running_at_churn_start"] = await self.wait_streaming(
                                server, s, run, "rel-a"
                            )
                            start_churn()
                        await self.wait_bench(run, self.left_for(budget), server)
                        p["bench"] = self.bench_result(run, args.output_len)
                        log(
                            f"churn {label} {phase}: bench completed "
                            f"{p['bench'].get('completed')} failed "
                            f"{p['bench'].get('failed')} short "
                            f"{p['bench'].get('completed_short')} in "
                            f"{p['bench']['wall_s']} s"
                        )
                    else:
                        start_churn()
                        await asyncio.sleep(self.left_for(budget))
                    p["end_s"] = round(time.monotonic() - t0, 1)
                    self.save()
                    if not self.deadline.fits(STOP_RESERVE_S + 60):
                        record["stopped"] = f"deadline after phase {phase}"
                        break
            finally:
                phase_now[0] = "stop"
                grace = self.left_for(args.stop_grace_s)
                stopped = await asyncio.gather(*(lp.stop(grace) for lp in loops))
                record["loops"] = dict(zip(("side", "admin"), stopped, strict=False))
                for phase, tally in side_tallies.items():
                    record["phases"].setdefault(phase, {})["side"] = tally.summary()
                    log(f"churn {label} {phase}: side {tally.summary()['by_outcome']}")
                record["admin"] = {
                    "ops": op_index,
                    **{k: v.summary() for k, v in admin_tallies.items()},
                }
                record["watch"] = await watch.stop()
                record["final"] = await server.snapshot(s)

    # kill ----------------------------------------------------------------

    def scenario_kill(self) -> bool:
        todo = [
            t
            for t in self.args.kill_targets.split(",")
            if t and not self.section("kill").get(t, {}).get("done")
        ]
        if not todo:
            log("kill: already in the results, skipped")
            return True
        if not self.fits(
            "kill server start", ESTIMATES_S["kill_server"] + ESTIMATES_S["kill"]
        ):
            return False
        flags = [
            str(self.paths["rel-a"]),
            str(self.paths["rel-b"]),
            "--allowed-model-dir",
            str(self.args.models_dir),
            "--num-workers",
            str(self.args.kill_workers),
            *self.gmu_flags(),
        ]
        record: dict[str, Any] = {"targets": todo, "started": time.strftime("%H:%M:%S")}
        self.section("kill")["server"] = record
        finished: list[str] = []

        async def body(server: Server) -> None:
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
                    self.save()
                record["final"] = await server.snapshot(s)

        self.with_server(record, "kill", flags, body)
        return set(finished) == set(todo)

    async def kill(
        self,
        server: Server,
        s: aiohttp.ClientSession,
        target: str,
        phase: dict[str, Any],
    ) -> None:
        args = self.args
        t0 = time.monotonic()
        watch = Watch(server, s, t0)
        b_tally = Tally(t0)

        async def b_step() -> None:
            await counted_call(
                b_tally,
                s,
                "POST",
                server.url + "/v1/completions",
                completion_body("rel-b", 16),
                timeout=args.request_timeout,
                expect_tokens=16,
            )

        side_b = Loop(
            "side-b",
            b_step,
            Tally(t0),
            concurrency=2,
            max_steps=5000,
            pause_s=0.2,
        )
        probes: list[asyncio.Task] = []
        pool: asyncio.Task | None = None
        run: BenchRun | None = None
        try:
            # rel-a must be ready (an earlier phase may have left it failed).
            phase["before"] = await self.ensure_ready(server, s, "rel-a")
            models = {m["name"]: m for m in await server.models(s)}
            a = models.get("rel-a") or {}
            pid = (
                (a.get("worker_pids") or [None])[0]
                if target == "worker"
                else a.get("engine_host_pid")
            )
            phase["pid"] = pid
            if not pid:
                raise RuntimeError(f"no {target} pid for rel-a in {a}")
            run = self.start_bench(
                server.url,
                "rel-a",
                f"kill-{target}",
                args.num_prompts,
                args.kill_output_len,
            )
            # Kill only once the bench's timed part streams.
            phase["running_before_probes"] = await self.wait_streaming(
                server, s, run, "rel-a"
            )
            firsts = [asyncio.Event() for _ in range(args.probes)]
            probe_tokens = args.probe_tokens
            probes = [
                asyncio.create_task(
                    stream_probe(
                        s, server.url, "rel-a", probe_tokens, args.request_timeout, ev
                    )
                )
                for ev in firsts
            ]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(e.wait() for e in firsts)), timeout=60
                )
            await asyncio.sleep(args.kill_delay_s)
            phase["running_at_kill"] = await server.running(s, "rel-a")
            phase["bench_alive_at_kill"] = run.proc.popen.poll() is None
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
                probes, timeout=self.left_for(args.request_timeout + 10)
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
            self.save()
            await self.wait_bench(run, self.left_for(args.bench_timeout), server)
            phase["bench"] = self.bench_result(run, args.kill_output_len)
            phase["bench"]["end_after_kill_s"] = round((run.end_t or 0) - kill_t, 2)
            log(
                f"kill {target}: bench completed {phase['bench'].get('completed')} "
                f"failed {phase['bench'].get('failed')}, ended "
                f"{phase['bench']['end_after_kill_s']} s after the kill"
            )
            phase["done"] = True
        finally:
            for t in [*probes, *([pool] if pool else [])]:
                t.cancel()
            await asyncio.gather(
                *probes, *([pool] if pool else []), return_exceptions=True
            )
            if run is not None and run.proc.alive():
                await asyncio.to_thread(run.proc.stop, 10)
            phase["side_b_loop"] = await side_b.stop(self.left_for(args.stop_grace_s))
            phase["side_b"] = b_tally.summary()
            phase["watch"] = await watch.stop()
            phase["after"] = await server.snapshot(s)
            log(f"kill {target}: rel-b {phase['side_b']['by_outcome']}")

    async def ensure_ready(
        self, server: Server, s: aiohttp.ClientSession, model: str
    ) -> dict[str, Any]:
        """A completion from ``model``; if it fails, unload and load it over
        the management API (a manual recovery, recorded)."""
        first = await call(
            s,
            "POST",
            server.url + "/v1/completions",
            completion_body(model, 8),
            timeout=self.args.request_timeout,
            expect_tokens=8,
        )
        out: dict[str, Any] = {"request": first.brief()}
        if not first.ok:
            out["manual"] = await self.manual_reload(server, s, model)
        return out

    async def manual_reload(
        self, server: Server, s: aiohttp.ClientSession, model: str
    ) -> dict[str, Any]:
        unload = await server.admin(s, "DELETE", f"/v1/controller/models/{model}")
        load = await server.admin(
            s,
            "POST",
            "/v1/controller/models",
            {"model": str(self.paths[model]), "name": model},
            timeout=self.left_for(300),
        )
        after = await call(
            s,
            "POST",
            server.url + "/v1/completions",
            completion_body(model, 8),
            timeout=self.args.request_timeout,
            expect_tokens=8,
        )
        log(
            f"manual reload of {model}: delete {unload.outcome}, load "
            f"{load.outcome}, then {after.outcome}"
        )
        return {"delete": unload.brief(), "load": load.brief(), "then": after.brief()}

    async def recover(
        self, server: Server, s: aiohttp.ClientSession, model: str, kill_t: float
    ) -> dict[str, Any]:
        """Requests ``model`` one after the other until one succeeds (an
        automatic reload) or the budget ends; then, if none did, reloads it
        by hand so that the next phase has it."""
        tally = Tally(kill_t)
        attempts: list[dict[str, Any]] = []
        budget_end = time.monotonic() + self.left_for(self.args.recovery_budget_s)
        ok_after = None
        for _ in range(2000):
            if time.monotonic() >= budget_end:
                break
            sent = time.monotonic() - kill_t
            a = (
                await call(
                    s,
                    "POST",
                    server.url + "/v1/completions",
                    completion_body(model, 8),
                    timeout=max(
                        5.0,
                        min(self.args.request_timeout, budget_end - time.monotonic()),
                    ),
                    expect_tokens=8,
                )
            ).record(tally)
            if len(attempts) < 60:
                attempts.append({"sent_after_kill_s": round(sent, 2), **a.brief()})
            if a.ok:
                ok_after = time.monotonic() - kill_t
                break
            await asyncio.sleep(0.5)
        out: dict[str, Any] = {
            "next_request": attempts[0] if attempts else None,
            "first_success_after_kill_s": round(ok_after, 2) if ok_after else None,
            "automatic": ok_after is not None,
            "attempts": tally.summary(),
            "attempt_log": attempts,
        }
        log(
            f"recovery of {model}: first success "
            f"{out['first_success_after_kill_s']} s after the kill; {tally.statuses}"
        )
        if ok_after is None:
            out["manual"] = await self.manual_reload(server, s, model)
        return out

    async def pool_full(
        self, server: Server, s: aiohttp.ClientSession, killed: int, kill_t: float
    ) -> dict[str, Any]:
        """Polls ``/v1/controller/workers`` until every slot holds a live
        process (idle or leased, the killed pid gone), recording changes."""
        expected = 2 * self.args.kill_workers  # engine hosts default to workers
        timeline: list[list[Any]] = []
        last = None
        full_after = None
        end = time.monotonic() + self.left_for(self.args.pool_budget_s)
        listing = None
        for _ in range(1000):
            if time.monotonic() >= end:
                break
            listing = await server.workers(s)
            now = time.monotonic() - kill_t
            if listing is not None:
                states = ",".join(
                    f"{w['kind']}-{w['index']}:{w['state']}" for w in listing
                )
                if states != last and len(timeline) < 100:
                    timeline.append([round(now, 2), states])
                    last = states
                pids = {w["pid"] for w in listing}
                if (
                    len(listing) >= expected
                    and killed not in pids
                    and all(w["state"] in ("idle", "leased") for w in listing)
                ):
                    full_after = now
                    break
            await asyncio.sleep(1.0)
        return {
            "full_after_kill_s": round(full_after, 2) if full_after else None,
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
        catalog.write_text(
            "models:\n"
            + "".join(f"  {n}:\n    model: {self.paths[n]}\n" for n in MODELS)
        )
        flags = [
            "--model-catalog",
            str(catalog),
            "--num-workers",
            "3",
            *self.gmu_flags(),
        ]
        record: dict[str, Any] = {"started": time.strftime("%H:%M:%S")}
        self.section("cold3")["cold3"] = record
        self.with_server(
            record, "cold3", flags, lambda server: self.cold3(server, record)
        )
        return bool(record.get("done"))

    async def cold3(self, server: Server, record: dict[str, Any]) -> None:
        args = self.args
        async with session() as s:
            record["before"] = await server.snapshot(s)
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            total = Tally(t0)
            per_model = {m: Tally(t0) for m in MODELS}
            first_ok: dict[str, float] = {}
            timeout = self.left_for(args.cold_timeout)

            async def one(i: int) -> None:
                model = MODELS[i % len(MODELS)]
                a = await call(
                    s,
                    "POST",
                    server.url + "/v1/completions",
                    completion_body(model, 16),
                    timeout=timeout,
                    expect_tokens=16,
                )
                a.record(total)
                a.record(per_model[model])
                if a.ok:
                    first_ok.setdefault(model, round(time.monotonic() - t0, 2))

            tasks = [asyncio.create_task(one(i)) for i in range(args.cold_requests)]
            try:
                _, pending = await asyncio.wait(tasks, timeout=timeout + 15)
                for t in pending:
                    t.cancel()
                    total.add("cancelled_at_stop", 0.0)
                last = time.monotonic() - t0
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            record["requests"] = total.summary()
            record["per_model"] = {m: t.summary() for m, t in per_model.items()}
            record["first_success_s"] = first_ok
            record["last_answer_s"] = round(last, 2)
            log(f"cold3: {total.statuses} in {last:.1f} s; first success {first_ok}")
            record["watch"] = await watch.stop()
            record["final"] = await server.snapshot(s)


def churn_ops(paths: dict[str, Path]) -> list[tuple[str, str, str, Any]]:
    """The management API's cycle of operations under churn: load, park,
    unpark and unload the side models, and try to park the busy one (a 409
    is right while it has requests in flight)."""
    ops: list[tuple[str, str, str, Any]] = []
    for m in ("rel-b", "rel-c"):
        ops += [
            (
                f"load {m}",
                "POST",
                "/v1/controller/models",
                {"model": str(paths[m]), "name": m},
            ),
            (f"park {m}", "POST", f"/v1/controller/models/{m}/park", None),
            (f"unpark {m}", "POST", f"/v1/controller/models/{m}/unpark", None),
            (f"delete {m}", "DELETE", f"/v1/controller/models/{m}", None),
        ]
    ops.insert(4, ("park rel-a", "POST", "/v1/controller/models/rel-a/park", None))
    ops.append(("list workers", "GET", "/v1/controller/workers", None))
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", default="churn", help=f"comma-separated, of {SCENARIOS}"
    )
    parser.add_argument("--churn-runs", default=",".join(CHURN_RUNS))
    parser.add_argument("--kill-targets", default=",".join(KILL_TARGETS))
    parser.add_argument("--base-shape", default="qwen3-0.6b")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/bench/models"))
    parser.add_argument("--engine-args", default=None, help="JSON of EngineArgs fields")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.25)
    parser.add_argument("--park-memory-gb", type=float, default=48)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--kill-output-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120,
        help="seconds before one of our requests counts as a hang",
    )
    parser.add_argument("--side-concurrency", type=int, default=4)
    parser.add_argument("--admin-period-s", type=float, default=2.0)
    parser.add_argument("--tail-s", type=float, default=20)
    parser.add_argument("--kill-workers", type=int, default=2)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--probe-tokens", type=int, default=2048)
    parser.add_argument("--kill-delay-s", type=float, default=3.0)
    parser.add_argument("--recovery-budget-s", type=float, default=90)
    parser.add_argument("--pool-budget-s", type=float, default=90)
    parser.add_argument("--cold-requests", type=int, default=200)
    parser.add_argument(
        "--cold-timeout",
        type=float,
        default=300,
        help="per-request limit in cold3 (three first loads, maybe compiles)",
    )
    parser.add_argument("--bench-timeout", type=float, default=300)
    parser.add_argument(
        "--bench2-timeout",
        type=float,
        default=90,
        help="churn's second bench (rel-a may wait behind busy side models)",
    )
    parser.add_argument(
        "--stop-grace-s",
        type=float,
        default=40,
        help="seconds a client loop's requests in flight get to finish at its "
        "stop (a router's busy wait is 30 s); cut ones are counted as such",
    )
    parser.add_argument("--server-timeout", type=float, default=420)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU development machine: tiny model, eager, few requests",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--date", default=None)
    parser.add_argument("--mirror-dir", default=None)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench/logs"))
    parser.add_argument("--deadline-s", type=float, default=None)
    args = parser.parse_args()
    if args.smoke:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        args.base_shape = "tiny-qwen3"
        args.engine_args = args.engine_args or json.dumps(SMOKE_ENGINE_ARGS)
        args.num_prompts = min(args.num_prompts, 40)
        args.concurrency = min(args.concurrency, 4)
        args.input_len, args.output_len, args.kill_output_len = 32, 16, 64
        args.side_concurrency = min(args.side_concurrency, 2)
        args.tail_s = min(args.tail_s, 10)
        args.probes, args.probe_tokens, args.kill_delay_s = 2, 200, 0.5
        args.cold_requests = min(args.cold_requests, 12)
        args.recovery_budget_s = min(args.recovery_budget_s, 40)
        args.pool_budget_s = min(args.pool_budget_s, 60)
    args.engine_args = args.engine_args or json.dumps(GPU_ENGINE_ARGS)
    install_sigterm_handler()
    sys.exit(Reliability(args).run())


if __name__ == "__main__":
    main()
