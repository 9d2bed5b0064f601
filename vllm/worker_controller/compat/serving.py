# SPDX-License-Identifier: Apache-2.0
"""Upstream's OpenAI server pieces each model's app is built from, and the
HTTP server's signal handling."""

import uvicorn

# Each model's OpenAI app, built and given its state as `vllm serve` does.
from vllm.entrypoints.openai.api_server import (
    build_app,
    create_server_socket,
    init_app_state,
)

# The OpenAI wire types of our own answers (model cards, error bodies).
from vllm.entrypoints.openai.engine.protocol import (
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelPermission,
)

# `vllm serve`'s parser class (its flags are ours too).
from vllm.utils.argparse_utils import FlexibleArgumentParser

# What AsyncLLM raises when an engine dies or a request fails in it.
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

__all__ = [
    "EngineDeadError",
    "EngineGenerateError",
    "ErrorInfo",
    "ErrorResponse",
    "FlexibleArgumentParser",
    "ModelCard",
    "ModelPermission",
    "build_app",
    "create_server_socket",
    "forget_captured_signals",
    "init_app_state",
]


def forget_captured_signals(server: uvicorn.Server) -> None:
    """Drops the signals uvicorn captured during its run, so that it does
    not re-raise them at exit. Relies on: ``uvicorn.Server._captured_signals``."""
    server._captured_signals.clear()
