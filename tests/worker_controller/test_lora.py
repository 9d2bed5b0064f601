# SPDX-License-Identifier: Apache-2.0
"""LoRA adapters as models: catalog adapters and management-API adapters
served by their base's engine (vLLM's own LoRA support), greedy tokens equal
to HF transformers with PEFT's adapter applied; an adapter request loads its
unloaded base and counts as a use of it; upstream's run-time LoRA routes;
bad adapters answered 4xx without anything loaded or evicted."""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import load_file, save_file

from tests.worker_controller.conftest import TINY_ARGS
from tests.worker_controller.models import build_lora_adapter, hf_greedy
from tests.worker_controller.test_serve import PROMPT, greedy_completion, start_server
from vllm.worker_controller import serve
from vllm.worker_controller.adapters import (
    DEFAULT_MAX_LORAS,
    fitting_rank,
    lora_engine_args,
)
from vllm.worker_controller.config import build_engine_config
from vllm.worker_controller.errors import InvalidEngineArgsError
from vllm.worker_controller.executor.remote_executor import RemoteExecutor
from vllm.worker_controller.worker.compile_cache import engine_shape_key

ADMIN = "admin-test"
BASE = "tiny-llama"  # the catalog's base; the same checkpoint as `llama`
KEEP_ALIVE_S = 15
TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tiny_models) -> dict[str, Path]:
    """Random adapters built offline with PEFT: three of llama (rank 8),
    one of rank 16, and one of qwen3 (another hidden size) that passes the
    checks of its folder but not the llama engine's; plus broken folders."""
    root = tiny_models["llama"].parent / "lora"  # under --allowed-model-dir
    root.mkdir(exist_ok=True)
    llama = tiny_models["llama"]
    built = {
        name: build_lora_adapter(llama, root / name, seed)
        for name, seed in (("ad-a", 1), ("ad-b", 2), ("ad-c", 3))
    }
    built["rank-16"] = build_lora_adapter(llama, root / "rank-16", 4, rank=16)
    built["qwen3-shaped"] = build_lora_adapter(
        tiny_models["qwen3"], root / "qwen3-shaped", 5
    )
    no_config = root / "no-config"
    if not no_config.exists():
        shutil.copytree(built["ad-a"], no_config)
        (no_config / "adapter_config.json").unlink()
    garbage = root / "garbage-weights"
    if not garbage.exists():
        shutil.copytree(built["ad-a"], garbage)
        (garbage / "adapter_model.safetensors").write_bytes(b"\x01" * 64)
    # Weights for a layer the model lacks: only the engine knows.
    unknown = root / "unknown-module"
    if not unknown.exists():
        shutil.copytree(built["ad-a"], unknown)
        weights = unknown / "adapter_model.safetensors"
        tensors = load_file(weights)
        tensors = {k.replace("q_proj", "foo_proj"): t for k, t in tensors.items()}
        save_file(tensors, weights)
    return {
        **built,
        "no-config": no_config,
        "garbage-weights": garbage,
        "unknown-module": unknown,
    }


@pytest.fixture(scope="module")
def expected(tiny_models, adapters) -> dict[str, list[int]]:
    """HF transformers' greedy tokens: the base, and the base with each
    adapter applied by PEFT (computed before the server starts, so that no
    test idles its base past its keep-alive)."""
    llama = tiny_models["llama"]
    tokens = {BASE: hf_greedy(llama, PROMPT, TOKENS)}
    for name in ("ad-a", "ad-b", "ad-c"):
        tokens[name] = hf_greedy(llama, PROMPT, TOKENS, adapter=adapters[name])
        assert tokens[name] != tokens[BASE], f"{name} changes nothing"
    return tokens


@pytest.fixture(scope="module")
def server(tiny_models, adapters, expected, tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog") / "models.yaml"
    catalog.write_text(
        "models:\n"
        f"  {BASE}:\n"
        f"    model: {tiny_models['llama']}\n"
        "    engine_args: {max_loras: 2, max_lora_rank: 8}\n"
        f"    keep_alive: {KEEP_ALIVE_S}s\n"
        "  ad-a:\n"
        f"    adapter: {{base: {BASE}, path: {adapters['ad-a']}}}\n"
        "  ad-b:\n"
        f"    adapter: {{base: {BASE}, path: {adapters['ad-b']}}}\n"
    )
    proc, url = start_server(
        "--num-workers=1",
        "--max-loaded-models=1",
        f"--allowed-model-dir={tiny_models['llama'].parent}",
        f"--model-catalog={catalog}",
        f"--admin-token={ADMIN}",
        # Upstream's /v1/load_lora_adapter, as under `vllm serve`.
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
    )
    yield url
    proc.kill()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=600)


