# SPDX-License-Identifier: Apache-2.0
"""Canary: every assumption the seam (``vllm/worker_controller/compat/``)
and its callers make about the installed vLLM and torch, checked in
seconds on CPU. After an upgrade, a failure here names what moved, before
it can show up as a wrong number or a hang on a GPU.

Each check is one row: what is assumed, and a function that returns a
falsy value or raises when the assumption no longer holds.
"""

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
import uvicorn

from tests.worker_controller.conftest import TINY_ARGS
from vllm.worker_controller.compat import (
    cpu_shm,
    cumem,
    engine,
    executor,
    lora,
    metrics,
    peer,
    serving,
)
from vllm.worker_controller.compat import process_state as ps


def params(fn: Callable, *names: str) -> bool:
    """``fn`` takes (at least) these parameters."""
    return set(names) <= set(inspect.signature(fn).parameters)


def mentions(obj: Any, *texts: str) -> bool:
    """``obj``'s source contains each text (e.g. an attribute it sets)."""
    source = inspect.getsource(obj)
    return all(t in source for t in texts)


def _runner_classes() -> list[type]:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner

    return [CPUModelRunner, V2Runner]


def _version_counter_shared() -> bool:
    param = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    alias = param.detach()
    before = peer.tensor_version(alias)
    with torch.no_grad():
        param.add_(1)
    return peer.tensor_version(alias) == before + 1 == peer.tensor_version(param)


def _with_env(name: str, value: str, fn: Callable[[], Any]) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(name, value)
        return fn()


def _in_order(obj: Any, *texts: str) -> bool:
    """``obj``'s source contains the texts, in this order."""
    source = inspect.getsource(obj)
    positions = [source.find(t) for t in texts]
    return -1 not in positions and positions == sorted(positions)


