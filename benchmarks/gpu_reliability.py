# SPDX-License-Identifier: Apache-2.0
"""Reliability of ``python -m vllm.worker_controller.serve`` on a GPU under
model churn, process kills and a cold start of three models at once.

- ``churn``: copies of one shape (``rel-a``/``-b``/``-c``) under
  ``--allowed-model-dir``; ``vllm bench serve`` streams to ``rel-a`` while
  side clients ask for ``rel-b``/``rel-c`` and the management API loads,
  parks, unparks and unloads them. Runs ``max1`` (``--max-loaded-models 1``,
  three workers) and ``fewworkers`` (two workers): bench, churn alone, bench.
- ``kill``: SIGKILL of ``rel-a``'s worker, then of its engine host, under the
  bench: when in-flight requests got answers, when ``rel-a`` serves again,
  ``rel-b``'s errors meanwhile, when the pool is full again.
- ``cold3``: 200 concurrent requests over three models none of which is loaded.

Every answer of our clients is counted (status, error type and message,
transport errors, timeouts); bench streams shorter than the output length
are ``completed_short``. ``--deadline-s`` stops before a run that would not
fit (exit 3); calling again resumes from ``gpu-reliability-<gpu>-<date>.json``.
aiohttp with a new connection per request, so that a keep-alive race cannot
pass for a server reset.
"""

from __future__ import annotations

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
import gpu_common as common
from gpu_common import HttpError, Server, log

MODELS = ("rel-a", "rel-b", "rel-c")
KILL_TARGETS = ("worker", "engine_host")
# Seconds, for the deadline only (H200, Qwen3-0.6B shape, compile cache warm
# after the first start; a fresh machine's first compile adds ~30-70 s).
ESTIMATES_S = {"churn": 270, "kill_server": 90, "kill": 150, "cold3": 180}
# What stopping a server may take: SIGTERM drains for up to 30 s, then
# unloads every model and stops the pool.
STOP_RESERVE_S = 60
MESSAGE_CHARS = 200
MAX_ERROR_KINDS = 40
# The bench's warm-up requests run before its timed ones: more requests than
# this running at once means the timed part has begun.
BENCH_WARMUPS = 2


@dataclass
class Settings:
    """A call's tunables (in the results' metadata); ``SMOKE`` for the CPU."""

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
    stop_grace_s: float = 40  # in-flight requests at a loop's stop (router waits 30 s)
    probes: int = 4
    probe_tokens: int = 2048
    kill_delay_s: float = 3.0
    pool_budget_s: float = 90
    kill_workers: int = 2
    recovery_budget_s: float = 90
    cold_requests: int = 200
    cold_timeout: float = 300  # per request in cold3: three first loads, compiles


# CPU development machine: tiny model, eager, few requests.
SMOKE = {"base_shape": "tiny-qwen3", "num_prompts": 40, "concurrency": 4}
SMOKE |= {"input_len": 32, "output_len": 16, "kill_output_len": 64, "tail_s": 10}
SMOKE |= {"side_concurrency": 2, "probes": 2, "probe_tokens": 200}
SMOKE |= {"kill_delay_s": 0.5, "cold_requests": 12, "recovery_budget_s": 40}
SMOKE |= {"pool_budget_s": 60}
SMOKE_ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256}


@dataclass
class Answer:
    """One request's outcome: an HTTP status ("200_short": without all its
    tokens) or a transport outcome ("timeout", "reset", "refused", ...)."""

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
        extra = {"type": self.err_type, "message": self.message}
        return out | {k: v for k, v in extra.items() if v}


class Tally:
    """One client's answers by outcome, errors deduplicated with a count,
    and the ``Retry-After`` of every 503."""

    def __init__(self) -> None:
        self.outcomes: Counter = Counter()
        self.errors: Counter = Counter()
        self.retry_after: Counter = Counter()

    def add(self, a: Answer) -> Answer:
        self.outcomes[a.outcome] += 1
        if a.outcome == "503":
            self.retry_after[a.retry_after or "missing"] += 1
        if not a.ok:
            message = (a.message or "")[:MESSAGE_CHARS]
            self.errors[(a.outcome, a.err_type or "", message)] += 1
        return a

    def summary(self) -> dict[str, Any]:
        errors = self.errors.most_common(MAX_ERROR_KINDS)
        out: dict[str, Any] = {
            "total": sum(self.outcomes.values()),
            "by_outcome": dict(self.outcomes.most_common()),
            "errors": [
                {"outcome": o, "type": t, "message": m, "count": n}
                for (o, t, m), n in errors
            ],
        }
        if self.retry_after:
            out["retry_after_of_503"] = dict(self.retry_after)
        return out


