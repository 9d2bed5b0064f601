# SPDX-License-Identifier: Apache-2.0
"""Upstream's EngineCore process and its handshake with the front end, as
an engine host and the controller replay them."""

import threading
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

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
    "shutdown_engine_client",
]

ENGINE_CORE_DEAD = EngineCoreProc.ENGINE_CORE_DEAD
"""What the engine's output socket sends when it dies."""


def send_engine_dead(core: EngineCoreProc) -> None:
    """Tells the front end the engine died, as upstream's
    ``run_engine_core`` does. Relies on: ``EngineCoreProc._send_engine_dead``."""
    core._send_engine_dead()


def shutdown_engine_client(client: "AsyncLLM") -> None:
    """Shuts an ``AsyncLLM`` down and ends its ZMQ context.

    Upstream makes one ``AsyncLLM`` per process, so its shutdown closes the
    client's sockets but leaves their context (two IO threads, a reaper and
    their fds) to process exit; here every load and swap makes one, and
    each left 3 threads and ~7 fds in the server. The context is ended once
    its sockets are closed: ``shutdown`` closes them on the client's loop
    (scheduled there when called from another thread), so the end is
    scheduled after it, in a thread of its own, since ``term`` waits for
    every socket and must never block the loop.

    Relies on: ``AsyncLLM.output_handler``, ``AsyncLLM.engine_core``'s
    ``resources.ctx`` (the context that owns the sockets' handle) and
    ``resources.output_queue_task`` (a task on the sockets' loop).
    """
    if (handler := client.output_handler) is not None:
        # Before the sockets close: otherwise the handler reads the closing
        # socket as a dead engine and logs a failure.
        cancel_task_threadsafe(handler)
    resources = client.engine_core.resources
    task = resources.output_queue_task
    client.shutdown()

    def end_context() -> None:
        name = "zmq-context-term"
        threading.Thread(target=resources.ctx.term, name=name, daemon=True).start()

    loop = task.get_loop() if task is not None else None
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(end_context)
    else:
        end_context()
