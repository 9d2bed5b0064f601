# SPDX-License-Identifier: Apache-2.0
"""Every model-scoped route of `vllm serve` reaches the model's app.

The route tables (``vllm/worker_controller/routes.py``) are walked against
every route upstream's ``build_app`` registers, for every task and with
every optional route switched on: a route upstream adds fails here until it
is routed or listed with a reason. Then a real server with a generation
model, an embedding model and a classifier checks that each routed route
reaches the model's own app, and that pooling, scoring, reranking and
stored responses give the right answers (HF transformers as the reference).
"""

import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import vllm.envs
from tests.worker_controller.models import build_classifier
from tests.worker_controller.test_serve import start_server, stop_server
from tests.worker_controller.test_serve_model_kinds import hf_embeddings
from vllm.config import ModelConfig
from vllm.tasks import FRONTEND_TASKS, GENERATION_TASKS, POOLING_TASKS
from vllm.worker_controller.compat.lora import RUNTIME_LORA_PATHS
from vllm.worker_controller.compat.serving import build_app
from vllm.worker_controller.routes import (
    MODEL_ROUTES,
    NOT_ROUTED,
    RESPONSE_ID_ROUTES,
    ROUTER_ROUTES,
)
from vllm.worker_controller.serve import make_parser

GENERATE, OTHER, EMBED, CLASSIFY = "qwen3", "opt", "tiny-embed", "tiny-classifier"
TEXTS = ["The quick brown fox", "The capital of France is Paris."]
# Routes only a pooling model's app has, by the model here that has them.
POOLING_ROUTES: dict[str, str] = {
    "/v1/embeddings": EMBED,
    "/v2/embed": EMBED,
    "/pooling": EMBED,
    "/classify": CLASSIFY,
    "/score": CLASSIFY,
    "/v1/score": CLASSIFY,
    "/rerank": CLASSIFY,
    "/v1/rerank": CLASSIFY,
    "/v2/rerank": CLASSIFY,
}
# No speech-to-text model can be built offline: these are checked to read
# the model from the form (the generation model's app then has no route).
SPEECH_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")


# ------------------------------------------------- upstream's route list


def _routes_of(app: Any) -> set[tuple[str, str]]:
    """(path, method) of each route; WEBSOCKET for WebSockets, * for mounts."""
    out = set()
    for route in app.routes:
        methods = getattr(route, "methods", None)
        if methods:
            out |= {(route.path, m) for m in methods}
        elif type(route).__name__.endswith("WebSocketRoute"):
            out.add((route.path, "WEBSOCKET"))
        else:
            out.add((route.path, "*"))
    return out