def error_fields(text: str) -> tuple[str, str]:
    """(type, message) of an error body: OpenAI's ``{"error": {...}}``,
    FastAPI's ``{"detail": ...}``, else the raw text."""
    try:
        body = json.loads(text)
    except ValueError:
        return "non-json", text[:MESSAGE_CHARS]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("type")), str(err.get("message"))[:MESSAGE_CHARS]
    for key in ("error", "detail"):
        if isinstance(body, dict) and key in body:
            return key, str(body[key])[:MESSAGE_CHARS]
    return "json", text[:MESSAGE_CHARS]


def transport_outcome(e: BaseException) -> str:
    """A transport failure's name (order matters: aiohttp's errors subclass
    OSError and TimeoutError)."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    kinds = {
        aiohttp.ClientConnectorError: "refused",
        aiohttp.ServerDisconnectedError: "disconnected",
        aiohttp.ClientPayloadError: "truncated",
    }
    for kind, name in kinds.items():
        if isinstance(e, kind):
            return name
    if isinstance(e, aiohttp.ClientOSError | ConnectionError):
        return "reset" if getattr(e, "errno", None) == errno.ECONNRESET else "oserror"
    return type(e).__name__


def transport_answer(e: Exception, latency_s: float) -> Answer:
    name, message = type(e).__name__, str(e)[:MESSAGE_CHARS]
    return Answer(transport_outcome(e), latency_s, None, name, message)


async def call(
    s: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 120.0,
    expect_tokens: int | None = None,
) -> Answer:
    """One JSON request; never raises (but for cancellation). With
    ``expect_tokens``, a 200 counts only with that many completion tokens."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    limit = aiohttp.ClientTimeout(total=timeout)
    try:
        async with s.request(
            method, url, json=body, headers=headers, timeout=limit
        ) as resp:
            text = await resp.text(errors="replace")
            retry_after = resp.headers.get("Retry-After")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return transport_answer(e, time.monotonic() - start)
    latency = time.monotonic() - start
    if not 200 <= resp.status < 300:
        err_type, message = error_fields(text)
        return Answer(str(resp.status), latency, text, err_type, message, retry_after)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return Answer("200_bad_body", latency, text, "non-json", text[:MESSAGE_CHARS])
    if expect_tokens is not None:  # completions only: data is a dict
        got = ((data or {}).get("usage") or {}).get("completion_tokens")
        if got != expect_tokens:
            message = f"{got} of {expect_tokens} completion tokens"
            return Answer("200_short", latency, data, "tokens", message)
    return Answer("200", latency, data)


def completion_body(model: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": common.PROMPT, "max_tokens": max_tokens}
    return body | {"temperature": 0, "ignore_eos": True}


async def stream_probe(
    s: aiohttp.ClientSession,
    url: str,
    model: str,
    max_tokens: int,
    timeout: float,
    first_chunk: asyncio.Event,
) -> dict[str, Any]:
    """A long streamed completion in flight across a kill: how and when
    (monotonic ``end_t``) it ended, how many tokens it got."""
    out: dict[str, Any] = {"status": None, "tokens": 0, "outcome": None}
    start = time.monotonic()
    body = completion_body(model, max_tokens) | {"stream": True}
    limit = aiohttp.ClientTimeout(total=timeout)
    try:
        async with s.post(url + "/v1/completions", json=body, timeout=limit) as resp:
            out["status"] = resp.status
            if resp.status != 200:
                out["outcome"] = f"http_{resp.status}"
                out["type"], out["message"] = error_fields(await resp.text())
                return out
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                if (data := line[5:].strip()) == b"[DONE]":
                    out["outcome"] = "done"
                    break
                if "error" in (chunk := json.loads(data)):
                    out["outcome"] = "error_chunk"
                    out["type"], out["message"] = error_fields(data.decode())
                    break
                if chunk.get("choices"):
                    out["tokens"] += 1
                    out.setdefault("first_chunk_s", round(time.monotonic() - start, 3))
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
    """Gives ``tasks`` ``grace_s`` to end, then cancels the rest (counted)."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return len(pending)


async def counted(tally: Tally, request: Awaitable[Answer]) -> Answer:
    """An answer counted in ``tally`` (``cancelled_at_stop`` if cut)."""
    start = time.monotonic()
    try:
        return tally.add(await request)
    except asyncio.CancelledError:
        tally.add(Answer("cancelled_at_stop", time.monotonic() - start))
        raise


class Loop:
    """``step`` run by ``concurrency`` tasks until ``stop()`` (at most
    ``max_steps``); ``bugs`` counts steps that raised (our bugs, not answers)."""

    def __init__(
        self,
        step: Callable[[], Awaitable[Any]],
        concurrency: int = 1,
        max_steps: int = 5000,
        pause_s: float = 0.2,
    ):
        self.step, self.max_steps, self.pause_s = step, max_steps, pause_s
        self.bugs = Tally()
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
        return {
            "steps": self.steps,
            "hit_max_steps": self.steps >= self.max_steps,
            "cut_at_stop": await stop_tasks(self._tasks, grace_s),
            "client_bugs": self.bugs.summary() if self.bugs.outcomes else None,
        }


def session() -> aiohttp.ClientSession:
    """No connection limit; a new connection per request (no keep-alive race)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector)