ASSUMPTIONS: dict[str, Callable[[], Any]] = {
    # executor / worker process (compat/executor.py, worker/gpu_worker.py)
    "WorkerProc(vllm_config, local_rank, rank, distributed_init_method, "
    "input_shm_handle, shared_worker_lock, is_driver_worker)": lambda: params(
        executor.WorkerProc.__init__,
        "vllm_config",
        "local_rank",
        "rank",
        "distributed_init_method",
        "input_shm_handle",
        "shared_worker_lock",
        "is_driver_worker",
    ),
    "WorkerProc._init_message_queues(input_shm_handle, vllm_config) sets "
    "rpc_broadcast_mq and worker_response_mq": lambda: (
        params(
            executor.WorkerProc._init_message_queues, "input_shm_handle", "vllm_config"
        )
        and mentions(
            executor.WorkerProc._init_message_queues,
            "self.rpc_broadcast_mq",
            "self.worker_response_mq",
        )
    ),
    "WorkerProc has worker_busy_loop, shutdown and an async_output_copy_thread "
    "fed by async_output_queue": lambda: (
        all(hasattr(executor.WorkerProc, a) for a in ("worker_busy_loop", "shutdown"))
        and mentions(
            executor.WorkerProc, "async_output_copy_thread", "async_output_queue"
        )
    ),
    "MultiprocExecutor has _get_parallel_sizes, _get_output_rank, "
    "collective_rpc, futures_queue and rpc_broadcast_mq / response_mqs": lambda: (
        all(
            hasattr(executor.MultiprocExecutor, a)
            for a in ("_get_parallel_sizes", "_get_output_rank", "collective_rpc")
        )
        and mentions(
            executor.MultiprocExecutor,
            "self.futures_queue",
            "self.rpc_broadcast_mq",
            "self.response_mqs",
        )
    ),
    "MultiprocExecutor._init_executor is the hook a subclass overrides": lambda: (
        hasattr(executor.MultiprocExecutor, "_init_executor")
    ),
    "MessageQueue has local_socket, remote_socket, wait_until_ready, "
    "shutdown, export_handle, create_from_handle": lambda: (
        all(
            hasattr(executor.MessageQueue, a)
            for a in (
                "wait_until_ready",
                "shutdown",
                "export_handle",
                "create_from_handle",
            )
        )
        and mentions(executor.MessageQueue, "self.local_socket", "self.remote_socket")
    ),
    "WorkerWrapperBase wraps the Worker as .worker": lambda: mentions(
        executor.WorkerWrapperBase, "self.worker"
    ),
    "AsyncModelRunnerOutput.get_output is what the output thread calls": lambda: (
        hasattr(executor.AsyncModelRunnerOutput, "get_output")
    ),
    # engine core (compat/engine.py, engine/core.py, engine_handshake.py)
    "EngineCoreProc(vllm_config, local_client, handshake_address, "
    "executor_class, log_stats)": lambda: params(
        engine.EngineCoreProc.__init__,
        "vllm_config",
        "local_client",
        "handshake_address",
        "executor_class",
        "log_stats",
    ),
    "EngineCoreProc has run_busy_loop, preprocess_add_request, "
    "_send_engine_dead, shutdown and ENGINE_CORE_DEAD": lambda: (
        all(
            hasattr(engine.EngineCoreProc, a)
            for a in (
                "run_busy_loop",
                "preprocess_add_request",
                "_send_engine_dead",
                "shutdown",
            )
        )
        and isinstance(engine.ENGINE_CORE_DEAD, bytes)
    ),
    "EngineCoreProc sets shutdown_state, input_queue, output_queue, "
    "output_thread and model_executor": lambda: (
        mentions(
            engine.EngineCoreProc,
            "self.shutdown_state",
            "self.input_queue",
            "self.output_queue",
            "self.output_thread",
        )
        and mentions(engine.EngineCoreProc.__mro__[1], "self.model_executor")
    ),
    "EngineShutdownState.REQUESTED, EngineCoreRequestType.ADD / WAKEUP": lambda: (
        engine.EngineShutdownState.REQUESTED
        and engine.EngineCoreRequestType.ADD
        and engine.EngineCoreRequestType.WAKEUP
    ),
    "the handshake: HELLO / READY statuses, EngineHandshakeMetadata(addresses, "
    "parallel_config), EngineZmqAddresses(inputs, outputs)": lambda: (
        mentions(engine.EngineCoreProc, '"HELLO"', '"READY"')
        and engine.EngineHandshakeMetadata(
            addresses=engine.EngineZmqAddresses(inputs=["a"], outputs=["b"]),
            parallel_config={},
        )
    ),
    "EngineCoreRequest has the fields the retire message sets": lambda: params(
        engine.EngineCoreRequest,
        "request_id",
        "prompt_token_ids",
        "mm_features",
        "sampling_params",
        "pooling_params",
        "arrival_time",
        "lora_request",
        "cache_salt",
        "data_parallel_rank",
    ),
    # compile stack and process-global state (compat/process_state.py)
    "Dynamo's convert_frame._bytecode_hooks is a dict": lambda: isinstance(
        torch._dynamo.convert_frame._bytecode_hooks, dict
    ),
    "TorchCompileWithNoGuardsWrapper has cleanup and original_code_object": lambda: all(
        hasattr(ps.TorchCompileWithNoGuardsWrapper, a)
        for a in ("cleanup", "original_code_object")
    ),
    "layerwise.LAYERWISE_INFO is a WeakKeyDictionary": lambda: isinstance(
        ps.layerwise.LAYERWISE_INFO, weakref.WeakKeyDictionary
    ),
    "the graph wrappers have clear_all_graphs": lambda: all(
        hasattr(c, "clear_all_graphs")
        for c in (ps.CUDAGraphWrapper, ps.BreakableCUDAGraphWrapper)
    ),
    "the platform class holds _global_graph_pool": lambda: hasattr(
        type(ps.current_platform), "_global_graph_pool"
    ),
    "the attention selectors are functools caches": lambda: all(
        hasattr(f, "cache_clear")
        for f in (
            ps.selector._cached_get_attn_backend,
            ps.selector._cached_get_mamba_attn_backend,
            ps.mamba_utils.get_conv_state_layout,
        )
    ),
    "set-once globals: _assigned_physical_gpu_ids, _group_name_counter, "
    "jit_monitor._active, gpu_sync_debug._sync_check_enabled": lambda: (
        hasattr(ps.platform_interface, "_assigned_physical_gpu_ids")
        and hasattr(ps.parallel_state._group_name_counter, "clear")
        and hasattr(ps.jit_monitor, "_active")
        and hasattr(ps.gpu_sync_debug, "_sync_check_enabled")
        and callable(ps.envs.disable_envs_cache)
    ),
    "torch._C has _cuda_clearCublasWorkspaces and _host_emptyCache": lambda: (
        hasattr(torch._C, "_cuda_clearCublasWorkspaces")
        and hasattr(torch._C, "_host_emptyCache")
    ),
    "compatible torch.compile caches are keyed by VllmConfig.compute_hash()": lambda: (
        mentions(
            __import__("vllm.compilation.backends", fromlist=["x"]),
            "vllm_config.compute_hash()",
        )
    ),
    # sleep mode's allocator (compat/cumem.py)
    "CuMemAllocator: instance, pointer_to_data, allocator_and_pools, "
    "python_free_callback, _python_free_callback, _shutdown_singleton": lambda: (
        all(
            hasattr(cumem.CuMemAllocator, a)
            for a in ("instance", "_python_free_callback", "_shutdown_singleton")
        )
        and mentions(
            cumem.CuMemAllocator,
            "self.pointer_to_data",
            "self.allocator_and_pools",
            "self.python_free_callback",
        )
        and callable(cumem.create_and_map)
    ),
    # CPU all-reduce shared memory (compat/cpu_shm.py)
    "CPU SHM group name is VLLM_DIST_IDENT-unique_name-[ranks]-cpushm": lambda: (
        _with_env(
            "VLLM_DIST_IDENT",
            "1234",
            lambda: cpu_shm.shm_group_name(
                type("Comm", (), {"unique_name": "tp:0", "ranks": [0, 1]})()
            ),
        )
        == "1234-tp:0-[0-1]-cpushm"
    ),
    "vLLM-CPU's worker sets VLLM_DIST_IDENT to its init method's port "
    "(pool.py removes a dead worker's files by it)": lambda: mentions(
        __import__("vllm.v1.worker.cpu_worker", fromlist=["x"]).CPUWorker.init_device,
        'os.environ["VLLM_DIST_IDENT"] = self.distributed_init_method.split(":")[-1]',
    ),
    # the OpenAI server (compat/serving.py, router.py)
    "build_app(args, supported_tasks, model_config) and init_app_state("
    "engine_client, state, args, supported_tasks)": lambda: (
        params(serving.build_app, "args", "supported_tasks", "model_config")
        and params(
            serving.init_app_state, "engine_client", "state", "args", "supported_tasks"
        )
    ),
    "create_server_socket(addr, reuse_port=) binds before the engine starts": (
        lambda: params(serving.create_server_socket, "addr", "reuse_port")
    ),
    "ModelCard / ModelPermission / ErrorResponse(error=ErrorInfo) fields": lambda: (
        {"id", "root", "parent", "max_model_len", "permission"}
        <= set(serving.ModelCard.model_fields)
        and serving.ErrorResponse(
            error=serving.ErrorInfo(message="m", type="t", code=400)
        )
        and serving.ModelPermission()
    ),
    "uvicorn.Server keeps _captured_signals": lambda: mentions(
        uvicorn.Server, "self._captured_signals"
    ),
    # LoRA adapters (compat/lora.py, adapters.py, router.py)
    "init_app_state puts an OpenAIServingModels on state.openai_serving_models": (
        lambda: mentions(
            serving.init_app_state,
            "state.openai_serving_models = OpenAIServingModels(",
        )
    ),
    "OpenAIServingModels: load_lora_adapter(request, base_model_name) registers "
    "lora_requests[name] (a LoRARequest with lora_path), unload_lora_adapter("
    "request)": lambda: (
        params(lora.OpenAIServingModels.load_lora_adapter, "request", "base_model_name")
        and params(lora.OpenAIServingModels.unload_lora_adapter, "request")
        and mentions(
            lora.OpenAIServingModels.load_lora_adapter,
            "self.lora_requests[lora_name] = lora_request",
            "lora_path=lora_path",
        )
    ),
    "LoadLoRAAdapterRequest(lora_name, lora_path, load_inplace), "
    "UnloadLoRAAdapterRequest(lora_name)": lambda: (
        lora.LoadLoRAAdapterRequest(lora_name="a", lora_path="/p", load_inplace=True)
        and lora.UnloadLoRAAdapterRequest(lora_name="a")
    ),
    "the serving layer runs a request whose model is a registered adapter's "
    "name with that adapter": lambda: mentions(
        __import__(
            "vllm.entrypoints.serve.engine.serving", fromlist=["x"]
        ).BaseServing._maybe_get_adapters,
        "self.models.lora_requests[request.model]",
    ),
    "upstream's run-time LoRA routes are RUNTIME_LORA_PATHS, attached with "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": lambda: mentions(
        __import__("vllm.entrypoints.serve.lora.api_router", fromlist=["x"]),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        *(f'"{path}"' for path in sorted(lora.RUNTIME_LORA_PATHS)),
    ),
    "PEFTHelper.from_local_dir(lora_path, max_position_embeddings), "
    "validate_legal(lora_config), r": lambda: (
        params(lora.PEFTHelper.from_local_dir, "lora_path", "max_position_embeddings")
        and params(lora.PEFTHelper.validate_legal, "lora_config")
        and "r" in {f.name for f in __import__("dataclasses").fields(lora.PEFTHelper)}
    ),
    "MaxLoRARanks is the Literal of the max_lora_rank values vLLM accepts": lambda: (
        __import__("typing").get_args(
            __import__("vllm.config.lora", fromlist=["x"]).MaxLoRARanks
        )[:3]
        == (1, 8, 16)
    ),
    # metrics (compat/metrics.py)
    "PrometheusStatLogger and its families take their metric classes from "
    "class attributes": lambda: (
        all(
            hasattr(metrics.PrometheusStatLogger, a)
            for a in (
                "_gauge_cls",
                "_counter_cls",
                "_histogram_cls",
                "_spec_decoding_cls",
                "_kv_connector_cls",
                "_perf_metrics_cls",
            )
        )
        and all(
            hasattr(c, "_counter_cls")
            for c in (metrics.SpecDecodingProm, metrics.PerfMetricsProm)
        )
    ),
    "LoggingStatLogger has log_prefix, vllm_config and engine_index": lambda: (
        hasattr(metrics.LoggingStatLogger, "log_prefix")
        and mentions(metrics.LoggingStatLogger, "self.engine_index")
    ),
    # model runners (worker/model_runner.py: held_requests; swaps)
    "the CPU runner keeps requests, the V2 GPU runner req_states.num_reqs": lambda: (
        mentions(_runner_classes()[0].__mro__[1], "self.requests")
        and mentions(_runner_classes()[1], "self.req_states")
    ),
    "runners reload_weights(weights_iterator=..., weights_path=...)": lambda: (
        all(hasattr(r, "reload_weights") for r in _runner_classes())
        and params(
            _runner_classes()[0].__mro__[1].reload_weights,
            "weights_iterator",
            "weights_path",
        )
    ),
    # the weight loader (worker/host_cache.py)
    "DefaultModelLoader: get_all_weights(model_config, model), "
    "counter_before_loading_weights, extra-config keys checked in __init__": lambda: (
        params(
            __import__(
                "vllm.model_executor.model_loader.default_loader", fromlist=["x"]
            ).DefaultModelLoader.get_all_weights,
            "model_config",
            "model",
        )
        and hasattr(
            __import__(
                "vllm.model_executor.model_loader.default_loader", fromlist=["x"]
            ).DefaultModelLoader,
            "counter_before_loading_weights",
        )
    ),
    # peer weight loading (compat/peer.py, peer/)
    "Tensor._version: shared with detach()ed aliases, bumped by in-place ops": (
        lambda: _version_counter_shared()
    ),
    "BaseModelLoader.load_model: load_weights(model, model_config), then "
    "process_weights_after_loading (what a peer sends is between the two)": lambda: (
        _in_order(
            __import__(
                "vllm.model_executor.model_loader.base_loader", fromlist=["x"]
            ).BaseModelLoader.load_model,
            "self.load_weights(model, model_config)",
            "process_weights_after_loading(model, model_config",
        )
    ),
    "register_model_loader(format)(cls) is what get_model_loader looks up by "
    "load_config.load_format, and the CLI takes any --load-format": lambda: (
        mentions(
            __import__(
                "vllm.model_executor.model_loader", fromlist=["x"]
            ).get_model_loader,
            "load_config.load_format",
        )
        and mentions(
            __import__("vllm.engine.arg_utils", fromlist=["x"]).EngineArgs.add_cli_args,
            "load_format",
        )
    ),
    "vllm.general_plugins run in the engine core and in every worker before "
    "a model loads": lambda: (
        mentions(
            __import__("vllm.v1.worker.worker_base", fromlist=["x"]).WorkerWrapperBase,
            "load_general_plugins()",
        )
        and "load_general_plugins()"
        in inspect.getsource(__import__("vllm.v1.engine.core", fromlist=["x"]))
    ),
    "parallel_state: get_tensor_model_parallel_rank / _world_size, get_pp_group "
    "(rank_in_group, world_size)": lambda: (
        callable(peer.get_tensor_model_parallel_rank)
        and callable(peer.get_tensor_model_parallel_world_size)
        and mentions(
            __import__(
                "vllm.distributed.parallel_state", fromlist=["x"]
            ).GroupCoordinator,
            "self.rank_in_group",
            "self.world_size",
        )
    ),
    "rebuild_cuda_tensor takes torch's 15-field CUDA tensor reduction": lambda: (
        list(inspect.signature(peer.rebuild_cuda_tensor).parameters)
        == [
            "tensor_cls",
            "tensor_size",
            "tensor_stride",
            "tensor_offset",
            "storage_cls",
            "dtype",
            "storage_device",
            "storage_handle",
            "storage_size_bytes",
            "storage_offset_bytes",
            "requires_grad",
            "ref_counter_handle",
            "ref_counter_offset",
            "event_handle",
            "event_sync_required",
        ]
    ),
    # the front end (controller.py, router.py)
    "AsyncLLM: output_processor (has_unfinished_requests, propagate_error), "
    "output_handler, errored, from_vllm_config(client_addresses, stat_loggers)": (
        lambda: (
            params(
                __import__(
                    "vllm.v1.engine.async_llm", fromlist=["x"]
                ).AsyncLLM.from_vllm_config,
                "client_addresses",
                "stat_loggers",
                "disable_log_stats",
            )
            and mentions(
                __import__("vllm.v1.engine.async_llm", fromlist=["x"]).AsyncLLM,
                "self.output_processor",
                "self.output_handler",
                "def errored",
            )
            and all(
                hasattr(
                    __import__(
                        "vllm.v1.engine.output_processor", fromlist=["x"]
                    ).OutputProcessor,
                    a,
                )
                for a in ("has_unfinished_requests", "propagate_error")
            )
        )
    ),
    "MessageQueue Handle.buffer_handle ends with its SharedMemory's name "
    "(compat.message_queues.unlink_queue_memory)": lambda: (
        __import__(
            "vllm.distributed.device_communicators.shm_broadcast", fromlist=["x"]
        ).Handle.__dataclass_fields__["buffer_handle"]
        is not None
        and mentions(
            __import__(
                "vllm.distributed.device_communicators.shm_broadcast", fromlist=["x"]
            ).ShmRingBuffer.handle,
            "self.shared_memory.name,\n        )",
        )
    ),
    "AsyncLLM.engine_core is an MPClient whose resources hold ctx (the "
    "context that owns its sockets' handle) and output_queue_task (a task on "
    "the loop that closes them): compat.engine.shutdown_engine_client": (
        lambda: (
            mentions(
                __import__("vllm.v1.engine.core_client", fromlist=["x"]).MPClient,
                "self.ctx = zmq.asyncio.Context(sync_ctx)",
                "self.resources = BackgroundResources(",
            )
            and mentions(
                __import__("vllm.v1.engine.core_client", fromlist=["x"]).AsyncMPClient,
                "resources.output_queue_task",
            )
        )
    ),
}


