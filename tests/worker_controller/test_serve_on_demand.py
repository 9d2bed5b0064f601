# SPDX-License-Identifier: Apache-2.0
"""Front door: models loaded on first request from --allowed-model-dir, LRU
eviction under --max-loaded-models, API key, and the management API."""

import json
import shutil
import time

import httpx
import openai
import pytest

from tests.worker_controller.models import SEED, build_model, hf_greedy
from tests.worker_controller.test_serve import greedy_completion, start_server

PROMPT = "The quick brown fox"
API_KEY, ADMIN = "sk-test", "admin-test"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tiny_models["llama"].parent  # holds qwen3/, opt/, llama/
    # qwen3's shape, other weights: swaps.
    build_model("qwen3", root, seed=SEED + 1, name="qwen3-b")
    broken = root / "broken"  # a checkpoint whose architecture vLLM lacks
    if not broken.exists():
        shutil.copytree(tiny_models["llama"], broken)
        config = json.loads((broken / "config.json").read_text())
        config["architectures"] = ["NotARealModelForCausalLM"]
        (broken / "config.json").write_text(json.dumps(config))
    catalog = tmp_path_factory.mktemp("catalog") / "models.yaml"
    catalog.write_text(
        "models:\n"
        "  tiny-qwen:\n"
        f"    model: {tiny_models['qwen3']}\n"
        "    engine_args: {max_num_seqs: 2}\n"
        "    keep_alive: 2s\n"
    )
    proc, url = start_server(
        str(tiny_models["llama"]),
        "--num-workers=1",
        f"--allowed-model-dir={root}",
        f"--model-catalog={catalog}",
        "--max-loaded-models=1",
        f"--api-key={API_KEY}",
        f"--admin-token={ADMIN}",
        "--precompile",
    )
    yield url
    proc.kill()


def test_catalog_precompiled_at_start(server):
    """--precompile loaded the catalog's model once and unloaded it before
    the start-up model (llama) was loaded."""
    text = httpx.get(f"{server}/metrics").text
    assert "vllm_wc_loads_total 2.0" in text
    assert "vllm_wc_unloads_total 1.0" in text