class RelServer(Server):
    """Our server with async calls; remembers every pooled pid it saw, so
    that none is left running after the stop."""

    def __init__(self, cmd: list[str], token: str | None = None):
        super().__init__(cmd, token)
        self.pids: set[int] = set()
        self.info: dict[str, Any] = {"flags": [f for f in self.cmd[3:] if f != token]}

    def start(self, log_path: Path, timeout: float) -> float:
        self.info["log"] = log_path.name
        self.info["gpu_used_mib_before"] = common.wait_gpu_free(0.5, timeout=60)
        ready = super().start(log_path, timeout)
        self.info["ready_s"] = round(ready, 2)
        log(f"{log_path.stem}: server ready in {ready:.1f} s")
        return ready

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM to the server alone, as an operator sends it (to the group,
        it would reach pooled processes, taken for deaths); then SIGTERM and
        SIGKILL to what is left of the group, SIGKILL to pooled pids left."""
        if self.proc is None:
            return
        self.dump_stacks_if_busy()
        start, info = time.monotonic(), self.info
        with contextlib.suppress(ProcessLookupError):
            self.proc.popen.send_signal(signal.SIGTERM)
        info["stopped_by_sigterm"] = False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.popen.wait(timeout=70)
            info["stopped_by_sigterm"] = self.proc.wait_group(10)
        info["sigterm_exit_s"] = round(time.monotonic() - start, 2)
        self.proc.stop(grace_s)
        info["stop_s"] = round(time.monotonic() - start, 2)
        info["exit_code"] = self.proc.popen.returncode
        left = [p for p in sorted(self.pids) if alive_python(p)]
        if left:
            log(f"pooled processes left after the stop: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        info["pids_left_after_stop"] = left
        info["gpu_used_mib_after"] = (common.gpu_memory_used_mib() or [None])[0]
        info["log_errors"] = log_errors(self.proc.log_path)
        self.proc = None

    def dump_stacks(self) -> None:
        """SIGUSR1: every server process prints its stacks to the log."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pgid, signal.SIGUSR1)

    def dump_stacks_if_busy(self) -> None:
        """A model still busy at the stop may hang: dump where it waits."""
        try:
            listing = self.api("GET", "/v1/controller/models", timeout=10)
            busy = [
                f"{m.get('name')}: {m.get('state')}"
                for m in listing
                if m.get("state") not in ("ready", "parked", "failed")
            ]
        except (OSError, HttpError) as e:
            busy = [f"listing failed: {e}"]
        if busy:
            log(f"still busy at the stop ({busy}): dumping stacks")
            self.info["stacks_dumped_for"] = busy
            self.dump_stacks()
            time.sleep(2)

    async def admin(
        self, s: aiohttp.ClientSession, method: str, path: str, body=None, timeout=120.0
    ) -> Answer:
        return await call(s, method, self.url + path, body, self.token, timeout)

    async def complete(
        self, s: aiohttp.ClientSession, model: str, tokens: int, timeout: float
    ) -> Answer:
        """A greedy completion that must bring ``tokens`` tokens."""
        body, url = completion_body(model, tokens), self.url + "/v1/completions"
        return await call(s, "POST", url, body, timeout=timeout, expect_tokens=tokens)

    async def listing(self, s: aiohttp.ClientSession, what: str) -> list[dict] | None:
        """``GET /v1/controller/<what>``, noting pooled pids; None if failed."""
        a = await self.admin(s, "GET", f"/v1/controller/{what}", timeout=30)
        if not (a.ok and isinstance(a.body, list)):
            return None
        for x in a.body:
            pids = [
                *(x.get("worker_pids") or []),
                x.get("engine_host_pid"),
                x.get("pid"),
            ]
            self.pids.update(p for p in pids if p)
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
            {k: m.get(k) for k in keys} | {"timings_s": rounded(m.get("timings_s"))}
            for m in await self.listing(s, "models") or []
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
        workers = compact_workers(await self.listing(s, "workers"))
        return {"models": models, "workers": workers, "counters": counters}


