# SPDX-License-Identifier: Apache-2.0
"""(e) Bad input gets a clear error and leaves the pool healthy."""

import json
import shutil

import pytest

from tests.worker_controller.conftest import TINY_ARGS, pool_pids
from tests.worker_controller.models import hf_greedy
from vllm.worker_controller.errors import (
    InsufficientWorkersError,
    InvalidEngineArgsError,
    ModelAlreadyLoadedError,
    ModelLoadError,
    ModelNotFoundError,
    PoolTooSmallError,
)

PROMPT = "Hello, my name is"


@pytest.fixture(scope="module")
def unsupported_model(tiny_models, tmp_path_factory):
    """A real checkpoint whose config names an architecture vLLM lacks."""
    dest = tmp_path_factory.mktemp("unsupported") / "model"
    shutil.copytree(tiny_models["llama"], dest)
    config = json.loads((dest / "config.json").read_text())
    config["architectures"] = ["NotARealModelForCausalLM"]
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def assert_pool_serves(controller, tiny_models, greedy):
    """A valid load succeeds after the error, on the same processes."""
    pids = pool_pids(controller)
    controller.load(str(tiny_models["llama"]), name="ok", **TINY_ARGS)
    assert greedy("ok", PROMPT) == hf_greedy(tiny_models["llama"], PROMPT, 16)
    controller.unload("ok")
    assert pool_pids(controller) == pids


def test_nonexistent_path(controller, tiny_models, greedy):
    with pytest.raises(ModelLoadError, match="does not exist") as e:
        controller.load("/nonexistent/model", name="x", **TINY_ARGS)
    assert e.value.phase == "config"
    assert controller.list_models() == []
    assert_pool_serves(controller, tiny_models, greedy)


def test_unsupported_architecture(controller, tiny_models, greedy, unsupported_model):
    with pytest.raises(ModelLoadError, match="NotARealModelForCausalLM"):
        controller.load(str(unsupported_model), name="x", **TINY_ARGS)
    assert_pool_serves(controller, tiny_models, greedy)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"not_an_engine_arg": 1}, "not_an_engine_arg"),
        ({"max_model_len": -5}, "max_model_len"),
        ({"dtype": "nonsense"}, "dtype"),
        ({"distributed_executor_backend": "mp"}, "set by the controller"),
    ],
)
def test_invalid_engine_args(controller, tiny_models, greedy, bad, message):
    with pytest.raises(InvalidEngineArgsError, match=message):
        controller.load(str(tiny_models["llama"]), name="x", **{**TINY_ARGS, **bad})
    assert controller.list_models() == []
    assert_pool_serves(controller, tiny_models, greedy)


def test_more_workers_than_free(controller, tiny_models, greedy):
    # More than the whole pool: refused at once, before any lease.
    with pytest.raises(PoolTooSmallError, match="needs 4 workers.*pool has 2"):
        controller.load(
            str(tiny_models["llama"]), name="x", **TINY_ARGS, tensor_parallel_size=4
        )
    controller.load(str(tiny_models["qwen3"]), name="a", **TINY_ARGS)
    controller.load(str(tiny_models["opt"]), name="b", **TINY_ARGS)
    with pytest.raises(InsufficientWorkersError, match="only 0 of 2"):
        controller.load(str(tiny_models["llama"]), name="c", **TINY_ARGS)
    assert {m["name"] for m in controller.list_models()} == {"a", "b"}
    controller.unload("a")
    controller.unload("b")
    assert_pool_serves(controller, tiny_models, greedy)


def test_name_already_loaded(controller, tiny_models, greedy):
    controller.load(str(tiny_models["qwen3"]), name="dup", **TINY_ARGS)
    with pytest.raises(ModelAlreadyLoadedError, match="'dup' is already loaded"):
        controller.load(str(tiny_models["opt"]), name="dup", **TINY_ARGS)
    assert greedy("dup", PROMPT) == hf_greedy(tiny_models["qwen3"], PROMPT, 16)
    controller.unload("dup")
    with pytest.raises(ModelNotFoundError, match="No model named 'dup'"):
        controller.unload("dup")
    assert_pool_serves(controller, tiny_models, greedy)
