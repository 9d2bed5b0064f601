# SPDX-License-Identifier: Apache-2.0
"""``python -m vllm.worker_controller.serve [MODEL ...]``: many models, one port.

Takes ``vllm serve``'s flags (vLLM's own parser: engine flags become every
model's defaults), plus the pool's. MODEL arguments are loaded at start;
with none, the SmolLM2 demo model is. Requests are routed by their
``model`` field to that model's vLLM OpenAI app (see ``router.py``).

``vllm serve``'s server flags (TLS, CORS, uvicorn's logging and limits) are
honoured the way it honours them; the few this server cannot honour are
refused at start instead of ignored (docs/api.md lists them all).
"""

import argparse
import asyncio
import dataclasses
import faulthandler
import json
import math
import secrets
import shutil
import signal
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import uvicorn
import yaml
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

import vllm.envs as envs
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.logger import init_logger
from vllm.logging_utils import create_uvicorn_log_config
from vllm.platforms import current_platform
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.worker_controller.access import (
    api_keys,
    catalog_allowlist,
    check_engine_args,
    uvicorn_ssl_kwargs,
    write_secret_file,
)
from vllm.worker_controller.adapters import LORA_RANKS, AdapterEntry, check_adapter
from vllm.worker_controller.cache_dir import admin_token_path
from vllm.worker_controller.compat.serving import (
    FlexibleArgumentParser,
    create_server_socket,
    forget_captured_signals,
)
from vllm.worker_controller.controller import WorkerController
from vllm.worker_controller.demo_model import demo_engine_args, ensure_demo_model
from vllm.worker_controller.errors import WorkerControllerError
from vllm.worker_controller.management import build_management_app
from vllm.worker_controller.metrics import log_stats_periodically
from vllm.worker_controller.replicas import Bounds
from vllm.worker_controller.router import CatalogEntry, ModelRouter

# Not __name__: under `python -m` that is "__main__", which is outside
# vLLM's logging configuration, so every line here would be dropped.
logger = init_logger("vllm.worker_controller.serve")

