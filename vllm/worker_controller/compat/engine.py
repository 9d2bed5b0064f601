# SPDX-License-Identifier: Apache-2.0
"""Upstream's EngineCore process and its handshake with the front end, as
an engine host and the controller replay them."""

# Stops AsyncLLM's output handler before its sockets close.
from vllm.utils.async_utils import cancel_task_threadsafe

# The wire protocol's request (the host's retire message is one).
from vllm.v1.engine import EngineCoreRequest, EngineCoreRequestType

# Subclassed by the engine host; its shutdown state ends the busy loop.
from vllm.v1.engine.core import EngineCoreProc, EngineShutdownState

# What the front end sends the engine on HELLO.
from vllm.v1.engine.utils import EngineHandshakeMetadata, EngineZmqAddresses

# Encodes the retire message as the front end would.
from vllm.v1.serial_utils import MsgpackEncoder

__all__ = [
    "ENGINE_CORE_DEAD",
    "EngineCoreProc",
    "EngineCoreRequest",
    "EngineCoreRequestType",
    "EngineHandshakeMetadata",
    "EngineShutdownState",
    "EngineZmqAddresses",
    "MsgpackEncoder",
    "cancel_task_threadsafe",
    "send_engine_dead",
]

ENGINE_CORE_DEAD = EngineCoreProc.ENGINE_CORE_DEAD
"""What the engine's output socket sends when it dies."""


def send_engine_dead(core: EngineCoreProc) -> None:
    """Tells the front end the engine died, as upstream's
    ``run_engine_core`` does. Relies on: ``EngineCoreProc._send_engine_dead``."""
    core._send_engine_dead()