@pytest.fixture(scope="module")
def classifier(tiny_models, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("classifier") / "classifier"
    return build_classifier(tiny_models["qwen3"], dest)


@pytest.fixture
def upstream_routes(tiny_models, classifier, monkeypatch) -> set[tuple[str, str]]:
    """Every route `vllm serve`'s ``build_app`` registers for any task, with
    the development and runtime-LoRA endpoints, the tokenizer-info, profiler
    and docs routes all switched on; pooling routes from the configs of a
    real embedding model and a real one-label classifier."""
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    vllm.envs.disable_envs_cache()  # read them now, not a cached value
    flags = [
        "--enable-tokenizer-info-endpoint",
        '--profiler-config={"profiler": "torch", "torch_profiler_dir": "/tmp"}',
    ]
    configs = [
        ModelConfig(model=str(tiny_models["qwen3"]), runner="pooling", convert="embed"),
        ModelConfig(model=str(classifier), runner="pooling"),
    ]
    routes: set[tuple[str, str]] = set()
    for docs in ([], ["--enable-offline-docs"]):
        args = make_parser().parse_args(flags + docs)
        for task in GENERATION_TASKS + FRONTEND_TASKS:
            routes |= _routes_of(build_app(args, (task,), None))
        for config in configs:
            for task in POOLING_TASKS:
                routes |= _routes_of(build_app(args, (task,), config))
    return routes


def test_every_upstream_route_is_routed_or_listed(upstream_routes):
    # The switches took: the enumeration covers the optional routes.
    assert {("/collective_rpc", "POST"), ("/v1/load_lora_adapter", "POST")} <= (
        upstream_routes
    )
    assert {("/tokenizer_info", "GET"), ("/start_profile", "POST")} <= upstream_routes
    assert {("/classify", "POST"), ("/v1/rerank", "POST"), ("/v2/embed", "POST")} <= (
        upstream_routes
    )
    ours = {
        (path, method)
        for table in (MODEL_ROUTES, RESPONSE_ID_ROUTES)
        for path, methods in table.items()
        for method in methods
    }
    unaccounted = sorted(
        (path, method)
        for path, method in upstream_routes - ours
        if path not in ROUTER_ROUTES and path not in NOT_ROUTED
    )
    assert not unaccounted, (
        "upstream registers routes that are neither routed "
        "(routes.MODEL_ROUTES, RESPONSE_ID_ROUTES) nor listed with a reason "
        f"(routes.NOT_ROUTED, ROUTER_ROUTES): {unaccounted}"
    )
    # And no table names a route upstream does not have (a stale entry).
    listed = {p for p, _ in ours} | set(NOT_ROUTED) | set(ROUTER_ROUTES)
    stale = sorted(listed - {path for path, _ in upstream_routes})
    assert not stale, f"listed, but upstream has no such route: {stale}"
    assert ours <= upstream_routes, sorted(ours - upstream_routes)


# ----------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tiny_models, classifier, tmp_path_factory) -> str:
    catalog = tmp_path_factory.mktemp("routes-catalog") / "models.yaml"
    catalog.write_text(
        "models:\n"
        f"  {GENERATE}: {{model: {tiny_models['qwen3']}}}\n"
        f"  {OTHER}: {{model: {tiny_models['opt']}}}\n"
        f"  {EMBED}:\n"
        f"    model: {tiny_models['qwen3']}\n"
        "    engine_args: {runner: pooling, convert: embed}\n"
        f"  {CLASSIFY}: {{model: {classifier}}}\n"
    )
    proc, url = start_server(
        f"--model-catalog={catalog}",
        "--num-workers=2",
        "--enable-tokenizer-info-endpoint",
        env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"},
    )
    yield url
    stop_server(proc)


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=300)


def from_router(r: httpx.Response) -> str | None:
    """The router's own refusal (no such route, the model lacks it, no
    model named), or None when the answer came from a model's app."""
    if r.status_code not in (400, 404, 405):
        return None
    message = r.json()["error"]["message"]
    ours = ("Not found: ", "does not serve", "names no 'model'", "Method ")
    return message if message.startswith(ours) or ours[1] in message else None


def _model_for(path: str) -> str:
    return POOLING_ROUTES.get(path, GENERATE)


def reaches_the_app(url: str, path: str) -> None:
    """A request naming the model (and nothing else) reaches the model's
    app: its answer is the app's (a 200, or upstream's own 400 for the
    missing fields), not one of the router's refusals."""
    model = _model_for(path)
    if MODEL_ROUTES[path] == ("GET",):
        query = urllib.parse.urlencode({"model": model})
        r = httpx.get(f"{url}{path}?{query}", timeout=300)
    else:
        r = post(url, path, {"model": model})
    assert r.status_code in (200, 400), (path, r.status_code, r.text)
    assert from_router(r) is None, (path, r.text)
    if path == "/tokenizer_info":
        assert r.status_code == 200 and r.json()["eos_token"] == "</s>"


# The tests below run in this order, which loads each model once or twice
# (two workers: two models at a time). The run-time LoRA routes exist only
# with VLLM_ALLOW_RUNTIME_LORA_UPDATING (test_lora.py runs them).
@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in MODEL_ROUTES
        if p not in (*POOLING_ROUTES, *SPEECH_ROUTES, *RUNTIME_LORA_PATHS)
    ),
)
def test_generation_routes_reach_the_models_app(server, path):
    reaches_the_app(server, path)


def test_speech_routes_take_the_model_from_the_form(server):
    for path in SPEECH_ROUTES:
        files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
        r = httpx.post(
            server + path, data={"model": GENERATE}, files=files, timeout=300
        )
        # The form named the generation model, whose app has no such route.
        assert r.status_code == 404, r.text
        assert f"`{GENERATE}` does not serve {path}" in r.json()["error"]["message"]
        r = httpx.post(server + path, data={"model": "nope"}, files=files)
        assert r.status_code == 404 and "`nope` does not exist" in r.text


def test_routes_not_routed_are_404(server):
    for path in ("/collective_rpc", "/sleep", "/scale_elastic_ep"):
        r = post(server, path, {"model": GENERATE})
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["message"] == f"Not found: POST {path}"
    assert httpx.get(f"{server}/load").status_code == 404


