# SPDX-License-Identifier: Apache-2.0
"""``python -m vllm.worker_controller.serve [MODEL ...]``: many models, one port.

Takes ``vllm serve``'s flags (vLLM's own parser: engine flags become every
model's defaults), plus the pool's. MODEL arguments are loaded at start;
with none, the SmolLM2 demo model is. Requests are routed by their
``model`` field to that model's vLLM OpenAI app (see ``router.py``).
"""

import asyncio
import dataclasses
import math
import secrets
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import uvicorn
import yaml

from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.worker_controller.controller import WorkerController
from vllm.worker_controller.demo_model import ensure_demo_model
from vllm.worker_controller.engine_metrics import log_stats_periodically
from vllm.worker_controller.management import build_management_app
from vllm.worker_controller.router import CatalogEntry, ModelRouter

logger = init_logger(__name__)

# How long SIGTERM waits for in-flight requests before unloading.
_DRAIN_S = 30


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT once it has stopped, which
    would end the process before the pool is unloaded; the caller's
    ``finally`` does that instead, then exits normally."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


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
        "keep_alive: 10m, trust_remote_code: false}}; loaded on first request",
    )
    group.add_argument(
        "--keep-alive",
        default="5m",
        help="unload a model idle this long (e.g. 30s, 5m, 1h; 0: as soon as "
        "idle; -1: never)",
    )
    group.add_argument(
        "--admin-token",
        default=None,
        help="bearer token of the management API (/v1/controller/...); "
        "generated and printed once at start if not given",
    )
    parser.set_defaults(host="127.0.0.1")
    return parser


def parse_duration(text: str | int) -> float:
    """'30s', '5m', '1h', plain seconds; negative means never (inf)."""
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    return math.inf if seconds < 0 else seconds


def load_catalog(path: Path) -> dict[str, CatalogEntry]:
    """Reads the model catalog; ``trust_remote_code`` only where allowed."""
    entries = {}
    for name, spec in (yaml.safe_load(path.read_text()) or {})["models"].items():
        engine_args = dict(spec.get("engine_args") or {})
        if engine_args.get("trust_remote_code") and not spec.get("trust_remote_code"):
            raise ValueError(
                f"catalog model {name!r}: set trust_remote_code: true on the "
                "entry to allow it"
            )
        if spec.get("trust_remote_code"):
            engine_args["trust_remote_code"] = True
        keep_alive = spec.get("keep_alive")
        entries[name] = CatalogEntry(
            model=str(spec["model"]),
            engine_args=engine_args,
            keep_alive_s=None if keep_alive is None else parse_duration(keep_alive),
        )
    return entries


def engine_args_from(args: Namespace, defaults: Namespace) -> dict:
    """The engine flags the user set: vLLM's ``EngineArgs`` fields only."""
    fields = {f.name for f in dataclasses.fields(EngineArgs)} - {
        "model",
        "served_model_name",
    }
    return {
        k: v for k, v in vars(args).items() if k in fields and v != vars(defaults)[k]
    }


async def serve(args: Namespace, engine_args: dict) -> None:
    requested = [m for m in (args.model_tag, *args.models) if m]
    models = requested or ([] if args.model_catalog else [str(ensure_demo_model())])
    if not requested and current_platform.is_cpu():
        # vLLM's CPU compile takes a minute and, for this 4-bit-derived
        # model, changes its greedy answer (stock vLLM does the same).
        engine_args.setdefault("enforce_eager", True)
    sleep_mode = current_platform.is_sleep_mode_available()
    park_gb = args.park_memory_gb
    if park_gb is None:
        park_gb = psutil.virtual_memory().total / 2**31 if sleep_mode else 0.0
    if park_gb > 0 and sleep_mode:
        # Parking is vLLM's sleep mode, which must be on from the load.
        engine_args.setdefault("enable_sleep_mode", True)
    controller = WorkerController(
        num_workers=args.num_workers,
        num_engine_hosts=args.num_engine_hosts,
        devices=args.devices,
        park_memory_bytes=int(park_gb * 2**30),
        # vLLM's engine metrics on /metrics, as `vllm serve` has them.
        log_stats=not args.disable_log_stats,
    )
    await asyncio.to_thread(controller.start)
    router = ModelRouter(
        controller,
        args,
        engine_args,
        allowed_model_dir=args.allowed_model_dir,
        max_loaded_models=args.max_loaded_models,
        catalog=load_catalog(args.model_catalog) if args.model_catalog else None,
        keep_alive_s=parse_duration(args.keep_alive),
    )
    admin_token = args.admin_token or secrets.token_urlsafe(24)
    router.set_management(build_management_app(router, admin_token))
    if args.admin_token is None:
        print(f"Management API token (printed once): {admin_token}", flush=True)
    try:
        for model in models:
            name = Path(model).name if Path(model).exists() else model
            loaded = await router.add(name, model)
            logger.info(
                "Serving %r (ready in %.1f s)", name, loaded["timings_s"]["total"]
            )
        url = f"http://{args.host}:{args.port}"
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
        stats = asyncio.create_task(log_stats_periodically(controller))
        # SIGTERM: stop accepting, let in-flight requests finish for at most
        # this long, then unload everything (the finally below).
        config = uvicorn.Config(
            router,
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=_DRAIN_S,
        )
        await _Server(config).serve()
        expiry.cancel()
        stats.cancel()
    finally:
        await asyncio.to_thread(controller.shutdown)


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    defaults = parser.parse_args([])
    asyncio.run(serve(args, engine_args_from(args, defaults)))


if __name__ == "__main__":
    main()
