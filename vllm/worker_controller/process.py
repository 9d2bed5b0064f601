# SPDX-License-Identifier: Apache-2.0
"""The control channel between the controller and each pooled process.

``ControlChannel`` is the controller's side (a pipe plus a reader thread
that matches replies to requests by id); ``ControlServer`` the child's.

A pooled process (a worker or an engine host) does its model work on its
main thread: device state, OpenMP binding and signal handling belong to it,
and upstream's busy loops expect it. A daemon thread reads control requests
so that the controller can still ask for health or a release while the main
thread sits inside a busy loop. Requests carry an id and every request gets
exactly one reply, so the controller can keep several in flight.
"""

import faulthandler
import itertools
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from vllm.logger import init_logger
from vllm.worker_controller.errors import RemoteCallError, WorkerLostError

logger = init_logger(__name__)


@dataclass
class ControlRequest:
    """One call from the controller: ``handler.<method>(**kwargs)``."""

    request_id: int
    method: str
    kwargs: dict[str, Any]


@dataclass
class ControlReply:
    """The answer to one :class:`ControlRequest`."""

    request_id: int
    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""


class PooledProcessHandler:
    """Base for the objects a :class:`ControlServer` dispatches to.

    Methods named in ``INLINE_METHODS`` run on the control thread and must
    be quick and thread-safe; those in ``THREAD_METHODS`` run on a thread of
    their own each (thread-safe, may take a while: the main thread and the
    control thread go on meanwhile); every other method runs on the main
    thread, one at a time, in arrival order.
    """

    INLINE_METHODS: frozenset[str] = frozenset({"describe"})
    THREAD_METHODS: frozenset[str] = frozenset()

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def after_reply(self) -> None:
        """Main-thread work a call left for after its reply was sent (the
        controller goes on meanwhile); runs before the next main-thread
        call."""


class ControlServer:
    """Reads requests from the controller's pipe and runs them."""

    _EXIT = object()

    def __init__(self, conn: Connection, handler: PooledProcessHandler):
        self._conn = conn
        self._handler = handler
        self._send_lock = threading.Lock()
        self._main_queue: queue.Queue[ControlRequest | object] = queue.Queue()

    def serve_forever(self) -> None:
        """Runs main-thread requests until the controller says ``exit``.

        SIGUSR1 makes the process print every thread's stack to its log, to
        see where a stuck load waits.
        """
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        threading.Thread(
            target=self._read_loop, name="WCControlReader", daemon=True
        ).start()
        while (request := self._main_queue.get()) is not self._EXIT:
            assert isinstance(request, ControlRequest)
            self._dispatch(request)
            try:
                self._handler.after_reply()
            except Exception:
                logger.exception("Work after %s failed", request.method)

    def _read_loop(self) -> None:
        while True:
            try:
                request: ControlRequest = self._conn.recv()
            except (EOFError, OSError):
                # The controller is gone: nothing here is worth saving, and a
                # main thread inside a busy loop cannot be joined.
                logger.info("Controller connection closed; pooled process exits.")
                os._exit(0)
            if request.method == "exit":
                self._reply(ControlReply(request.request_id, ok=True))
                self._main_queue.put(self._EXIT)
                return
            if request.method in self._handler.INLINE_METHODS:
                self._dispatch(request)
            elif request.method in self._handler.THREAD_METHODS:
                threading.Thread(
                    target=self._dispatch,
                    args=(request,),
                    name=f"WC-{request.method}",
                    daemon=True,
                ).start()
            else:
                self._main_queue.put(request)

    def _dispatch(self, request: ControlRequest) -> None:
        try:
            value = getattr(self._handler, request.method)(**request.kwargs)
            reply = ControlReply(request.request_id, ok=True, value=value)
        except Exception as e:
            logger.exception("Pooled process request %s failed", request.method)
            reply = ControlReply(
                request.request_id,
                ok=False,
                error_type=type(e).__name__,
                error_message=str(e),
                error_traceback=traceback.format_exc(),
            )
        self._reply(reply)

    def _reply(self, reply: ControlReply) -> None:
        with self._send_lock:
            try:
                self._conn.send(reply)
            except OSError:  # BrokenPipeError: as for EOF in _read_loop
                os._exit(0)


class ControlChannel:
    """Request/reply over one pipe; a dead peer fails every pending call."""

    def __init__(self, conn: Connection, name: str, on_lost: Callable[[], None]):
        self.name = name
        self._conn = conn
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[str, Future]] = {}
        self._lost = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"WCChannel-{name}", daemon=True
        )
        self._reader.start()

    @property
    def lost(self) -> bool:
        return self._lost

    def call_async(self, method: str, **kwargs: Any) -> Future:
        """Sends ``method(**kwargs)``; the future holds the reply."""
        future: Future = Future()
        with self._lock:
            if self._lost:
                future.set_exception(WorkerLostError(f"{self.name} is gone"))
                return future
            request_id = next(self._ids)
            self._pending[request_id] = (method, future)
            try:
                self._conn.send(ControlRequest(request_id, method, kwargs))
            except (OSError, BrokenPipeError) as e:
                self._pending.pop(request_id)
                future.set_exception(WorkerLostError(f"{self.name}: {e}"))
        return future

    def call(self, method: str, timeout: float | None = None, **kwargs: Any) -> Any:
        return self.call_async(method, **kwargs).result(timeout)

    def close(self) -> None:
        self._conn.close()

    def _read_loop(self) -> None:
        while True:
            try:
                reply: ControlReply = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                method, future = self._pending.pop(reply.request_id)
            if reply.ok:
                future.set_result(reply.value)
            else:
                future.set_exception(
                    RemoteCallError(method, reply.error_type, reply.error_message)
                )
        with self._lock:
            self._lost = True
            pending, self._pending = self._pending, {}
        # First the pool and controller (they record how it died), then the
        # callers waiting on it, so that their errors can say so.
        self._on_lost()
        for method, future in pending.values():
            future.set_exception(
                WorkerLostError(f"{self.name} died while running {method}")
            )
