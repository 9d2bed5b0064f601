# SPDX-License-Identifier: Apache-2.0
"""The seed's scenario end to end: a stock ``vllm serve`` process (not
pooled) on the same machine takes its weights from a model served by
``python -m vllm.worker_controller.serve``, through the ``wc_peer`` loader
plugin (entry point), and answers with the tokens of the served model,
which was loaded from disk. The export endpoint wants the admin token."""

import json
import subprocess

import httpx
import pytest

from tests.worker_controller.test_serve import STOCK_SERVE, server_log, start_server

NAME = "qwen3"
BODY = {
    "model": NAME,
    "prompt": "The capital of France is",
    "max_tokens": 12,
    "temperature": 0,
    "ignore_eos": True,
    "logprobs": 1,
}


# A short profile run on both sides (the CPU suite's 2 cores).
FAST = ["--max-num-batched-tokens=256"]


def greedy_tokens(url: str) -> list[str]:
    reply = httpx.post(f"{url}/v1/completions", json=BODY, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["logprobs"]["tokens"]


def stop(*procs: subprocess.Popen) -> None:
    # SIGTERM: stock `vllm serve` stops its EngineCore and worker only then.
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def source(tiny_models, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("peer") / "admin-token"
    proc, url = start_server(
        str(tiny_models[NAME]),
        "--num-workers=1",
        f"--admin-token-file={token_file}",
        *FAST,
    )
    yield url, token_file
    stop(proc)


def test_stock_vllm_serve_loads_from_the_controllers_model(tiny_models, source):
    url, token_file = source
    expected = greedy_tokens(url)  # loads the model (from disk) and answers
    export = f"{url}/v1/controller/models/{NAME}/weights/export"
    # The export endpoint is the management API's: admin token or 401.
    assert httpx.post(export, json={}).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(export, json={}, headers=wrong).status_code == 401
    extra = {"peer_url": url, "peer_model": NAME, "peer_token_file": str(token_file)}
    stock, stock_url = start_server(
        f"--model={tiny_models[NAME]}",
        f"--served-model-name={NAME}",
        "--load-format=wc_peer",
        f"--model-loader-extra-config={json.dumps(extra)}",
        *FAST,
        command=STOCK_SERVE,
    )
    try:
        assert greedy_tokens(stock_url) == expected
        log = server_log(stock_url).read_text()
        assert f"Loaded weights from peer {url} model '{NAME}' (rank 0) via shm" in log
        assert "Peer weights unusable" not in log
    finally:
        stop(stock)
    # The source served on, untouched.
    assert greedy_tokens(url) == expected
    token = token_file.read_text().strip()
    models = httpx.get(
        f"{url}/v1/controller/models", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert [(m["name"], m["state"]) for m in models] == [(NAME, "ready")]
