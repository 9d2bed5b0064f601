# SPDX-License-Identifier: Apache-2.0
"""Warm process pool: spawning, leasing, death detection and respawn.

Two kinds of processes are kept warm: pooled workers (one device each) and
engine hosts (CPU only, one EngineCore at a time). Each is spawned once,
reports its boot figures, and is then leased and given back many times. A
process whose control pipe closes is dead: its pending calls fail at once,
the controller is told, and a replacement is spawned in the background.
"""

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.process import BaseProcess
from typing import Any

from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker_controller.compat.cpu_shm import unlink_group_files
from vllm.worker_controller.compat.message_queues import unlink_queue_memory
from vllm.worker_controller.config import ControllerSettings
from vllm.worker_controller.engine.core import run_engine_host
from vllm.worker_controller.errors import InsufficientWorkersError
from vllm.worker_controller.process import ControlChannel
from vllm.worker_controller.worker.gpu_worker import run_pooled_worker

logger = init_logger(__name__)


class ProcessKind(str, Enum):
    WORKER = "worker"
    ENGINE_HOST = "engine_host"


class ProcessState(str, Enum):
    BOOTING = "booting"
    IDLE = "idle"
    LEASED = "leased"
    DEAD = "dead"


@dataclass(eq=False)
class PooledProcess:
    """The controller's view of one warm process."""

    kind: ProcessKind
    index: int
    device_index: int | None
    proc: BaseProcess
    channel: ControlChannel = field(init=False)
    state: ProcessState = ProcessState.BOOTING
    device: str = ""
    boot_s: float = 0.0
    baseline_bytes: int = 0
    model: str | None = None
    serving: Future | None = None
    """Resolves when the current lease's busy loop ends (with its report)."""
    last_unload: dict[str, Any] | None = None
    loading: Future | None = None
    """A worker's pending ``load_model`` call (None once answered)."""
    queues: list[Any] = field(default_factory=list)
    """Handles of the shared-memory queues it created for its last lease:
    removed for it if it dies (its own teardown removes them otherwise)."""
    dist_ident: str | None = None
    """A worker's process group while leased (the port of its init method):
    on CPU, its all-reduce files are removed for it if it dies."""

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    @property
    def name(self) -> str:
        return f"{self.kind.value}-{self.index}"


@dataclass
class Lease:
    """The processes of one engine: its ranks and its engine host."""

    workers: list[PooledProcess]
    host: PooledProcess

    @property
    def processes(self) -> list[PooledProcess]:
        return [*self.workers, self.host]