def test_api_key_required(server):
    assert httpx.get(f"{server}/v1/models").status_code == 401
    ok = httpx.get(
        f"{server}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    states = {c["id"]: c["state"] for c in ok.json()["data"]}
    assert states == {
        "llama": "ready",
        "qwen3": "available",
        "opt": "available",
        "tiny-qwen": "available",
        "broken": "available",
        "qwen3-b": "available",
    }


def test_load_on_demand_with_lru_eviction(server, tiny_models):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    for kind in ("qwen3", "opt", "qwen3", "llama"):
        out = greedy_completion(client, kind, 8)
        assert out.choices[0].token_ids == hf_greedy(tiny_models[kind], PROMPT, 8)
        cards = client.models.list().data
        loaded = [m.id for m in cards if getattr(m, "state", None) == "ready"]
        assert loaded == [kind]  # --max-loaded-models 1: the other was evicted


def test_same_shape_checkpoints_swap(server, tiny_models):
    """Under --max-loaded-models 1, a checkpoint of the loaded model's shape
    takes its engine over: same processes, the new weights' tokens."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    paths = {"qwen3": tiny_models["qwen3"], "qwen3-b": tiny_models["qwen3"].parent}
    paths["qwen3-b"] = paths["qwen3-b"] / "qwen3-b"
    pids = None
    for i, name in enumerate(("qwen3", "qwen3-b", "qwen3", "qwen3-b")):
        raw = greedy_completion(client, name, 8, raw=True)
        out = raw.parse()
        assert out.choices[0].token_ids == hf_greedy(paths[name], PROMPT, 8), name
        # The response says that it waited, for what and how long.
        assert raw.headers["x-vllm-wc-load-kind"] == ("swap" if i else "load")
        assert int(raw.headers["x-vllm-wc-load-ms"]) > 0
        again = greedy_completion(client, name, 1, raw=True)
        assert "x-vllm-wc-load-kind" not in again.headers
        (model,) = httpx.get(f"{server}/v1/controller/models", headers=admin).json()
        assert model["name"] == name
        if i > 0:  # the first replaces llama, of another shape
            assert model["brought_up"] == "swap", model
            assert (model["worker_pids"], model["engine_host_pid"]) == pids
        pids = (model["worker_pids"], model["engine_host_pid"])
    metrics = httpx.get(f"{server}/metrics", headers=admin).text
    assert "vllm_wc_swaps_total 3.0" in metrics
    assert 'vllm_wc_requests_waited_total{kind="swap"} 3.0' in metrics
    assert 'vllm_wc_request_wait_seconds_count{kind="swap"} 3.0' in metrics


def test_management_api(server, tiny_models):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    api = f"{server}/v1/controller"
    assert httpx.get(f"{api}/workers").status_code == 401
    assert (
        httpx.get(
            f"{api}/workers", headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 401
    )
    workers = httpx.get(f"{api}/workers", headers=admin).json()
    assert {w["kind"] for w in workers} == {"worker", "engine_host"}
    (worker,) = [w for w in workers if w["kind"] == "worker"]
    assert worker["health"]["memory_bytes"] >= worker["baseline_bytes"] > 0
    loaded = httpx.post(
        f"{api}/models",
        headers=admin,
        json={"model": str(tiny_models["opt"]), "name": "opt-admin"},
        timeout=300,
    )
    assert loaded.status_code == 200, loaded.text
    assert {"weights", "engine_init", "total"} <= set(loaded.json()["timings_s"])
    names = [m["name"] for m in httpx.get(f"{api}/models", headers=admin).json()]
    assert names == ["opt-admin"]
    # Parking is vLLM's sleep mode: CUDA only (GPU runs: benchmarks/).
    parked = httpx.post(f"{api}/models/opt-admin/park", headers=admin)
    assert parked.status_code == 409
    assert "sleep mode" in parked.json()["error"]["message"]
    woken = httpx.post(f"{api}/models/opt-admin/unpark", headers=admin)
    assert woken.status_code == 409
    assert "not parked" in woken.json()["error"]["message"]
    assert httpx.delete(f"{api}/models/opt-admin", headers=admin).status_code == 200
    assert httpx.delete(f"{api}/models/opt-admin", headers=admin).status_code == 404
    outside = httpx.post(f"{api}/models", headers=admin, json={"model": "/etc"})
    assert outside.status_code == 403
    remote_code = httpx.post(
        f"{api}/models",
        headers=admin,
        json={
            "model": str(tiny_models["opt"]),
            "engine_args": {"trust_remote_code": True},
        },
    )
    assert remote_code.status_code == 403
    bad_args = httpx.post(
        f"{api}/models",
        headers=admin,
        json={"model": str(tiny_models["opt"]), "engine_args": {"no_such_arg": 1}},
        timeout=60,
    )
    assert bad_args.status_code == 400


def test_catalog_model_and_keep_alive(server, tiny_models):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    out = greedy_completion(client, "tiny-qwen", 8)
    assert out.choices[0].token_ids == hf_greedy(tiny_models["qwen3"], PROMPT, 8)
    deadline = time.monotonic() + 30
    while True:  # keep_alive: 2s in the catalog
        states = {m.id: getattr(m, "state", None) for m in client.models.list().data}
        if states["tiny-qwen"] == "available":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def test_metrics(server):
    text = httpx.get(f"{server}/metrics").text
    assert 'vllm_wc_load_phase_seconds_bucket{le="1.0",phase="weights"}' in text
    assert "vllm_wc_loads_total" in text
    # One failed load: the management test's invalid engine arguments.
    assert "vllm_wc_load_failures_total 1.0" in text
    evictions = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vllm_wc_evictions_total")
    )
    assert evictions >= 3  # LRU test and keep-alive
    assert 'vllm_wc_processes{kind="worker",state=' in text


def test_failed_on_demand_load_is_a_clear_error(server, tiny_models):
    r = httpx.post(
        f"{server}/v1/completions",
        headers=bearer(API_KEY),
        json={"model": "broken", "prompt": PROMPT, "max_tokens": 4},
        timeout=300,
    )
    # The model's own failure: 503 (a later attempt may succeed, after a
    # back-off), never a 500; it evicts nothing.
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert "NotARealModelForCausalLM" in r.json()["error"]["message"]
    again = httpx.post(
        f"{server}/v1/completions",
        headers=bearer(API_KEY),
        json={"model": "broken", "prompt": PROMPT, "max_tokens": 4},
    )
    assert again.status_code == 503  # backing off: not loaded again at once
    assert "next attempt in" in again.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    out = greedy_completion(client, "opt", 8)
    assert out.choices[0].token_ids == hf_greedy(tiny_models["opt"], PROMPT, 8)