def alive_python(pid: int) -> bool:
    """Alive and still a Python process (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return False
    return b"python" in cmdline or b"vllm" in cmdline


def rounded(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in (d or {}).items()}


def compact_workers(workers: list[dict[str, Any]] | None) -> list[dict] | None:
    keys = ("kind", "index", "pid", "state", "model")
    return None if workers is None else [{k: w.get(k) for k in keys} for w in workers]


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b[\w.]*: ")
_FRAME_LINE = re.compile(r"^(\s|\^|Traceback|$)")


def log_errors(path: Path, limit: int = 25) -> dict[str, Any]:
    """The server log's ERROR lines, WARNINGs about dead or respawned
    processes and exception lines, deduplicated, most frequent first."""
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
    """``/health`` (a stalled event loop shows there first) and the models'
    state changes, once a second while a run goes on."""

    def __init__(self, server: RelServer, s: aiohttp.ClientSession, t0: float):
        self.server, self.s, self.t0 = server, s, t0
        self.health = Tally()
        self.timeline: list[list[Any]] = []
        self.model_errors: Counter = Counter()
        self.states: dict[str, str] = {}
        self.loop = Loop(self.probe, max_steps=100_000, pause_s=1.0)

    async def probe(self) -> None:
        url = self.server.url + "/health"
        self.health.add(await call(self.s, "GET", url, timeout=10))
        now = round(time.monotonic() - self.t0, 1)
        for m in await self.server.listing(self.s, "models") or []:
            if self.states.get(m["name"]) != m["state"]:
                self.states[m["name"]] = m["state"]
                if len(self.timeline) < 400:
                    self.timeline.append([now, m["name"], m["state"]])
            if m.get("error"):
                error = str(m["error"])[:MESSAGE_CHARS]
                self.model_errors[f"{m['name']}: {error}"] += 1

    async def stop(self) -> dict[str, Any]:
        await self.loop.stop(35)
        return {
            "health": self.health.summary(),
            "state_timeline_s": self.timeline,
            "model_errors_seen": dict(self.model_errors),
        }


@dataclass
class BenchRun:
    """A ``vllm bench serve`` process; ``end_t``: when it exited (monotonic)."""

    proc: common.Proc
    result_path: Path
    output_len: int
    start_t: float = field(default_factory=time.monotonic)
    end_t: float | None = None
    timed_out: bool = False

    def __post_init__(self) -> None:
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while self.running():
            await asyncio.sleep(0.1)
        self.end_t = time.monotonic()

    def running(self) -> bool:
        return self.proc.popen.poll() is None

    async def wait(self, timeout: float, server: RelServer) -> None:
        """Waits for its end; after ``timeout`` (a hang?) dumps the server's
        stacks and stops it."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.watcher), timeout)
        if self.running():
            self.timed_out = True
            log(f"bench still running after {timeout:.0f} s: stopping it (a hang?)")
            server.dump_stacks()
        await asyncio.to_thread(self.proc.stop, 10)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.watcher, 5)
        self.end_t = self.end_t or time.monotonic()

    def result(self) -> dict[str, Any]:
        """The bench's counts and metrics, errors deduplicated."""
        out: dict[str, Any] = {
            "exit_code": self.proc.popen.returncode,
            "timed_out": self.timed_out,
            "wall_s": round((self.end_t or time.monotonic()) - self.start_t, 2),
            "log": self.proc.log_path.name,
        }
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError) as e:
            log_tail = common.tail(self.proc.log_path, 25)
            why = f"no result JSON ({type(e).__name__}: {e}); log tail:\n{log_tail}"
            return out | {"error": common.clip(why)}
        errs = result.get("errors") or []
        errors = Counter(e.strip().splitlines()[-1][:MESSAGE_CHARS] for e in errs if e)
        lens = result.get("output_lens") or []
        errs = errs or [None] * len(lens)
        pairs = zip(lens, errs, strict=False)
        for k, v in result.items():
            if not isinstance(v, list | dict) and k not in ("date", "tokenizer_id"):
                out[k] = v
        out["completed_short"] = sum(
            1 for n, e in pairs if not e and n < self.output_len
        )
        out["errors"] = [{"message": m, "count": c} for m, c in errors.most_common(20)]
        return out

    def summary(self) -> str:
        r = self.result()
        return (
            f"bench completed {r.get('completed')} failed {r.get('failed')} short "
            f"{r.get('completed_short')} in {r['wall_s']} s"
        )


