# SPDX-License-Identifier: Apache-2.0
"""One server, two kinds of model from a catalog: a pooling (embedding)
model answers ``/v1/embeddings`` like HF transformers, the demo chat model
knows the capital of France, and ``/metrics`` carries vLLM's own engine
metrics for both, labelled by model, next to the controller's."""

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModel, AutoTokenizer

from tests.worker_controller.test_serve import start_server, stop_server
from vllm.worker_controller.demo_model import demo_engine_args, ensure_demo_model

EMBED, DEMO = "tiny-embed", "smollm2"
ADMIN = "admin-test"
TEXTS = ["The quick brown fox", "The capital of France is Paris."]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "models.yaml"
    catalog.write_text(
        "models:\n"
        f"  {EMBED}:\n"  # a causal LM run as an embedding model by vLLM
        f"    model: {tiny_models['qwen3']}\n"
        "    engine_args: {runner: pooling, convert: embed}\n"
        f"  {DEMO}:\n"  # as `make serve` and test_demo_model.py load it
        f"    model: {ensure_demo_model()}\n"
        f"    engine_args: {json.dumps({**demo_engine_args(), 'max_model_len': 512})}\n"
    )
    proc, url = start_server(
        f"--model-catalog={catalog}", "--num-workers=2", f"--admin-token={ADMIN}"
    )
    yield url
    stop_server(proc)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300)


def hf_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    """What vLLM's embedding adapter computes by default for a causal LM:
    the final (normed) hidden state of the last token, L2-normalized."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    rows = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt")  # BOS, as vLLM adds
            hidden = model(**inputs).last_hidden_state[0, -1]
            rows.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    return np.stack(rows)


def test_embeddings_match_hf(server, tiny_models):
    out = client(server).embeddings.create(
        model=EMBED, input=TEXTS, encoding_format="float"
    )
    assert out.model == EMBED
    got = np.array([d.embedding for d in sorted(out.data, key=lambda d: d.index)])
    expected = hf_embeddings(tiny_models["qwen3"], TEXTS)
    assert got.shape == expected.shape == (2, 64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # Its vLLM app has no generation routes.
    r = httpx.post(
        f"{server}/v1/completions", json={"model": EMBED, "prompt": "x"}, timeout=60
    )
    assert r.status_code == 404, r.text


def test_demo_model_knows_the_capital_of_france(server):
    chat = client(server).chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    answer = chat.choices[0].message.content
    assert "Paris" in answer, answer


def test_metrics_have_vllm_engine_metrics_per_model(server):
    c = client(server)  # one request each, so that this test stands alone
    c.embeddings.create(model=EMBED, input=TEXTS[0])
    c.completions.create(model=DEMO, prompt="Hello", max_tokens=4, temperature=0)
    text = httpx.get(f"{server}/metrics").text
    # Valid exposition: each family's HELP and TYPE once, no duplicate series.
    lines = text.splitlines()
    meta = [line for line in lines if line.startswith("#")]
    assert len(meta) == len(set(meta))
    samples = [line for line in lines if not line.startswith("#")]
    assert len(samples) == len(set(s.rsplit(" ", 1)[0] for s in samples))
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def values(family: str, sample: str) -> dict[str, float]:
        return {
            s.labels.get("model_name", ""): s.value
            for s in families[family].samples
            if s.name == sample
        }

    prompt_tokens = values("vllm:prompt_tokens", "vllm:prompt_tokens_total")
    assert prompt_tokens.keys() == {EMBED, DEMO} and min(prompt_tokens.values()) > 0
    generated = values("vllm:generation_tokens", "vllm:generation_tokens_total")
    assert generated[DEMO] >= 4
    requests = values(
        "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count"
    )
    assert requests[EMBED] >= 1 and requests[DEMO] >= 1
    # Scheduler stats come from the engine host: it runs with stats on too.
    queries = values("vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total")
    assert min(queries.values()) > 0
    # Info gauges without a model label get one: no two models collide.
    assert values("vllm:cache_config_info", "vllm:cache_config_info").keys() == {
        EMBED,
        DEMO,
    }
    # The controller's metrics, in the same exposition.
    assert values("vllm_wc_loads", "vllm_wc_loads_total") == {"": 2.0}
    assert "vllm_wc_processes" in families
    # An unloaded model's engine metrics go with it.
    r = httpx.delete(
        f"{server}/v1/controller/models/{EMBED}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    families = {
        f.name: f
        for f in text_string_to_metric_families(httpx.get(f"{server}/metrics").text)
    }
    assert values("vllm:prompt_tokens", "vllm:prompt_tokens_total").keys() == {DEMO}
    assert values("vllm_wc_unloads", "vllm_wc_unloads_total") == {"": 1.0}