@pytest.mark.parametrize("assumption", list(ASSUMPTIONS))
def test_assumption_holds(assumption: str):
    try:
        held = ASSUMPTIONS[assumption]()
    except Exception as e:  # a name that moved or a changed signature
        pytest.fail(f"no longer holds: {assumption} ({type(e).__name__}: {e})")
    assert held, f"no longer holds: {assumption}"


def test_compile_key_follows_the_architecture(tiny_models, tmp_path):
    """Our compile-cache key (compile_cache.py) still moves with what shapes
    the graph and ignores where the checkpoint lives: upstream hashes the
    config through ``ModelConfig.compute_hash``; if it stopped, every
    checkpoint would either share one artifact or none."""
    import shutil

    from vllm.worker_controller.config import build_engine_config
    from vllm.worker_controller.executor.remote_executor import RemoteExecutor
    from vllm.worker_controller.worker.compile_cache import (
        key_compile_cache_by_architecture,
    )

    def key(path, **args) -> str:
        config = build_engine_config(
            str(path), "m", {**TINY_ARGS, **args}, RemoteExecutor
        )
        assert key_compile_cache_by_architecture(config)
        return config.compute_hash()

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_models["qwen3"], copy)
    base = key(tiny_models["qwen3"])
    assert key(copy) == base, "the path still changes the compile key"
    assert key(tiny_models["llama"]) != base, "the architecture does not"
    assert key(tiny_models["qwen3"], dtype="bfloat16") != base, "the dtype does not"
