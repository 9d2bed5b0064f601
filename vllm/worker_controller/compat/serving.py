# SPDX-License-Identifier: Apache-2.0
"""Upstream's OpenAI server pieces each model's app is built from, and the
HTTP server's signal handling."""

import uvicorn

from vllm.entrypoints.openai.api_server import build_app, init_app_state
from vllm.entrypoints.openai.engine.protocol import (
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelPermission,
)
from vllm.utils.argparse_utils import FlexibleArgumentParser
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
    "forget_captured_signals",
    "init_app_state",
]


def forget_captured_signals(server: uvicorn.Server) -> None:
    """Drops the signals uvicorn captured during its run, so that it does
    not re-raise them at exit. Relies on: ``uvicorn.Server._captured_signals``."""
    server._captured_signals.clear()