class ProcessPool:
    """Owns the pooled processes; the controller leases them from here."""

    def __init__(
        self,
        settings: ControllerSettings,
        on_lost: Callable[[PooledProcess], None],
    ):
        self.settings = settings
        self._on_lost_callback = on_lost
        self._ctx = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._spawn_lock = threading.Lock()
        self._procs: dict[tuple[ProcessKind, int], PooledProcess] = {}
        self._closing = False
        self._recycling: set[int] = set()
        self.respawns: Counter[tuple[str, str]] = Counter()
        """Processes replaced, by (kind, "died" | "recycled"): for metrics."""

    def start(self) -> None:
        """Spawns every process, then waits until all have booted."""
        devices = self.settings.devices
        if devices is None and current_platform.is_cuda_alike():
            devices = list(range(current_platform.device_count()))
        slots = [
            (ProcessKind.WORKER, i, devices[i % len(devices)] if devices else None)
            for i in range(self.settings.num_workers)
        ] + [
            (ProcessKind.ENGINE_HOST, i, None)
            for i in range(self.settings.engine_hosts)
        ]
        started = time.perf_counter()
        spawned = [self._spawn(*slot) for slot in slots]
        for p in spawned:
            self._await_boot(p, started)

    def lease(
        self,
        kind: ProcessKind,
        count: int,
        prefer: Callable[["PooledProcess"], bool] | None = None,
        wait: bool = True,
    ) -> list[PooledProcess]:
        """Marks ``count`` idle processes of ``kind`` as leased.

        Fails at once if the pool cannot have that many free processes;
        with ``wait``, waits (up to the boot timeout) while replacements of
        dead ones boot. Idle processes that ``prefer`` accepts (e.g. on a
        device with room) go first; workers of one lease are on distinct
        devices (tensor-parallel ranks cannot share a GPU).
        """
        deadline = time.monotonic() + (self.settings.boot_timeout_s if wait else 0)
        with self._cond:
            while True:
                slots = [p for p in self._procs.values() if p.kind == kind]
                # is_alive() also catches a death whose pipe EOF is unread.
                idle = [
                    p
                    for p in slots
                    if p.state == ProcessState.IDLE and p.proc.is_alive()
                ]
                leased = _pick(idle, count, prefer)
                if leased is not None:
                    break
                free = [p for p in slots if p.state != ProcessState.LEASED]
                if len(free) < count or time.monotonic() >= deadline:
                    raise InsufficientWorkersError(
                        f"Need {count} idle {kind.value}(s) but only {len(idle)} "
                        f"of {len(slots)} are idle; unload a model or start a "
                        "larger pool"
                    )
                self._cond.wait(min(1.0, deadline - time.monotonic()))
            for p in leased:
                p.state = ProcessState.LEASED
            return leased

    def count(self, kind: ProcessKind, *states: ProcessState) -> int:
        """How many processes of ``kind`` are in one of ``states`` (all
        slots when none is given)."""
        with self._cond:
            return sum(
                p.kind == kind and (not states or p.state in states)
                for p in self._procs.values()
            )

    def give_back(self, procs: list[PooledProcess]) -> None:
        with self._cond:
            for p in procs:
                p.model = None
                p.serving = None
                p.loading = None
                p.dist_ident = None  # released by the process itself
                if p.state == ProcessState.LEASED:
                    p.state = ProcessState.IDLE
            self._cond.notify_all()

    def recycle(self, p: PooledProcess, reason: str) -> None:
        """Kills a process that cannot get back to its baseline."""
        logger.warning("Recycling %s (pid %d): %s", p.name, p.pid, reason)
        with self._cond:
            p.state = ProcessState.DEAD
            self._recycling.add(p.pid)
        p.proc.kill()

    def processes(self) -> list[PooledProcess]:
        with self._cond:
            return sorted(self._procs.values(), key=lambda p: (p.kind, p.index))

    def wait_until_idle(self, timeout: float) -> bool:
        """Waits until every slot holds an idle process."""
        return self._wait_for({ProcessState.IDLE}, timeout)

    def wait_until_refilled(self, timeout: float) -> bool:
        """Waits until every dead process has been replaced and booted."""
        return self._wait_for({ProcessState.IDLE, ProcessState.LEASED}, timeout)

    def _wait_for(self, states: set[ProcessState], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(p.state not in states for p in self._procs.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    return False
            return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Asks every process to exit, then kills what is left."""
        with self._cond:
            self._closing = True
            procs = list(self._procs.values())
        for p in procs:
            if not p.channel.lost:
                p.channel.call_async("exit")
        deadline = time.monotonic() + timeout
        for p in procs:
            p.proc.join(max(0.0, deadline - time.monotonic()))
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
            p.channel.close()

    def _spawn(
        self, kind: ProcessKind, index: int, device_index: int | None
    ) -> PooledProcess:
        parent_conn, child_conn = self._ctx.Pipe()
        if kind == ProcessKind.WORKER:
            target: Callable[..., None] = run_pooled_worker
            args: tuple = (child_conn, index, device_index)
        else:
            target, args = run_engine_host, (child_conn, index)
        proc = self._ctx.Process(
            target=target,
            args=args,
            name=f"VllmPooled-{kind.value}-{index}",
            daemon=True,
        )
        with self._spawn_lock, _environment(self.settings.env):
            proc.start()
        child_conn.close()
        p = PooledProcess(kind, index, device_index, proc)
        p.channel = ControlChannel(parent_conn, p.name, lambda: self._on_lost(p))
        with self._cond:
            self._procs[(kind, index)] = p
        return p

    def _await_boot(self, p: PooledProcess, started: float) -> None:
        info = p.channel.call("describe", timeout=self.settings.boot_timeout_s)
        with self._cond:
            p.device = info["device"]
            p.baseline_bytes = info["baseline_bytes"]
            p.boot_s = time.perf_counter() - started
            p.state = ProcessState.IDLE
            self._cond.notify_all()
        logger.info(
            "Pooled %s (pid %d, %s) warm in %.2f s", p.name, p.pid, p.device, p.boot_s
        )

    def _on_lost(self, p: PooledProcess) -> None:
        with self._cond:
            p.state = ProcessState.DEAD
            closing = self._closing
            if not closing:
                why = "recycled" if p.pid in self._recycling else "died"
                self.respawns[(p.kind.value, why)] += 1
            self._recycling.discard(p.pid)
            self._cond.notify_all()
        if closing:
            return
        p.proc.join(5)
        logger.warning(
            "Pooled %s (pid %d) died (exit code %s); respawning",
            p.name,
            p.pid,
            p.proc.exitcode,
        )
        removed = sum(unlink_queue_memory(h) for h in p.queues)
        if removed:
            logger.info("Removed %d shared-memory queue(s) of %s", removed, p.name)
        if p.dist_ident and (removed := unlink_group_files(p.dist_ident)):
            logger.info("Removed %d all-reduce file(s) of %s", removed, p.name)
        self._on_lost_callback(p)
        threading.Thread(
            target=self._respawn, args=(p,), name=f"WCRespawn-{p.name}", daemon=True
        ).start()

    def _respawn(self, dead: PooledProcess) -> None:
        started = time.perf_counter()
        try:
            self._await_boot(
                self._spawn(dead.kind, dead.index, dead.device_index), started
            )
        except Exception:
            with self._cond:
                closing = self._closing
            if closing:  # the pool stopped the replacement as it booted
                logger.info("Respawn of %s ended by the shutdown", dead.name)
            else:
                logger.exception("Respawning %s failed", dead.name)


def _pick(
    idle: list[PooledProcess],
    count: int,
    prefer: Callable[[PooledProcess], bool] | None,
) -> list[PooledProcess] | None:
    """``count`` of ``idle``, preferred first, at most one per device."""
    ranked = sorted(idle, key=lambda p: (prefer is not None and not prefer(p), p.index))
    picked: list[PooledProcess] = []
    devices: set[int] = set()
    for p in ranked:
        if p.device_index is not None and p.device_index in devices:
            continue
        picked.append(p)
        if p.device_index is not None:
            devices.add(p.device_index)
        if len(picked) == count:
            return picked
    return None if count else []


@contextmanager
def _environment(env: dict[str, str]):
    """Sets ``env`` for a child about to be spawned (spawn copies environ)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