class Reliability:
    def __init__(self, args: Any, settings: Settings):
        self.args, self.s, self.engine_args = args, settings, args.engine_args
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
        self.results = common.Results(args, "gpu-reliability", meta, {})
        self.data = self.results.data
        self.results.invocation["scenarios"] = args.scenario
        self.paths: dict[str, Path] = {}

    def fits(self, what: str, estimate_s: float) -> bool:
        """Whether ``what`` and the server's stop fit before the deadline."""
        what = f"{what} (+ {STOP_RESERVE_S} s to stop)"
        return self.results.fits(what, estimate_s + STOP_RESERVE_S)

    def left_for(self, wanted_s: float) -> float:
        """``wanted_s``, cut to what the deadline leaves (stop reserved)."""
        return max(5.0, min(wanted_s, self.results.left() - STOP_RESERVE_S))

    def section(self, scenario: str) -> dict[str, Any]:
        return self.data.setdefault(scenario, {})

    def start_bench(
        self, url: str, tag: str, num_prompts: int, out_len: int
    ) -> BenchRun:
        """``vllm bench serve`` to ``rel-a``, fixed lengths (a stream cut
        short shows as fewer tokens), per-request details."""
        name = f"rel-{tag}-{time.strftime('%H%M%S')}.json"
        result = self.args.log_dir / "bench-results" / name
        st = self.s
        kw = dict(num_prompts=num_prompts, input_len=st.input_len, output_len=out_len)
        kw |= dict(range_ratio="0", seed=st.seed, concurrency=st.concurrency)
        kw |= dict(warmups=BENCH_WARMUPS, detailed=True)
        cmd = common.bench_serve_cmd(url, self.paths["rel-a"], "rel-a", result, **kw)
        proc = common.launch(cmd, self.args.log_dir / f"rel-bench-{tag}.log")
        return BenchRun(proc, result, out_len)

    async def wait_streaming(
        self, server: RelServer, s: aiohttp.ClientSession, run: BenchRun
    ) -> float | None:
        """Waits (at most 120 s) until vLLM's gauge shows more requests
        running than the bench's warm-up; the last value seen."""
        want = min(BENCH_WARMUPS + 1, self.s.concurrency)
        end = time.monotonic() + self.left_for(120)
        running = None
        while time.monotonic() < end and run.running():
            running = await server.running(s, "rel-a")
            if running is not None and running >= want:
                break
            await asyncio.sleep(0.3)
        return running

    def run(self) -> int:
        scenarios = [x for x in self.args.scenario.split(",") if x]
        log(f"reliability: {scenarios}; results {self.results.path}")
        done = True
        with self.results.call():
            shape = self.s.base_shape
            base = common.ensure_models(self.args.models_dir, [shape])[shape]
            self.paths = {name: common.make_copy(base, name) for name in MODELS}
            for scenario in scenarios:
                if not getattr(self, f"scenario_{scenario}")():
                    done = False
                    break
            self.results.invocation["wall_s"] = round(self.results.elapsed(), 1)
        return self.results.finish([] if done else scenarios)

    def with_server(
        self,
        record: dict[str, Any],
        label: str,
        flags: list[str],
        body: Callable[[RelServer], Awaitable[None]],
    ) -> None:
        """Runs ``body`` against a new server, always stopped; ``done`` only
        when it ran to its end (a later call skips it then)."""
        flags += ["--park-memory-gb", str(self.s.park_memory_gb)]
        if "gpu_memory_utilization" not in self.engine_args:
            flags += ["--gpu-memory-utilization", str(self.s.gpu_memory_utilization)]
        server = RelServer.controller(flags, self.engine_args)
        record["server"] = server.info
        start = time.monotonic()
        try:
            log_path = self.args.log_dir / f"rel-{label}.log"
            server.start(log_path, self.left_for(self.args.server_timeout))
            self.results.save()
            asyncio.run(body(server))
            record["done"] = not record.get("stopped")
        except Exception as e:
            record["error"] = common.clip(f"{type(e).__name__}: {e}")
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
            flags = [str(self.paths["rel-a"]), "--num-workers", str(workers)]
            flags += ["--allowed-model-dir", str(self.args.models_dir)]
            if label == "max1":
                flags += ["--max-loaded-models", "1"]
            record: dict[str, Any] = {"started": time.strftime("%H:%M:%S")}
            self.section("churn")[label] = record
            log(f"churn {label}: {workers} workers, models {MODELS}")

            async def body(server: RelServer, r=record, lb=label) -> None:
                await self.churn(server, r, lb)

            self.with_server(record, f"churn-{label}", flags, body)
        return True

    async def churn(
        self, server: RelServer, record: dict[str, Any], label: str
    ) -> None:
        st = self.s
        async with session() as s:
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            record["phases"] = {}
            # Each side request is counted in the phase it was sent in.
            side: dict[str, Tally] = {}
            phase_now = "bench"
            rng = random.Random(0)

            async def side_step() -> None:
                tally = side.setdefault(phase_now, Tally())
                model = rng.choice(["rel-b", "rel-c"])
                await counted(tally, server.complete(s, model, 16, st.request_timeout))

            admin: dict[str, Tally] = {}
            ops = churn_ops(self.paths)
            op_index = 0

            async def admin_step() -> None:
                nonlocal op_index
                name, method, path, body = ops[op_index % len(ops)]
                op_index += 1
                tally = admin.setdefault(name, Tally())
                timeout = st.request_timeout
                await counted(tally, server.admin(s, method, path, body, timeout))

            loops: dict[str, Loop] = {}

            def start_churn() -> None:
                """Side clients and management calls, once the bench streams."""
                if not loops:
                    loops["side"] = Loop(side_step, concurrency=st.side_concurrency)
                    loops["admin"] = Loop(admin_step, 1, 500, st.admin_period_s)
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
                            running = await self.wait_streaming(server, s, run)
                            p["running_at_churn_start"] = running
                            start_churn()
                        await run.wait(self.left_for(budget), server)
                        p["bench"] = run.result()
                        log(f"churn {label} {phase}: {run.summary()}")
                    else:
                        start_churn()
                        await asyncio.sleep(self.left_for(budget))
                    p["end_s"] = round(time.monotonic() - t0, 1)
                    self.results.save()
                    if self.results.left() < STOP_RESERVE_S + 90:
                        record["stopped"] = f"deadline after phase {phase}"
                        break
            finally:
                phase_now = "stop"
                grace = self.left_for(st.stop_grace_s)
                stopped = await asyncio.gather(*(x.stop(grace) for x in loops.values()))
                record["loops"] = dict(zip(loops, stopped, strict=True))
                for phase, tally in side.items():
                    record["phases"].setdefault(phase, {})["side"] = tally.summary()
                    log(f"churn {label} {phase}: side {dict(tally.outcomes)}")
                record["admin"] = {"ops": op_index}
                record["admin"] |= {k: v.summary() for k, v in admin.items()}
                record["watch"] = await watch.stop()
                record["final"] = await server.snapshot(s)

    # kill ----------------------------------------------------------------

    def scenario_kill(self) -> bool:
        kill = self.section("kill")
        todo = [t for t in KILL_TARGETS if not kill.get(t, {}).get("done")]
        if not todo:
            log("kill: already in the results, skipped")
            return True
        estimate = ESTIMATES_S["kill_server"] + ESTIMATES_S["kill"]
        if not self.fits("kill server start", estimate):
            return False
        flags = [str(self.paths["rel-a"]), str(self.paths["rel-b"])]
        flags += ["--allowed-model-dir", str(self.args.models_dir)]
        flags += ["--num-workers", str(self.s.kill_workers)]
        record: dict[str, Any] = {"targets": todo, "started": time.strftime("%H:%M:%S")}
        kill["server"] = record
        finished: list[str] = []

        async def body(server: RelServer) -> None:
            async with session() as s:
                for target in todo:
                    if not self.fits(f"kill {target}", ESTIMATES_S["kill"]):
                        return
                    phase = kill[target] = {"started": time.strftime("%H:%M:%S")}
                    try:
                        await self.kill(server, s, target, phase)
                        finished.append(target)
                    except Exception as e:
                        phase["error"] = common.clip(f"{type(e).__name__}: {e}")
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
        b_tally = Tally()

        async def b_step() -> None:
            await counted(b_tally, server.complete(s, "rel-b", 16, st.request_timeout))

        side_b = Loop(b_step, concurrency=2)
        probes: list[asyncio.Task] = []
        pool: asyncio.Task | None = None
        run: BenchRun | None = None
        try:
            # rel-a must be ready (an earlier phase may have left it failed).
            phase["before"] = await self.recover(server, s, "rel-a", t0, attempts=1)
            models = await server.listing(s, "models") or []
            a = next((m for m in models if m["name"] == "rel-a"), {})
            pids = a.get("worker_pids") or [None]
            pid = phase["pid"] = (
                pids[0] if target == "worker" else a.get("engine_host_pid")
            )
            if not pid:
                raise RuntimeError(f"no {target} pid for rel-a in {a}")
            run = self.start_bench(
                server.url, f"kill-{target}", st.num_prompts, st.kill_output_len
            )
            # Kill only once the bench's timed part streams.
            phase["running_before_probes"] = await self.wait_streaming(server, s, run)
            firsts = [asyncio.Event() for _ in range(st.probes)]
            args = (s, server.url, "rel-a", st.probe_tokens, st.request_timeout)
            probes = [asyncio.create_task(stream_probe(*args, ev)) for ev in firsts]
            with contextlib.suppress(asyncio.TimeoutError):
                firsts_seen = asyncio.gather(*(e.wait() for e in firsts))
                await asyncio.wait_for(firsts_seen, timeout=60)
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
            wait_s = self.left_for(st.request_timeout + 10)
            done, pending = await asyncio.wait(probes, timeout=wait_s)
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
            bench = phase["bench"] = run.result()
            bench["end_after_kill_s"] = round((run.end_t or 0) - kill_t, 2)
            ended = bench["end_after_kill_s"]
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

    async def manual_reload(
        self, server: RelServer, s: aiohttp.ClientSession, model: str
    ) -> dict[str, Any]:
        unload = await server.admin(s, "DELETE", f"/v1/controller/models/{model}")
        body = {"model": str(self.paths[model]), "name": model}
        path, timeout = "/v1/controller/models", self.left_for(300)
        load = await server.admin(s, "POST", path, body, timeout)
        after = await server.complete(s, model, 8, self.s.request_timeout)
        log(
            f"manual reload of {model}: delete {unload.outcome}, load "
            f"{load.outcome}, then {after.outcome}"
        )
        return {"delete": unload.brief(), "load": load.brief(), "then": after.brief()}

    async def recover(
        self,
        server: RelServer,
        s: aiohttp.ClientSession,
        model: str,
        kill_t: float,
        attempts: int = 2000,
    ) -> dict[str, Any]:
        """Requests ``model`` until one succeeds (an automatic reload) or the
        budget ends; if none did, reloads it by hand for the next phase."""
        tally = Tally()
        sent: list[dict[str, Any]] = []
        budget_end = time.monotonic() + self.left_for(self.s.recovery_budget_s)
        ok_after = None
        while time.monotonic() < budget_end and len(sent) < attempts:
            after = round(time.monotonic() - kill_t, 2)
            limit = min(self.s.request_timeout, budget_end - time.monotonic())
            a = tally.add(await server.complete(s, model, 8, max(5.0, limit)))
            sent.append({"sent_after_kill_s": after, **a.brief()})
            if a.ok:
                ok_after = round(time.monotonic() - kill_t, 2)
                break
            await asyncio.sleep(0.5)
        out: dict[str, Any] = {
            "next_request": sent[0] if sent else None,
            "first_success_after_kill_s": ok_after,
            "automatic": ok_after is not None,
            "attempts": tally.summary(),
            "attempt_log": sent[:60],
        }
        log(
            f"{model}: first success {ok_after} s after the kill (or start); "
            f"{dict(tally.outcomes)}"
        )
        if ok_after is None:
            out["manual"] = await self.manual_reload(server, s, model)
        return out

    async def pool_full(
        self, server: RelServer, s: aiohttp.ClientSession, killed: int, kill_t: float
    ) -> dict[str, Any]:
        """Polls the workers until every slot holds a live process again."""
        expected = 2 * self.s.kill_workers  # engine hosts default to workers
        end = time.monotonic() + self.left_for(self.s.pool_budget_s)
        while time.monotonic() < end:
            listing = await server.listing(s, "workers") or []
            if (
                len(listing) >= expected
                and killed not in {w["pid"] for w in listing}
                and all(w["state"] in ("idle", "leased") for w in listing)
            ):
                full_after = round(time.monotonic() - kill_t, 2)
                return {"full_after_kill_s": full_after, "expected_processes": expected}
            await asyncio.sleep(1.0)
        return {"full_after_kill_s": None, "expected_processes": expected}

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
        record = self.section("cold3")["cold3"] = {"started": time.strftime("%H:%M:%S")}

        async def body(server: RelServer) -> None:
            await self.cold3(server, record)

        self.with_server(record, "cold3", flags, body)
        return bool(record.get("done"))

    async def cold3(self, server: RelServer, record: dict[str, Any]) -> None:
        async with session() as s:
            record["before"] = await server.snapshot(s)
            t0 = time.monotonic()
            watch = Watch(server, s, t0)
            total = Tally()
            per_model = {m: Tally() for m in MODELS}
            first_ok: dict[str, float] = {}
            timeout = self.left_for(self.s.cold_timeout)

            async def one(i: int) -> None:
                model = MODELS[i % len(MODELS)]
                a = await server.complete(s, model, 16, timeout)
                if per_model[model].add(total.add(a)).ok:
                    first_ok.setdefault(model, round(time.monotonic() - t0, 2))

            tasks = [asyncio.create_task(one(i)) for i in range(self.s.cold_requests)]
            for _ in range(await stop_tasks(tasks, timeout + 15)):
                total.add(Answer("cancelled_at_stop", 0.0))
            last = time.monotonic() - t0
            record["requests"] = total.summary()
            record["per_model"] = {m: t.summary() for m, t in per_model.items()}
            record["first_success_s"] = first_ok
            record["last_answer_s"] = round(last, 2)
            log(f"cold3: {dict(total.outcomes)} in {last:.1f} s; first {first_ok}")
            record["watch"] = await watch.stop()
            record["final"] = await server.snapshot(s)