def test_realtime_websocket_is_refused(server):
    """Refused at the handshake (403), not left to a server error."""
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(
        "GET",
        "/v1/realtime",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert conn.getresponse().status == 403
    conn.close()


# -------------------------------------------------------- real answers


def test_stored_responses_are_found_across_models(server):
    """A response stored by one model's app is retrieved, and its
    cancellation reaches that app, though the request names no model."""
    for model in (GENERATE, OTHER):  # both loaded: one app does not know it
        made = post(
            server,
            "/v1/responses",
            {"model": model, "input": TEXTS[0], "max_output_tokens": 6},
        )
        assert made.status_code == 200, made.text
        assert made.json()["model"] == model
        response_id = made.json()["id"]
        got = httpx.get(f"{server}/v1/responses/{response_id}", timeout=60)
        assert got.status_code == 200, got.text
        assert got.json()["output"] == made.json()["output"]
        cancel = httpx.post(f"{server}/v1/responses/{response_id}/cancel")
        assert cancel.status_code == 400  # upstream's answer, from its store
        assert "Cannot cancel a synchronous response" in cancel.text
    unknown = httpx.get(f"{server}/v1/responses/resp_nope", timeout=60)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }


def test_tokenize_reaches_each_kind_of_model(server):
    """/tokenize and /detokenize are served by every model's app, pooling
    ones included, with the model's own tokenizer."""
    for model in (GENERATE, EMBED):
        r = post(server, "/tokenize", {"model": model, "prompt": TEXTS[0]})
        assert r.status_code == 200, r.text
        tokens = r.json()["tokens"]
        r = post(server, "/detokenize", {"model": model, "tokens": tokens})
        assert r.status_code == 200 and TEXTS[0] in json.loads(r.text)["prompt"]


@pytest.mark.parametrize("path", list(POOLING_ROUTES))  # the embedder's first
def test_pooling_routes_reach_the_models_app(server, path):
    reaches_the_app(server, path)


def test_pooling_and_bi_encoder_scores_match_hf(server, tiny_models):
    expected = hf_embeddings(tiny_models["qwen3"], TEXTS)
    r = post(server, "/pooling", {"model": EMBED, "input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array([d["data"] for d in sorted(r.json()["data"], key=_index)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    cosine = float(expected[0] @ expected[1])  # normalized: the dot product
    r = post(
        server, "/v1/score", {"model": EMBED, "text_1": TEXTS[0], "text_2": TEXTS[1]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["score"] == pytest.approx(cosine, abs=1e-4)


def test_classify_score_and_rerank_match_hf(server, classifier):
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    model = AutoModelForSequenceClassification.from_pretrained(
        classifier, dtype=torch.float32
    )

    def hf_prob(*texts: str) -> float:
        with torch.no_grad():
            logits = model(**tokenizer(*texts, return_tensors="pt")).logits
        return torch.sigmoid(logits[0, 0]).item()  # one label: a sigmoid

    r = post(server, "/classify", {"model": CLASSIFY, "input": TEXTS})
    assert r.status_code == 200, r.text
    probs = [d["probs"][0] for d in sorted(r.json()["data"], key=_index)]
    assert probs == pytest.approx([hf_prob(t) for t in TEXTS], abs=1e-4)
    # A cross-encoder: the pair in one sequence, as the tokenizer pairs them.
    query, documents = TEXTS[0], ["hello there", TEXTS[1]]
    expected = [hf_prob(query, d) for d in documents]
    r = post(
        server, "/v1/score", {"model": CLASSIFY, "text_1": query, "text_2": documents}
    )
    assert r.status_code == 200, r.text
    scores = [d["score"] for d in sorted(r.json()["data"], key=_index)]
    assert scores == pytest.approx(expected, abs=1e-4)
    r = post(
        server,
        "/v1/rerank",
        {"model": CLASSIFY, "query": query, "documents": documents},
    )
    assert r.status_code == 200, r.text
    ranked = r.json()["results"]
    assert [d["index"] for d in ranked] == sorted(
        range(len(documents)), key=lambda i: -expected[i]
    )
    assert [d["relevance_score"] for d in ranked] == pytest.approx(
        sorted(expected, reverse=True), abs=1e-4
    )


def _index(item: dict[str, Any]) -> int:
    return item["index"]