def admin(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{url}/v1/controller",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=600,
    )


def cards(url: str) -> dict[str, dict]:
    return {c["id"]: c for c in httpx.get(f"{url}/v1/models").json()["data"]}


def tokens_of(url: str, model: str) -> list[int]:
    return greedy_completion(client(url), model, TOKENS).choices[0].token_ids


def assert_openai_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and text in error["message"], error


# ------------------------------------------------------- served adapters


def test_adapter_request_loads_its_base(server, expected):
    """The base is not loaded; a request for its adapter loads it (with
    LoRA on) and answers with the adapter's tokens, equal to HF + PEFT."""
    listed = cards(server)
    assert listed[BASE]["state"] == "available"
    assert listed["ad-a"]["parent"] == BASE and listed["ad-a"]["state"] == "available"
    raw = greedy_completion(client(server), "ad-a", TOKENS, raw=True)
    assert raw.headers["x-vllm-wc-load-kind"] == "load"
    out = raw.parse()
    assert out.model == "ad-a"
    assert out.choices[0].token_ids == expected["ad-a"]
    listed = cards(server)
    assert listed[BASE]["state"] == "ready"
    assert listed["ad-a"]["state"] == listed["ad-b"]["state"] == "ready"
    assert listed["ad-a"]["max_model_len"] == listed[BASE]["max_model_len"] == 256
    # One engine, the base's: the adapter is no model of its own.
    (model,) = admin(server).get("/models").json()
    assert model["name"] == BASE
    # The base answers as itself; GET /v1/models/{adapter} has the card.
    assert tokens_of(server, BASE) == expected[BASE]
    card = httpx.get(f"{server}/v1/models/ad-b").json()
    assert card["parent"] == BASE and card["root"].endswith("ad-b")


def test_two_adapters_of_one_base_concurrently(server, expected):
    """Requests for two adapters at once share the base's engine (one
    batch: max_loras 2), each with its own tokens."""
    names = ["ad-a", "ad-b"] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: tokens_of(server, n), names))
    for name, tokens in zip(names, results, strict=True):
        assert tokens == expected[name], name
    (model,) = admin(server).get("/models").json()
    assert model["name"] == BASE


def test_adapter_use_keeps_its_base_and_loads_it_back(server, tiny_models, expected):
    """LRU (--max-loaded-models 1): another model evicts the base; its
    adapter's next request loads the base again, evicting that one."""
    assert tokens_of(server, "opt") == hf_greedy(tiny_models["opt"], PROMPT, TOKENS)
    assert cards(server)[BASE]["state"] == "available"
    raw = greedy_completion(client(server), "ad-b", TOKENS, raw=True)
    assert raw.headers["x-vllm-wc-load-kind"] == "load"
    assert raw.parse().choices[0].token_ids == expected["ad-b"]
    states = {n: c["state"] for n, c in cards(server).items()}
    assert states[BASE] == "ready" and states["opt"] == "available"


# ----------------------------------------------------- management API


def test_management_adapter_served_and_removed(server, adapters, expected):
    api = admin(server)
    assert tokens_of(server, "ad-a") == expected["ad-a"]  # the base is ready
    added = api.post(
        "/adapters", json={"name": "ad-c", "base": BASE, "path": str(adapters["ad-c"])}
    )
    assert added.status_code == 200, added.text
    assert added.json()["rank"] == 8 and added.json()["origin"] == "management"
    assert cards(server)["ad-c"]["parent"] == BASE
    assert tokens_of(server, "ad-c") == expected["ad-c"]
    listed = {a["name"]: a for a in api.get("/adapters").json()}
    assert set(listed) == {"ad-a", "ad-b", "ad-c"}
    assert listed["ad-a"]["origin"] == "catalog"
    # The catalog's adapters are the operator's: not removable here.
    assert_openai_error(api.delete("/adapters/ad-a"), 409, "catalog")
    assert api.delete("/adapters/ad-c").json() == {"name": "ad-c", "removed": True}
    assert_openai_error(api.delete("/adapters/ad-c"), 404, "ad-c")
    gone = httpx.post(
        f"{server}/v1/completions", json={"model": "ad-c", "prompt": "x"}, timeout=60
    )
    assert_openai_error(gone, 404, "does not exist")
    assert "ad-c" not in cards(server)