def churn_ops(paths: dict[str, Path]) -> list[tuple[str, str, str, Any]]:
    """The management calls under churn: load, park, unpark, unload the side
    models; park the busy one (a 409 is right while it serves)."""
    ops: list[tuple[str, str, str, Any]] = []
    for m in ("rel-b", "rel-c"):
        url = f"/v1/controller/models/{m}"
        load = {"model": str(paths[m]), "name": m}
        ops.append((f"load {m}", "POST", "/v1/controller/models", load))
        ops.append((f"park {m}", "POST", f"{url}/park", None))
        ops.append((f"unpark {m}", "POST", f"{url}/unpark", None))
        ops.append((f"delete {m}", "DELETE", url, None))
    ops.insert(4, ("park rel-a", "POST", "/v1/controller/models/rel-a/park", None))
    return [*ops, ("list workers", "GET", "/v1/controller/workers", None)]


def main() -> None:
    parser = common.common_parser(__doc__)
    parser.add_argument("--scenario", default="churn", help="of churn,kill,cold3")
    parser.add_argument("--churn-runs", default="max1,fewworkers")
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny, eager")
    parser.add_argument("--park-memory-gb", type=float)
    parser.set_defaults(server_timeout=420)
    args = parser.parse_args()
    if unknown := set(args.scenario.split(",")) - {"churn", "kill", "cold3"}:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    settings = Settings(**(SMOKE if args.smoke else {}))
    if args.park_memory_gb is not None:
        settings.park_memory_gb = args.park_memory_gb
    if args.smoke:
        for var in ("VLLM_CPU_CI_ENV", "HF_HUB_OFFLINE"):
            os.environ.setdefault(var, "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if args.engine_args is None:
        gpu_args = common.DEFAULT_ENGINE_ARGS | {"dtype": "bfloat16"}
        args.engine_args = SMOKE_ENGINE_ARGS if args.smoke else gpu_args
    sys.exit(Reliability(args, settings).run())


if __name__ == "__main__":
    main()
