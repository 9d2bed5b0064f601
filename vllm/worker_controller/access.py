# SPDX-License-Identifier: Apache-2.0
"""Who may call the server, and what a caller may ask a model load to do.

- :class:`BearerAuth` guards ``/v1`` (API keys) and the management API (the
  admin token). It stands in for upstream's ``AuthenticationMiddleware``,
  which lives in a private module and answers 401 in a shape of its own.
- :func:`check_engine_args` is the allowlist of ``EngineArgs`` fields a
  management call or a catalog entry may set: a token that may load models
  must not also be a way to read files, open sockets or run code.
- :func:`write_secret_file` stores a generated admin token where only its
  owner can read it: a token on stdout ends up in logs and terminals.
"""

import dataclasses
import hashlib
import os
import secrets
import tempfile
from argparse import Namespace
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

import vllm.envs as envs
from vllm.engine.arg_utils import EngineArgs
from vllm.worker_controller.errors import EngineArgNotAllowedError
from vllm.worker_controller.responses import send_error


class BearerAuth:
    """ASGI middleware: a request must carry ``Authorization: Bearer <token>``
    with one of ``tokens``, else it is answered 401 in the OpenAI error shape
    (with ``WWW-Authenticate: Bearer``).

    Exempt, as in upstream's middleware: lifespan messages and ``OPTIONS``
    (CORS preflights carry no credentials). Unlike upstream's, which guards
    only ``/v1``-like prefixes, every path of the wrapped app is guarded: the
    router keeps what needs no key (``/health``, ``/metrics``) outside it.
    WebSocket handshakes are guarded too and refused with close code 1008.
    """

    def __init__(
        self, app: ASGIApp, tokens: Sequence[str], credential: str = "API key"
    ):
        self.app = app
        # Digests have one length, so the comparison says nothing about the
        # length of the tokens.
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self._credential = credential

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        # Every token is compared (no early exit), as upstream does.
        return any([secrets.compare_digest(digest, d) for d in self._digests])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] != "OPTIONS"
        )
        if not guarded or self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send_error(
                send,
                401,
                f"Missing or invalid {self._credential}: send the header "
                f"'Authorization: Bearer <{self._credential}>'",
                "AuthenticationError",
                headers={"www-authenticate": "Bearer"},
            )


def api_keys(args: Namespace) -> list[str]:
    """The keys ``/v1`` requires: ``--api-key`` (a list), else the env var
    ``VLLM_API_KEY``, as ``vllm serve``'s ``build_app`` takes them. Empty:
    ``/v1`` is open."""
    return [key for key in (args.api_key or [envs.VLLM_API_KEY]) if key]


ENGINE_ARG_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineArgs))