def test_bad_adapters_answer_4xx_and_change_nothing(
    server, adapters, tiny_models, tmp_path, expected
):
    """Every bad adapter is refused with an OpenAI error body; the loaded
    base keeps its processes and serves on, nothing else is loaded."""
    api = admin(server)
    assert tokens_of(server, "ad-a") == expected["ad-a"]
    before = api.get("/models").json()
    outside = tmp_path / "ad-a"
    shutil.copytree(adapters["ad-a"], outside)

    def add(name: str, base: str, path: Path | str) -> httpx.Response:
        return api.post(
            "/adapters", json={"name": name, "base": base, "path": str(path)}
        )

    assert_openai_error(add("x", "no-such-model", adapters["ad-c"]), 404, "base")
    assert_openai_error(add("x", BASE, outside), 403, "--allowed-model-dir")
    assert_openai_error(add("x", BASE, "/etc"), 403, "--allowed-model-dir")
    assert_openai_error(add("x", BASE, adapters["no-config"]), 400, "adapter_config")
    assert_openai_error(add("x", BASE, adapters["garbage-weights"]), 400, "weights")
    # The base's max_lora_rank is 8.
    assert_openai_error(add("x", BASE, adapters["rank-16"]), 400, "max_lora_rank 8")
    # An adapter of another model: vLLM would pad or cut its weights.
    assert_openai_error(
        add("x", BASE, adapters["qwen3-shaped"]), 400, "does not fit its base"
    )
    # Passes the folder's checks; the engine refuses it, and serves on.
    assert_openai_error(add("x", BASE, adapters["unknown-module"]), 422, "foo_proj")
    assert_openai_error(add(BASE, BASE, adapters["ad-c"]), 409, "already names")
    assert_openai_error(add("ad-a", BASE, adapters["ad-c"]), 409, "already names")
    assert_openai_error(add("x", "ad-a", adapters["ad-c"]), 400, "not a base")
    extra = api.post(
        "/adapters",
        json={"name": "x", "base": BASE, "path": str(adapters["ad-c"]), "r": 4},
    )
    assert_openai_error(extra, 400, "r")
    # The same checks for a base that is not loaded; nothing is loaded for
    # them.
    assert_openai_error(add("x", "opt", adapters["garbage-weights"]), 400, "weights")
    assert_openai_error(
        add("x", "llama", adapters["qwen3-shaped"]), 400, "does not fit its base"
    )
    assert {a["name"] for a in api.get("/adapters").json()} == {"ad-a", "ad-b"}
    after = api.get("/models").json()
    assert [(m["name"], m["worker_pids"], m["state"]) for m in after] == [
        (m["name"], m["worker_pids"], m["state"]) for m in before
    ]
    assert tokens_of(server, "ad-b") == expected["ad-b"]
    assert tokens_of(server, BASE) == expected[BASE]


# ------------------------------------------- upstream's run-time routes


def test_runtime_lora_routes_as_vllm_serve(server, adapters, expected):
    """With VLLM_ALLOW_RUNTIME_LORA_UPDATING, upstream's
    /v1/load_lora_adapter and /v1/unload_lora_adapter work as under
    `vllm serve` (the body's `model` picks the base when there are several)."""
    load = {"lora_name": "rt", "lora_path": str(adapters["ad-c"])}
    several = httpx.post(f"{server}/v1/load_lora_adapter", json=load, timeout=600)
    assert_openai_error(several, 400, "names no 'model'")
    loaded = httpx.post(
        f"{server}/v1/load_lora_adapter", json={**load, "model": BASE}, timeout=600
    )
    assert loaded.status_code == 200, loaded.text
    assert "rt" in loaded.text
    assert cards(server)["rt"]["parent"] == BASE
    assert tokens_of(server, "rt") == expected["ad-c"]
    # A name that routes elsewhere is refused before upstream sees it.
    clash = {"model": BASE, "lora_name": "opt", "lora_path": str(adapters["ad-c"])}
    taken = httpx.post(f"{server}/v1/load_lora_adapter", json=clash, timeout=60)
    assert_openai_error(taken, 400, "already names")
    unloaded = httpx.post(
        f"{server}/v1/unload_lora_adapter",
        json={"model": BASE, "lora_name": "rt"},
        timeout=60,
    )
    assert unloaded.status_code == 200, unloaded.text
    assert "rt" not in cards(server)
    gone = httpx.post(
        f"{server}/v1/completions", json={"model": "rt", "prompt": "x"}, timeout=60
    )
    assert_openai_error(gone, 404, "does not exist")


