# SPDX-License-Identifier: Apache-2.0
"""The front door against stock ``vllm serve``: the same calls to both (real
processes, one tiny model, CPU, the same engine flags); status codes, JSON
key sets and greedy outputs must be equal call by call. Where we differ on
purpose the difference is listed in ``DIFFERENCES`` (and in docs/api.md), so
a field that upstream adds shows up here as a failure."""

import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.worker_controller.test_serve import PROMPT, STOCK_SERVE, start_server

NAME = "qwen3"
GREEDY = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}
# (label, method, path, JSON body)
CALLS: list[tuple[str, str, str, Any]] = [
    ("models", "GET", "/v1/models", None),
    ("model card", "GET", f"/v1/models/{NAME}", None),
    ("version", "GET", "/version", None),
    ("health", "GET", "/health", None),
    ("ping", "GET", "/ping", None),
    (
        "completion",
        "POST",
        "/v1/completions",
        {"model": NAME, "prompt": PROMPT, **GREEDY},
    ),
    (
        "completion with logprobs",
        "POST",
        "/v1/completions",
        {"model": NAME, "prompt": PROMPT, "logprobs": 2, **GREEDY},
    ),
    (
        "completion without model",
        "POST",
        "/v1/completions",
        {"prompt": PROMPT, **GREEDY},
    ),
    (
        "streamed completion",
        "POST",
        "/v1/completions",
        {"model": NAME, "prompt": PROMPT, "stream": True, **GREEDY},
    ),
    (
        # The tiny tokenizer has no chat template: the same 400 on both.
        "chat",
        "POST",
        "/v1/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": PROMPT}], **GREEDY},
    ),
    (
        "responses",
        "POST",
        "/v1/responses",
        {"model": NAME, "input": PROMPT, "max_output_tokens": 8, "temperature": 0},
    ),
    # SageMaker's route: the body's shape picks the endpoint (a completion).
    (
        "invocations",
        "POST",
        "/invocations",
        {"model": NAME, "prompt": PROMPT, **GREEDY},
    ),
    ("tokenize", "POST", "/tokenize", {"model": NAME, "prompt": PROMPT}),
    ("detokenize", "POST", "/detokenize", {"model": NAME, "tokens": [5, 6, 7]}),
    ("unknown model", "POST", "/v1/completions", {"model": "nope", "prompt": "x"}),
    (
        "bad parameter",
        "POST",
        "/v1/completions",
        {"model": NAME, "prompt": "x", "max_tokens": -1},
    ),
    ("unknown route", "GET", "/v1/nope", None),
]
# Where we answer otherwise on purpose: label -> what differs.
DIFFERENCES = {
    # Every card also says whether the model is loaded (many models behind
    # one port: a client can see what a first request would wait for).
    "models": "cards have a 'state'",
    # Stock has no such route; ours answers the card of any model a request
    # may name (the openai client's models.retrieve).
    "model card": "200 with the card; stock 404",
    # Ours answers in the OpenAI error shape, as for every other error.
    "unknown route": "OpenAI error body; stock {'detail': 'Not Found'}",
}


def shape(value: Any) -> Any:
    """The keys of ``value``, recursively; what a client's parser sees."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return "."


def answer(url: str, method: str, path: str, body: Any) -> dict[str, Any]:
    r = httpx.request(method, url + path, json=body, timeout=120)
    out: dict[str, Any] = {"status": r.status_code, "text": r.text}
    if body and body.get("stream"):
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        out["events"] = events[-1:]  # "[DONE]"
        out["json"] = [json.loads(e) for e in events[:-1]]
    elif r.headers.get("content-type", "").startswith("application/json"):
        out["json"] = r.json()
    return out


def merged_stream(a: dict[str, Any]) -> dict[str, Any]:
    """A stream's chunks as a client that joins them sees them: the distinct
    chunk shapes, the joined text and the last finish reason. (How many
    chunks there are is timing: vLLM's output collector merges the deltas a
    slow reader has not taken yet.)"""
    chunks = a["json"]
    choices = [c for k in chunks for c in k["choices"]]
    return {
        "shapes": sorted({json.dumps(shape(k), sort_keys=True) for k in chunks}),
        "text": "".join(c.get("text") or "" for c in choices),
        "finish_reason": choices[-1].get("finish_reason") if choices else None,
    }


def outputs(a: dict[str, Any]) -> Any:
    """The model's answers in a reply (text, logprobs, finish reason of each
    choice of each chunk; the output texts of a Responses answer), or None
    if it has none."""
    j = a.get("json")
    if isinstance(j, dict) and isinstance(j.get("output"), list):  # Responses
        return [c.get("text") for item in j["output"] for c in item.get("content", [])]
    chunks = j if isinstance(j, list) else [j]
    if not chunks or not all(isinstance(c, dict) and "choices" in c for c in chunks):
        return None
    return [
        [
            (c.get("text"), c.get("logprobs"), c.get("finish_reason"))
            for c in k["choices"]
        ]
        for k in chunks
    ]


# Replies compared whole, values too.
WHOLE = {"version", "health", "ping", "tokenize", "detokenize"}


@pytest.fixture(scope="module")
def servers(tiny_models):
    model = str(tiny_models[NAME])
    stock, stock_url = start_server(
        f"--model={model}", f"--served-model-name={NAME}", command=STOCK_SERVE
    )
    ours, our_url = start_server(model)
    yield stock_url, our_url
    # SIGTERM: stock `vllm serve` stops its EngineCore and worker only on a
    # graceful shutdown (killed, it leaves them running, orphaned).
    for proc in (stock, ours):
        proc.terminate()
    for proc in (stock, ours):
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("label, method, path, body", CALLS, ids=[c[0] for c in CALLS])
def test_same_answer_as_vllm_serve(servers, label, method, path, body):
    stock_url, our_url = servers
    stock = answer(stock_url, method, path, body)
    ours = answer(our_url, method, path, body)
    if label == "models":
        for card in ours["json"]["data"]:
            assert card.pop("state") == "ready"
    if label in DIFFERENCES:
        if label == "model card":
            assert stock["status"] == 404 and ours["status"] == 200, (stock, ours)
            assert set(ours["json"]) == set(stock_cards(stock_url)[0]) | {"state"}
        elif label == "unknown route":
            assert stock["status"] == ours["status"] == 404
            assert stock["json"] == {"detail": "Not Found"}
            assert set(ours["json"]["error"]) >= {"message", "type", "code"}
        if label != "models":
            return
    assert ours["status"] == stock["status"], (label, stock["text"], ours["text"])
    if "events" in stock:  # a stream
        assert ours.get("events") == stock["events"]
        assert merged_stream(ours) == merged_stream(stock), (label, stock, ours)
        return
    assert shape(ours.get("json")) == shape(stock.get("json")), (label, stock, ours)
    assert outputs(ours) == outputs(stock), label
    if label in WHOLE:
        assert stock["status"] == 200, (label, stock["text"])
        assert ours["text"] == stock["text"], (label, stock["status"], ours["text"])


def stock_cards(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/v1/models").json()["data"]