# Fields that shape or size a model, pick kernels, schedule, or count: none
# reads a path, opens a socket or imports code named by its value.
ALLOWED_ENGINE_ARGS = frozenset(
    {
        # model, dtypes, quantization (by name), tokenizer handling
        "runner",
        "convert",
        "dtype",
        "kv_cache_dtype",
        "kv_cache_dtype_skip_layers",
        "calculate_kv_scales",
        "override_attention_dtype",
        "quantization",
        "quantization_config",
        "allow_deprecated_quantization",
        "max_model_len",
        "seed",
        "model_impl",
        "config_format",
        "tokenizer_mode",
        "skip_tokenizer_init",
        "language_model_only",
        "pooler_config",
        "diffusion_config",
        "reasoning_parser",
        "reasoning_config",
        "override_generation_config",
        "max_logprobs",
        "logprobs_mode",
        "use_fp64_gumbel",
        "enable_return_routed_experts",
        "tokens_only",
        # memory and batch sizes
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "num_gpu_blocks_override",
        "block_size",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_num_scheduled_tokens",
        "max_num_partial_prefills",
        "max_long_partial_prefills",
        "long_prefill_token_threshold",
        "enable_chunked_prefill",
        "disable_chunked_mm_input",
        "scheduler_reserve_full_isl",
        "prefill_schedule_interval",
        "watermark",
        "scheduling_policy",
        "async_scheduling",
        "stream_interval",
        "enable_prefix_caching",
        "prefix_caching_hash_algo",
        "disable_sliding_window",
        "disable_cascade_attn",
        "disable_hybrid_kv_cache_manager",
        "kv_sharing_fast_prefill",
        "kv_offloading_size",
        "cpu_offload_gb",
        "cpu_offload_params",
        "offload_backend",
        "offload_group_size",
        "offload_num_in_group",
        "offload_prefetch_step",
        "offload_params",
        "enable_sleep_mode",
        "enable_cumem_allocator",
        "shutdown_timeout",
        # parallelism within the pool's leased workers
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "prefill_context_parallel_size",
        "decode_context_parallel_size",
        "dcp_comm_backend",
        "dcp_kv_cache_interleave_size",
        "cp_kv_cache_interleave_size",
        "distributed_timeout_seconds",
        "cpu_distributed_timeout_seconds",
        "disable_custom_all_reduce",
        "enable_expert_parallel",
        "enable_ep_weight_filter",
        "expert_placement_strategy",
        "enable_eplb",
        "eplb_config",
        "enable_dbo",
        "ubatch_size",
        "dbo_decode_token_threshold",
        "dbo_prefill_token_threshold",
        # kernels, compilation level, CUDA graphs
        "enforce_eager",
        "optimization_level",
        "performance_mode",
        "cudagraph_capture_sizes",
        "max_cudagraph_capture_size",
        "attention_backend",
        "attention_config",
        "kernel_config",
        "ir_op_priority",
        "moe_backend",
        "linear_backend",
        "enable_flashinfer_autotune",
        "enable_bf16x3_router_gemm",
        "gdn_prefill_backend",
        "mamba_config",
        "mamba_backend",
        "mamba_cache_dtype",
        "mamba_ssm_cache_dtype",
        "mamba_block_size",
        "mamba_cache_mode",
        "prefix_match_unit",
        "enable_mamba_cache_stochastic_rounding",
        "mamba_cache_philox_rounds",
        # loading the model's own files
        "max_parallel_loading_workers",
        "safetensors_load_strategy",
        "safetensors_prefetch_num_threads",
        "safetensors_prefetch_block_size",
        "ignore_patterns",
        "pt_load_map_location",
        "use_tqdm_on_load",
        # multimodal sizes and encoders
        "limit_mm_per_prompt",
        "interleave_mm_strings",
        "mm_processor_cache_gb",
        "mm_processor_cache_type",
        "mm_shm_cache_max_object_size_mb",
        "mm_encoder_only",
        "mm_encoder_tp_mode",
        "mm_encoder_attn_backend",
        "mm_encoder_attn_dtype",
        "mm_encoder_fp8_scale_save_margin",
        "mm_tensor_ipc",
        "mm_ipc_gpu_memory_gb",
        "renderer_num_workers",
        "skip_mm_profiling",
        "video_pruning_rate",
        # LoRA sizes (adapters themselves are paths: default_mm_loras below)
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
        "fully_sharded_loras",
        "lora_dtype",
        "lora_target_modules",
        "enable_tower_connector_lora",
        "specialize_active_lora",
        "enable_mixed_moe_lora_format",
        "enable_moe_shared_loras",
        # stats, metrics, checks
        "disable_log_stats",
        "aggregate_engine_logging",
        "show_hidden_metrics_for_version",
        "collect_detailed_traces",
        "kv_cache_metrics",
        "kv_cache_metrics_sample",
        "cudagraph_metrics",
        "enable_mfu_metrics",
        "enable_logging_iteration_details",
        "enable_mm_processor_stats",
        "enable_layerwise_nvtx_tracing",
        "jit_monitor_mode",
        "jit_monitor_verbose",
        "fail_on_environ_validation",
    }
)