def test_adapter_requests_keep_their_base_alive(server, expected):
    """Keep-alive (15 s on the base) counts adapter requests as uses of the
    base: requests for its adapters over 1.5x that time keep it loaded;
    once they stop, it (and so its adapters) is unloaded."""
    tokens_of(server, "ad-a")  # loaded, whatever came before
    (model,) = admin(server).get("/models").json()
    deadline = time.monotonic() + 1.5 * KEEP_ALIVE_S
    while time.monotonic() < deadline:
        for name in ("ad-a", "ad-b"):
            raw = greedy_completion(client(server), name, 1, raw=True)
            assert "x-vllm-wc-load-kind" not in raw.headers
        time.sleep(2)
    assert admin(server).get("/models").json() == [model]
    deadline = time.monotonic() + KEEP_ALIVE_S + 60
    while cards(server)[BASE]["state"] != "available":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert cards(server)["ad-a"]["state"] == "available"


# ----------------------------------------------- configs, no engine


def test_adapters_imply_lora_on_their_base():
    assert lora_engine_args({"dtype": "float32"}, [8, None]) == {
        "dtype": "float32",
        "enable_lora": True,
        "max_loras": DEFAULT_MAX_LORAS,
        "max_lora_rank": 16,
    }
    assert lora_engine_args({"max_loras": 1}, [40])["max_lora_rank"] == 64
    assert lora_engine_args({"max_lora_rank": 8}, [40])["max_lora_rank"] == 8
    assert fitting_rank([512]) == 512
    with pytest.raises(InvalidEngineArgsError, match="enable_lora"):
        lora_engine_args({"enable_lora": False}, [8])


def test_lora_engines_are_not_swapped(tiny_models):
    """A LoRA engine's layers are wrapped (the checkpoint's names no longer
    match them) and its workers cache adapters by id: no swap into or out
    of it."""

    def key(**args) -> str | None:
        config = build_engine_config(
            str(tiny_models["llama"]), "m", {**TINY_ARGS, **args}, RemoteExecutor
        )
        return engine_shape_key(config, {**TINY_ARGS, **args})

    assert key() is not None
    assert key(enable_lora=True, max_lora_rank=8) is None


@pytest.mark.parametrize(
    "entry, message",
    [
        ("adapter: {base: nope, path: /a}", "not a model of this catalog"),
        ("adapter: {base: m, path: ADAPTER, r: 4}", "exactly `base` and `path`"),
        ("{adapter: {base: m, path: ADAPTER}, model: /m}", "only `adapter"),
        ("adapter: {base: m, path: /nonexistent}", "not a directory"),
        ("adapter: {base: m, path: RANK16}", "max_lora_rank 8"),
        ("adapter: {base: no-lora, path: ADAPTER}", "enable_lora: false"),
        ("adapter: {base: m, path: 1}", "must be strings"),
    ],
)
def test_bad_catalog_adapter_fails_at_start(tmp_path, capsys, adapters, entry, message):
    entry = entry.replace("ADAPTER", str(adapters["ad-a"]))
    entry = entry.replace("RANK16", str(adapters["rank-16"]))
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n"
        "  m: {model: /m, engine_args: {max_lora_rank: 8}}\n"
        "  no-lora: {model: /m, engine_args: {enable_lora: false}}\n"
        + (f"  bad: {entry}\n" if entry.startswith("{") else f"  bad:\n    {entry}\n")
    )
    with pytest.raises(SystemExit) as e:
        serve.parse_cli([f"--model-catalog={path}"])
    assert e.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "catalog adapter 'bad'" in error and message in error, error


def test_catalog_adapter_entries(tmp_path, adapters):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n"
        "  m: {model: /m}\n"
        f"  a: {{adapter: {{base: m, path: {adapters['ad-a']}}}}}\n"
    )
    catalog = serve.load_catalog(path)
    assert catalog["a"].base == "m" and catalog["a"].rank == 8
    assert (
        json.loads((Path(catalog["a"].path) / "adapter_config.json").read_text())["r"]
        == 8
    )
