# SPDX-License-Identifier: Apache-2.0
"""The front end's half of upstream's engine handshake, played by the controller.

Upstream's ``launch_core_engines`` binds a ROUTER socket, and the new
EngineCore says HELLO, receives the addresses of its input and output
sockets, builds itself (profile, KV cache, warm-up) and says READY. An
engine host's EngineCore runs that same protocol; the controller answers it
here, so the engine's ``AsyncLLM`` client can then attach to the addresses
as to any engine's.
"""

import time
from concurrent.futures import Future

import msgspec
import zmq

from vllm.worker_controller.compat.engine import (
    ENGINE_CORE_DEAD,
    EngineHandshakeMetadata,
    EngineZmqAddresses,
)
from vllm.worker_controller.compat.executor import (
    get_open_zmq_ipc_path,
    make_zmq_socket,
)


def new_engine_addresses() -> EngineZmqAddresses:
    """Fresh IPC addresses for one engine's input and output sockets."""
    base = get_open_zmq_ipc_path()
    return EngineZmqAddresses(inputs=[f"{base}-in"], outputs=[f"{base}-out"])


class EngineHandshake:
    """A bound handshake socket; :meth:`answer` plays the front end."""

    def __init__(self, ctx: zmq.Context, addresses: EngineZmqAddresses):
        self.addresses = addresses
        self.address = get_open_zmq_ipc_path()
        self._sock = make_zmq_socket(ctx, self.address, zmq.ROUTER, bind=True)

    def answer(self, started: Future, timeout_s: float) -> None:
        """HELLO -> addresses, until READY; raises the engine start's own
        error if it fails first, ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if started.done() and started.exception() is not None:
                raise started.exception()  # type: ignore[misc]
            if not self._sock.poll(200):
                continue
            identity, payload = self._sock.recv_multipart()
            status = msgspec.msgpack.decode(payload)["status"]
            if status == "HELLO":
                init = EngineHandshakeMetadata(
                    addresses=self.addresses, parallel_config={}
                )
                self._sock.send_multipart((identity, msgspec.msgpack.encode(init)))
            elif status == "READY":
                return
        raise TimeoutError("engine did not become ready in time")

    def close(self) -> None:
        self._sock.close(linger=0)


def notify_engine_dead(ctx: zmq.Context, output_address: str) -> None:
    """Says ENGINE_CORE_DEAD on an engine's output address, as the engine
    would have: for an engine host that died before it could, so that the
    client's in-flight requests fail instead of hanging."""
    sock = make_zmq_socket(ctx, output_address, zmq.PUSH, bind=False)
    sock.send(ENGINE_CORE_DEAD)
    sock.close(linger=1000)