# How long SIGTERM waits for in-flight requests before unloading.
_DRAIN_S = 30
# `vllm serve` flags this server cannot honour: refused when set, so that
# none is silently dropped.
_UNSUPPORTED_FLAGS = {
    "enable_ssl_refresh": "restart the server to load new certificates",
    "root_path": "serve at / behind a proxy that strips the prefix",
    "middleware": "it would wrap each model's app but not the router in "
    "front of them (API keys, loading, the management API)",
    "uds": "listen on --host and --port",
    "h11_max_header_count": "uvicorn has no such setting (vllm serve "
    "sets it to no effect)",
    "lora_modules": "name adapters in the --model-catalog (adapter: {base, "
    "path}) or add them with POST /v1/controller/adapters",
    "api_server_count": "one API server process serves every model",
    "headless": "there is no headless mode",
    "grpc": "there is no gRPC server",
}
# TLS flags that mean nothing without a certificate.
_TLS_FLAGS = ("ssl_keyfile", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers")


class _Server(uvicorn.Server):
    """uvicorn with two changes for a drain. It re-raises a captured
    SIGTERM/SIGINT once it has stopped, which would end the process before
    the pool is unloaded; the caller's ``finally`` does that instead, then
    exits normally. And streams still running just before the drain
    deadline end with an error event instead of a cut connection."""

    def __init__(self, config: uvicorn.Config, router: ModelRouter):
        super().__init__(config)
        self.router = router

    async def shutdown(self, sockets: list | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(
            max(0.0, _DRAIN_S - 2.0),
            self.router.end_all_requests,
            "the server is shutting down",
        )
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                forget_captured_signals(self)


def make_parser() -> FlexibleArgumentParser:
    parser = make_arg_parser(
        FlexibleArgumentParser(
            prog="python -m vllm.worker_controller.serve",
            description="Serve many vLLM models behind one OpenAI-compatible "
            "port from a pool of warm worker processes. Engine flags are "
            "`vllm serve`'s and apply to every model.",
        )
    )
    # vLLM's parser takes one positional model (model_tag); we take more.
    parser.add_argument("models", nargs="*", help="more models to load at start")
    group = parser.add_argument_group("worker pool")
    group.add_argument("--num-workers", type=int, default=1)
    group.add_argument("--num-engine-hosts", type=int, default=None)
    group.add_argument(
        "--devices",
        type=lambda text: [int(d) for d in text.split(",")],
        default=None,
        help="GPU indices for the workers, e.g. 0,1 (round-robin; default: "
        "every visible GPU)",
    )
    group.add_argument(
        "--park-memory-gb",
        type=float,
        default=None,
        help="host RAM (GiB) that parked models' weights may hold; an idle "
        "model that does not fit is unloaded instead of parked (default: "
        "half of host RAM where vLLM's sleep mode is available, i.e. CUDA; "
        "0 disables parking)",
    )
    group.add_argument(
        "--weight-cache-gb",
        type=float,
        default=None,
        help="host RAM (GiB, in /dev/shm) for copies of recently loaded "
        "checkpoints, shared by every worker: later loads and swaps of them "
        "copy at PCIe speed (default on GPU: a quarter of host RAM, at most "
        "half of /dev/shm's free space; on CPU: 0, i.e. none)",
    )
    group.add_argument(
        "--weight-cache-dir",
        default="/dev/shm",
        help="where the weight cache's copies go: a tmpfs, so that they stay "
        "in RAM (a disk directory works too: the copies then live in the "
        "page cache)",
    )
    group.add_argument(
        "--peer-transport",
        choices=["auto", "off", "shm", "gloo", "cuda_ipc", "nccl"],
        default="auto",
        help="a load of a checkpoint that another loaded model (same "
        "parallel layout, dtype, quantization) holds copies that model's "
        "weights instead of reading the checkpoint: auto (shared memory on "
        "CPU, CUDA IPC on GPU), a transport by name, or off",
    )
    group = parser.add_argument_group("models and access")
    group.add_argument(
        "--allowed-model-dir",
        type=Path,
        default=None,
        help="models (folders) under this directory are loaded on first "
        "request by folder name, and may be loaded over the management API",
    )
    group.add_argument(
        "--max-loaded-models",
        type=int,
        default=None,
        help="unload the least recently used idle model beyond this many",
    )
    group.add_argument(
        "--model-catalog",
        type=Path,
        default=None,
        help="YAML: models: {NAME: {model: PATH, engine_args: {...}, "
        "keep_alive: 10m, trust_remote_code: false, preload: false, "
        "replicas: {min: 1, max: 1}}}; loaded "
        "on first request (preload: its weights go to the weight cache at "
        "start); a LoRA adapter: {NAME: {adapter: {base: MODEL, path: DIR}}}, "
        "served by its base's engine",
    )
    group.add_argument(
        "--precompile",
        action="store_true",
        help="at start, load and unload one catalog model of each engine "
        "shape, so that no first request waits for torch.compile",
    )
    group.add_argument(
        "--keep-alive",
        default="5m",
        help="unload a model idle this long (e.g. 30s, 5m, 1h; 0: as soon as "
        "idle; -1: never)",
    )
    group.add_argument(
        "--replica-scale-up-queue",
        type=_positive_float,
        default=8.0,
        help="add a replica of a model (up to its catalog `replicas.max`) "
        "when its requests in flight per replica stay above this",
    )
    group.add_argument(
        "--replica-scale-up-after",
        default="10s",
        help="... for this long, and a worker is idle (no model is evicted "
        "for a replica)",
    )
    group.add_argument(
        "--replica-idle",
        default="1m",
        help="remove a replica beyond its model's `replicas.min` idle this long",
    )
    group.add_argument(
        "--admin-token",
        default=None,
        help="bearer token of the management API (/v1/controller/...); if "
        "not given, one is generated and written to --admin-token-file",
    )
    group.add_argument(
        "--admin-token-file",
        type=Path,
        default=None,
        help="file (mode 0600) the admin token is written to; default for a "
        "generated token: ~/.cache/vllm-worker-controller/admin-token-PORT "
        "($VLLM_WC_CACHE_DIR if set); with --admin-token: none",
    )
    group.add_argument(
        "--max-request-body-mb",
        type=_positive_float,
        default=32.0,
        help="larger request bodies are answered 413",
    )
    parser.set_defaults(host="127.0.0.1")
    return parser


def default_weight_cache_gb(args: Namespace) -> float:
    """A quarter of host RAM, at most half of what the cache's directory
    has free (containers often give /dev/shm little)."""
    shm_free = shutil.disk_usage(args.weight_cache_dir).free
    return min(psutil.virtual_memory().total / 4, shm_free / 2) / 2**30


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def check_server_flags(
    parser: argparse.ArgumentParser, args: Namespace, defaults: Namespace
) -> None:
    """Exits (2, with the reason) on a server flag this server cannot
    honour, rather than serving without it."""
    for flag, why in _UNSUPPORTED_FLAGS.items():
        if getattr(args, flag) != getattr(defaults, flag):
            parser.error(f"--{flag.replace('_', '-')} is not supported: {why}")
    if not args.ssl_certfile:
        for flag in _TLS_FLAGS:
            if getattr(args, flag) != getattr(defaults, flag):
                parser.error(f"--{flag.replace('_', '-')} needs --ssl-certfile")


def parse_duration(text: str | int) -> float:
    """'30s', '5m', '1h', plain seconds; negative means never (inf)."""
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    return math.inf if seconds < 0 else seconds


def load_catalog(path: Path) -> dict[str, CatalogEntry | AdapterEntry]:
    """Reads the model catalog: models, and LoRA adapters of them. Raises
    ``ValueError`` naming the entry and the field for engine args outside
    ``access.py``'s allowlist and the entry's ``allow_engine_args``, for
    ``trust_remote_code`` in engine args without the entry's own
    ``trust_remote_code: true``, and for an adapter whose base is not a
    catalog model or whose folder the engine would refuse (checked here, so
    that a broken adapter fails the start, not a request)."""
    models = (yaml.safe_load(path.read_text()) or {}).get("models")
    if not isinstance(models, dict):
        raise ValueError("expected a top-level `models:` mapping")
    entries: dict[str, CatalogEntry | AdapterEntry] = {}
    for name, spec in models.items():
        if isinstance(spec, dict) and "adapter" in spec:
            continue  # once every model is known
        try:
            entries[name] = _catalog_entry(spec)
        except (ValueError, WorkerControllerError) as e:
            raise ValueError(f"catalog model {name!r}: {e}") from e
    for name, spec in models.items():
        if isinstance(spec, dict) and "adapter" in spec:
            try:
                entries[name] = _adapter_entry(spec, entries)
            except (ValueError, WorkerControllerError) as e:
                raise ValueError(f"catalog adapter {name!r}: {e}") from e
    return entries


def _adapter_entry(spec: dict, models: dict[str, Any]) -> AdapterEntry:
    adapter = spec["adapter"]
    if set(spec) != {"adapter"} or not isinstance(adapter, dict):
        raise ValueError("expected only `adapter: {base: MODEL, path: DIR}`")
    if set(adapter) != {"base", "path"}:
        raise ValueError("`adapter` takes exactly `base` and `path`")
    base, path = adapter["base"], adapter["path"]
    if not isinstance(base, str) or not isinstance(path, str):
        raise ValueError("`base` and `path` must be strings")
    path = str(Path(path).expanduser())
    base_entry = models.get(base)
    if not isinstance(base_entry, CatalogEntry):
        raise ValueError(f"base {base!r} is not a model of this catalog")
    if base_entry.engine_args.get("enable_lora") is False:
        raise ValueError(f"base {base!r} sets enable_lora: false")
    max_rank = base_entry.engine_args.get("max_lora_rank", LORA_RANKS[-1])
    rank = check_adapter(path, max_rank, base_entry.model)
    return AdapterEntry(base, path, "catalog", rank)


def _catalog_entry(spec: Any) -> CatalogEntry:
    if not isinstance(spec, dict) or "model" not in spec:
        raise ValueError("expected a mapping with `model: PATH`")
    engine_args = dict(spec.get("engine_args") or {})
    trust_remote_code = bool(spec.get("trust_remote_code"))
    if engine_args.pop("trust_remote_code", False) and not trust_remote_code:
        raise ValueError("set trust_remote_code: true on the entry to allow it")
    allowed = catalog_allowlist(spec.get("allow_engine_args") or ())
    check_engine_args(engine_args, allowed)
    if trust_remote_code:
        engine_args["trust_remote_code"] = True
    keep_alive = spec.get("keep_alive")
    replicas = _replica_bounds(spec.get("replicas"))
    return CatalogEntry(
        model=str(spec["model"]),
        engine_args=engine_args,
        keep_alive_s=None if keep_alive is None else parse_duration(keep_alive),
        allow_engine_args=allowed,
        preload=bool(spec.get("preload")),
        replicas=replicas,
    )


def _replica_bounds(spec: Any) -> Bounds:
    """``replicas: {min: M, max: N}`` (or one number, both), 1 <= M <= N."""
    if spec is None:
        return Bounds()
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"min": spec, "max": spec}
    if not isinstance(spec, dict) or not set(spec) <= {"min", "max"}:
        raise ValueError("`replicas` takes {min: M, max: N}")
    low, high = spec.get("min", 1), spec.get("max", spec.get("min", 1))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError("`replicas` min and max must be integers")
    if not 1 <= low <= high:
        raise ValueError(f"`replicas` needs 1 <= min <= max (min {low}, max {high})")
    return Bounds(low, high)


def engine_args_from(args: Namespace, defaults: Namespace) -> dict:
    """The engine flags the user set: vLLM's ``EngineArgs`` fields only."""
    fields = {f.name for f in dataclasses.fields(EngineArgs)} - {
        "model",
        "served_model_name",
    }
    return {
        k: v for k, v in vars(args).items() if k in fields and v != vars(defaults)[k]
    }


def admin_token(args: Namespace) -> str:
    """``--admin-token``, else a new one. The token goes to a 0600 file
    (``--admin-token-file``; for a generated one by default one per port in
    the cache directory) whose path is logged, never the token: printed, it
    would end up in logs and terminal scrollback."""
    token = args.admin_token or secrets.token_urlsafe(32)
    path = args.admin_token_file
    if path is None and args.admin_token is None:
        path = admin_token_path(args.port)
    if path is not None:
        write_secret_file(path, token)
        logger.info("Management API token: in %s (mode 0600)", path)
    return token


def uvicorn_kwargs(args: Namespace) -> dict[str, Any]:
    """``vllm serve``'s HTTP server flags, as it hands them to uvicorn."""
    kwargs: dict[str, Any] = {
        "log_level": args.uvicorn_log_level,
        "access_log": not args.disable_uvicorn_access_log,
        "timeout_keep_alive": envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
        "h11_max_incomplete_event_size": args.h11_max_incomplete_event_size,
        **uvicorn_ssl_kwargs(args),
    }
    if args.log_config_file:  # JSON, as `vllm serve` reads it
        kwargs["log_config"] = json.loads(Path(args.log_config_file).read_text())
    elif args.disable_access_log_for_endpoints:
        kwargs["log_config"] = create_uvicorn_log_config(
            excluded_paths=[
                p.strip()
                for p in args.disable_access_log_for_endpoints.split(",")
                if p.strip()
            ],
            log_level=args.uvicorn_log_level,
        )
    return kwargs


def with_cors(app: ASGIApp, args: Namespace) -> ASGIApp:
    """``vllm serve``'s CORS flags over every route: each model's own app
    applies them to its answers only, so preflights and the router's own
    answers would go without."""
    return CORSMiddleware(
        app,
        allow_origins=args.allowed_origins,
        allow_credentials=args.allow_credentials,
        allow_methods=args.allowed_methods,
        allow_headers=args.allowed_headers,
    )


async def serve(
    args: Namespace,
    engine_args: dict,
    catalog: dict[str, CatalogEntry | AdapterEntry] | None,
) -> None:
    server_kwargs = uvicorn_kwargs(args)  # a bad log config fails first
    # Bound before anything starts, as `vllm serve` does: a port in use fails
    # at once, and no process the pool starts can take the port meanwhile.
    try:
        sock = create_server_socket((args.host, args.port), reuse_port=False)
    except OSError as e:
        raise SystemExit(
            f"cannot listen on {args.host}:{args.port}: {e.strerror}"
        ) from None
    requested = [m for m in (args.model_tag, *args.models) if m]
    demo = not requested and catalog is None
    models = requested or ([str(ensure_demo_model())] if demo else [])
    sleep_mode = current_platform.is_sleep_mode_available()
    park_gb = args.park_memory_gb
    if park_gb is None:
        park_gb = psutil.virtual_memory().total / 2**31 if sleep_mode else 0.0
    if park_gb > 0 and sleep_mode:
        # Parking is vLLM's sleep mode, which must be on from the load.
        engine_args.setdefault("enable_sleep_mode", True)
    cache_gb = args.weight_cache_gb
    if cache_gb is None:
        cache_gb = default_weight_cache_gb(args) if current_platform.is_cuda() else 0.0
    # The demo's own engine args (see demo_model.py), under the user's flags.
    start_args = {**demo_engine_args(), **engine_args} if demo else {}
    controller = WorkerController(
        num_workers=args.num_workers,
        num_engine_hosts=args.num_engine_hosts,
        devices=args.devices,
        park_memory_bytes=int(park_gb * 2**30),
        weight_cache_bytes=int(cache_gb * 2**30),
        weight_cache_dir=args.weight_cache_dir,
        peer_transport=args.peer_transport,
        # vLLM's engine metrics on /metrics, as `vllm serve` has them.
        log_stats=not args.disable_log_stats,
    )
    await asyncio.to_thread(controller.start)
    if controller.weight_cache is not None:
        for entry in (catalog or {}).values():
            if isinstance(entry, CatalogEntry) and entry.preload:
                controller.weight_cache.admit_in_background(entry.model)
    router = ModelRouter(
        controller,
        args,
        engine_args,
        allowed_model_dir=args.allowed_model_dir,
        max_loaded_models=args.max_loaded_models,
        catalog=catalog,
        keep_alive_s=parse_duration(args.keep_alive),
        api_keys=api_keys(args),
        max_body_bytes=int(args.max_request_body_mb * 2**20),
        replica_scale_up_queue=args.replica_scale_up_queue,
        replica_scale_up_after_s=parse_duration(args.replica_scale_up_after),
        replica_idle_s=parse_duration(args.replica_idle),
    )
    router.set_management(build_management_app(router, admin_token(args)))
    try:
        if args.precompile:
            await router.precompile()
        for model in models:
            name = Path(model).name if Path(model).exists() else model
            loaded = await router.add(name, model, start_args)
            logger.info(
                "Serving %r (ready in %.1f s)", name, loaded["timings_s"]["total"]
            )
        scheme = "https" if args.ssl_certfile else "http"
        url = f"{scheme}://{args.host}:{args.port}"
        example = Path(models[0]).name if models else "MODEL"
        body = (
            f'{{"model": "{example}", "messages": [{{"role": "user", '
            '"content": "What is the capital of France?"}]}'
        )
        print(
            f"Serving {', '.join(m['name'] for m in controller.list_models())} "
            f"at {url}\n  curl {url}/v1/chat/completions "
            f"-H 'Content-Type: application/json' -d '{body}'",
            flush=True,
        )
        expiry = asyncio.create_task(router.expire_idle())
        scaling = asyncio.create_task(router.scaler.run())
        stats = asyncio.create_task(log_stats_periodically(controller))
        # SIGTERM: stop accepting, let in-flight requests finish for at most
        # this long, then unload everything (the finally below).
        config = uvicorn.Config(
            with_cors(router, args),
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=_DRAIN_S,
            **server_kwargs,
        )
        await _Server(config, router).serve(sockets=[sock])
        expiry.cancel()
        scaling.cancel()
        stats.cancel()
    finally:
        sock.close()
        await asyncio.to_thread(controller.shutdown)


def parse_cli(
    argv: list[str] | None = None,
) -> tuple[Namespace, dict, dict[str, CatalogEntry | AdapterEntry] | None]:
    """Arguments, the engine flags the user set, and the catalog. A flag
    that cannot be honoured or a bad catalog exits with status 2 and the
    reason, before anything starts."""
    parser = make_parser()
    args = parser.parse_args(argv)
    defaults = parser.parse_args([])
    check_server_flags(parser, args, defaults)
    try:
        catalog = load_catalog(args.model_catalog) if args.model_catalog else None
    except (OSError, ValueError, yaml.YAMLError) as e:
        parser.error(f"--model-catalog {args.model_catalog}: {e}")
    for name, entry in (catalog or {}).items():
        if isinstance(entry, CatalogEntry) and entry.replicas.max > args.num_workers:
            parser.error(
                f"--model-catalog {args.model_catalog}: catalog model {name!r}: "
                f"replicas.max {entry.replicas.max} > --num-workers "
                f"{args.num_workers}"
            )
    return args, engine_args_from(args, defaults), catalog


def main() -> None:
    args, engine_args, catalog = parse_cli()
    # `kill -USR1` prints every thread's stack, here as in pooled processes.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # In this process too, as `vllm serve` does: each model's OpenAI app
    # looks up the parsers these plugins register.
    if args.tool_parser_plugin:
        ToolParserManager.import_tool_parser(args.tool_parser_plugin)
    if args.reasoning_parser_plugin:
        ReasoningParserManager.import_reasoning_parser(args.reasoning_parser_plugin)
    asyncio.run(serve(args, engine_args, catalog))


if __name__ == "__main__":
    main()