# Never allowed, not even by a catalog entry's ``allow_engine_args``.
_CONTROLLER_OWNED = frozenset(
    {"model", "served_model_name", "distributed_executor_backend"}
)
_NEVER_ALLOWED = _CONTROLLER_OWNED | {"trust_remote_code"}
# Every other field, grouped by why a caller may not set it; a catalog entry
# may allow them with ``allow_engine_args`` (see ``catalog_allowlist``).
_REFUSED_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "set by the controller (the load's own model, name and executor)",
        _CONTROLLER_OWNED,
    ),
    (
        "enabled only by a catalog entry's `trust_remote_code: true`",
        frozenset({"trust_remote_code"}),
    ),
    (
        "names code to import (a class, qualname or plugin file)",
        frozenset(
            {
                "worker_cls",
                "worker_extension_cls",
                "scheduler_cls",
                "logits_processors",
                "model_class_overrides",
                "io_processor_plugin",
                "reasoning_parser_plugin",
            }
        ),
    ),
    (
        "a config that can name code or files (compile backends and passes "
        "by qualname, dump and cache directories, a reasoning-parser plugin)",
        frozenset({"compilation_config", "structured_outputs_config"}),
    ),
    (
        "names a file or directory to read or write",
        frozenset(
            {
                "tokenizer",
                "hf_config_path",
                "model_weights",
                "download_dir",
                "allowed_local_media_path",
                "generation_config",
                "default_mm_loras",
                "mm_encoder_fp8_scale_path",
                "mm_encoder_fp8_scale_save_path",
                "profiler_config",
            }
        ),
    ),
    (
        "picks what the hub serves (other files and, with trust_remote_code, "
        "other code) or a credential for it",
        frozenset({"revision", "code_revision", "tokenizer_revision", "hf_token"}),
    ),
    (
        "picks a weight loader or its options, some of which read URIs, "
        "object stores or pickled state",
        frozenset({"load_format", "model_loader_extra_config"}),
    ),
    (
        "which URLs the server fetches or sends to",
        frozenset({"allowed_media_domains", "otlp_traces_endpoint"}),
    ),
    (
        "opens sockets or joins other hosts (connectors, event publishers, "
        "multi-node rendezvous, LMCache)",
        frozenset(
            {
                "kv_transfer_config",
                "kv_events_config",
                "ec_transfer_config",
                "weight_transfer_config",
                "kv_offloading_backend",
                "master_addr",
                "master_port",
                "nnodes",
                "node_rank",
            }
        ),
    ),
    (
        "data parallelism runs engines and a coordinator of its own, outside the pool",
        frozenset(
            {
                "data_parallel_size",
                "data_parallel_rank",
                "data_parallel_start_rank",
                "data_parallel_size_local",
                "data_parallel_address",
                "data_parallel_rpc_port",
                "data_parallel_hybrid_lb",
                "data_parallel_external_lb",
                "data_parallel_multi_port_external_lb",
                "data_parallel_backend",
                "disable_nccl_for_dp_synchronization",
                "enable_elastic_ep",
                "all2all_backend",
                "_api_process_count",
                "_api_process_rank",
            }
        ),
    ),
    (
        "places processes on devices and CPUs, which the pool does",
        frozenset(
            {
                "device_ids",
                "numa_bind",
                "numa_bind_nodes",
                "numa_bind_cpus",
                "ray_workers_use_nsight",
            }
        ),
    ),
    (
        "lets clients send tensors that the server deserializes",
        frozenset({"enable_prompt_embeds", "enable_mm_embeds"}),
    ),
    (
        "free-form options handed on to HF processors, media decoders, the HF "
        "config (architectures, auto_map) or platform plugins",
        frozenset(
            {
                "hf_overrides",
                "mm_processor_kwargs",
                "media_io_kwargs",
                "additional_config",
            }
        ),
    ),
    (
        "loads a second (draft) model from a path or the hub",
        frozenset({"speculative_config", "spec_method", "spec_model", "spec_tokens"}),
    ),
)
REFUSED_ENGINE_ARGS: dict[str, str] = {
    name: why for why, names in _REFUSED_GROUPS for name in names
}


def check_engine_args(
    engine_args: dict[str, Any], allowed_extra: frozenset[str] = frozenset()
) -> None:
    """Raises :class:`EngineArgNotAllowedError` naming every ``EngineArgs``
    field in ``engine_args`` outside the allowlist and ``allowed_extra``.

    Names that are not ``EngineArgs`` fields pass: vLLM's own validation
    rejects them as invalid (400), which says more than "not allowed".
    """
    refused = sorted(
        name
        for name in engine_args
        if name in ENGINE_ARG_FIELDS
        and name not in ALLOWED_ENGINE_ARGS
        and name not in allowed_extra
    )
    if refused:
        why = "; ".join(
            f"{name!r}: {REFUSED_ENGINE_ARGS.get(name, 'not reviewed yet')}"
            for name in refused
        )
        raise EngineArgNotAllowedError(
            f"Engine argument(s) not allowed here: {why}. A catalog entry "
            "can allow them with allow_engine_args."
        )


def catalog_allowlist(names: Iterable[str]) -> frozenset[str]:
    """A catalog entry's ``allow_engine_args``, checked: ``EngineArgs``
    fields only, and never the controller's own or ``trust_remote_code``
    (which has its own switch on the entry)."""
    allowed = frozenset(names)
    if unknown := sorted(allowed - ENGINE_ARG_FIELDS):
        raise ValueError(f"allow_engine_args: not EngineArgs fields: {unknown}")
    if fixed := sorted(allowed & _NEVER_ALLOWED):
        raise ValueError(
            f"allow_engine_args cannot allow {fixed}: "
            + "; ".join(REFUSED_ENGINE_ARGS[name] for name in fixed)
        )
    return allowed


def write_secret_file(path: Path, secret: str) -> None:
    """Writes ``secret`` to ``path``, readable by its owner only (0600).

    The text goes into a fresh ``mkstemp`` file (created 0600 with
    ``O_EXCL``, whatever the umask), which then replaces ``path`` in one
    rename: no one else can read it even briefly, a reader never sees half a
    token, and a symlink planted at ``path`` is replaced, not followed. A
    directory created here is 0700.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def uvicorn_ssl_kwargs(args: Namespace) -> dict[str, Any]:
    """``vllm serve``'s TLS flags, as it hands them to uvicorn (TLS is on
    with ``--ssl-certfile``; ``--ssl-cert-reqs 2`` requires client
    certificates signed by ``--ssl-ca-certs``)."""
    return {
        "ssl_keyfile": args.ssl_keyfile,
        "ssl_certfile": args.ssl_certfile,
        "ssl_ca_certs": args.ssl_ca_certs,
        "ssl_cert_reqs": args.ssl_cert_reqs,
        "ssl_ciphers": args.ssl_ciphers,
    }
