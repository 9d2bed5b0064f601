# SPDX-License-Identifier: Apache-2.0
"""Replicas: more than one engine serving one model name.

The controller keys models by name, so replica ``i`` (from 1) of model
``NAME`` is a model record of its own named ``NAME#i`` (``#`` is in no
folder or catalog name a request can load): the controller loads, places
and unloads it as any model, and the peer loader copies its weights from
the model's other replicas. Clients never see these names: the router
sends a request for ``NAME`` to whichever of its ready replicas (``NAME``
itself is replica 0) has the fewest requests in flight, and the listings
show replicas under their model.

This module keeps the router's per-model bookkeeping: which replicas
exist, requests in flight and served per replica, the replica counts the
operator asked for, and how long a model's queue has stayed long (what
the autoscaler reads).
"""

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vllm.logger import init_logger
from vllm.worker_controller.controller import ModelState
from vllm.worker_controller.errors import (
    ModelNotFoundError,
    PoolTooSmallError,
    WorkerControllerError,
)
from vllm.worker_controller.pool import ProcessKind, ProcessState

logger = init_logger(__name__)

SEPARATOR = "#"


def replica_name(name: str, index: int) -> str:
    """The controller's name of replica ``index`` of ``name`` (0: itself)."""
    return name if index == 0 else f"{name}{SEPARATOR}{index}"


def split(name: str) -> tuple[str, int]:
    """``(model, index)`` of a controller record name (index 0: the model
    itself, or a name that is no replica's)."""
    base, sep, index = name.rpartition(SEPARATOR)
    if sep and base and index.isdigit() and not index.startswith("0"):
        return base, int(index)
    return name, 0


def is_replica(name: str) -> bool:
    """Whether ``name`` is an extra replica's record (never routable)."""
    return split(name)[1] > 0


@dataclass
class Bounds:
    """How many replicas a model keeps (``min``) and may grow to (``max``)."""

    min: int = 1
    max: int = 1


class ReplicaBook:
    """Replicas in use per model: in-flight and served counts, bounds, and
    since when the queue per replica has been above the scale-up mark."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.bounds: dict[str, Bounds] = {}
        self._busy_since: dict[str, float] = {}

    def bounds_of(self, name: str) -> Bounds:
        return self.bounds.get(name, Bounds())

    def pick(self, name: str, ready: Callable[[str], bool], indices: list[int]) -> str:
        """The ready replica of ``name`` with the fewest requests in flight
        (ties: the lowest index); ``name`` itself if none is ready (the
        caller loads or reloads it)."""
        candidates = [
            (self.in_flight[replica_name(name, i)], i)
            for i in indices
            if ready(replica_name(name, i))
        ]
        if not candidates:
            return name
        return replica_name(name, min(candidates)[1])

    @contextmanager
    def use(self, replica: str) -> Iterator[None]:
        """Counts a request on ``replica`` while it runs."""
        self.in_flight[replica] += 1
        self.served[replica] += 1
        try:
            yield
        finally:
            self.in_flight[replica] -= 1
            if not self.in_flight[replica]:
                del self.in_flight[replica]

    def queue_long_for(self, name: str, per_replica: float, mark: float) -> float:
        """Seconds the model's requests per replica have stayed above
        ``mark`` (0: they are not above it now)."""
        now = time.monotonic()
        if per_replica <= mark:
            self._busy_since.pop(name, None)
            return 0.0
        return now - self._busy_since.setdefault(name, now)

    def reset_queue(self, name: str) -> None:
        self._busy_since.pop(name, None)

    def forget(self, replica: str) -> None:
        self.served.pop(replica, None)


class ReplicaScaler:
    """Keeps each model's replicas within its bounds: the scale endpoint,
    and a periodic check (``run``) that replaces dead replicas, adds one
    while the queue per replica stays long and workers are idle, and
    removes extra replicas that stay idle. Replica loads never evict
    another model (``ModelRouter.add(..., may_evict=False)``); the
    controller copies their weights from a ready replica (peer loading).

    ``router`` is the ``ModelRouter`` that owns it, typed ``Any``: the
    router imports this module, and imports here run one way
    (``test_seam.py``)."""

    def __init__(
        self,
        router: Any,
        scale_up_queue: float = 8.0,
        scale_up_after_s: float = 10.0,
        idle_s: float = 60.0,
    ):
        self.router = router
        self.book: ReplicaBook = router.replicas
        self.scale_up_queue = scale_up_queue
        self.scale_up_after_s = scale_up_after_s
        self.idle_s = idle_s
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def changing(self, name: str) -> asyncio.Lock:
        """Held while ``name``'s replicas change: by the scaler, and by the
        router while the model leaves (unload, eviction, keep-alive), so
        that the scaler does not re-add a replica the model is losing, or
        reload the model from one."""
        return self._locks[name]

    # ----------------------------------------------------------- reading

    def indices(self, name: str) -> list[int]:
        """Replica indices of ``name`` with a controller record (and 0)."""
        found = {0}
        records = [m["name"] for m in self.router.controller.list_models()]
        for record in [*records, *self.router._loading]:
            base, index = split(record)
            if base == name:
                found.add(index)
        return sorted(found)

    def ready(self, replica: str) -> bool:
        return (
            self.router.controller.state(replica) == ModelState.READY
            and replica in self.router._served
            and not self.router.placement.settling(replica)
        )

    def pick(self, name: str) -> str:
        """Where a request for ``name`` goes (fewest in flight)."""
        return self.book.pick(name, self.ready, self.indices(name))

    def is_extra(self, record: str) -> bool:
        """A replica beyond its model's ``min``: the first to go when room
        is needed (``Placement`` prefers it as a victim)."""
        base, index = split(record)
        if index == 0:
            return False
        return len(self._live(base)) > self.book.bounds_of(base).min

    def _live(self, name: str) -> list[int]:
        """Indices of replicas loaded or loading (not failed or gone)."""
        live = (ModelState.READY, ModelState.LOADING, ModelState.PARKED)
        return [
            i
            for i in self.indices(name)
            if self.router.controller.state(replica_name(name, i)) in live
            or replica_name(name, i) in self.router._loading
        ]

    def describe(self, name: str, usage: bool = True) -> list[dict[str, Any]]:
        """The listing's ``replicas`` of model ``name``; ``usage``: with
        the request counts (figures that change with every request, which
        a plain listing leaves out so that it stays equal while no model
        changes)."""
        out = []
        for index in self.indices(name):
            replica = replica_name(name, index)
            state = self.router.controller.state(replica)
            if state is None:
                continue
            try:
                devices = self.router.controller.devices(replica)
            except WorkerControllerError:
                devices = []
            listed = next(
                (
                    m
                    for m in self.router.controller.list_models()
                    if m["name"] == replica
                ),
                {},
            )
            entry = {
                "index": index,
                "state": state.value,
                "workers": listed.get("worker_pids", []),
                "devices": devices,
                "weights_load": listed.get("weights_load"),
            }
            if usage:
                entry["in_flight"] = self.book.in_flight[replica]
                entry["requests"] = self.book.served[replica]
            out.append(entry)
        return out

    # ----------------------------------------------------------- scaling

    async def scale(self, name: str, count: int) -> dict[str, Any]:
        """Sets ``name``'s replicas to ``count`` (its bounds become
        ``count..count`` until the next call) and waits until they are:
        loads the model if needed, then adds replicas (from a peer) or
        removes the highest ones (their requests finish first, for a
        while). Checked before anything changes."""
        router = self.router
        if is_replica(name) or not router._known(name):
            raise ModelNotFoundError(f"The model `{name}` does not exist.")
        workers = router.controller.settings.num_workers
        if count > workers:
            raise PoolTooSmallError(
                f"{count} replicas need {count} workers; the pool has {workers}"
            )
        self.book.bounds[name] = Bounds(count, count)
        loaded = []
        async with self.changing(name):
            with router.placement.pin(name):
                await router._ensure_ready(name)
                while len(live := self._live(name)) < count:
                    loaded.append(await self._add(name))
                for index in sorted(live, reverse=True)[: max(0, len(live) - count)]:
                    await self._remove(replica_name(name, index), "was scaled down")
        return {"name": name, "replicas": self.describe(name), "loaded": loaded}

    async def _add(self, name: str) -> dict[str, Any]:
        """Loads one more replica of the (ready) model ``name``."""
        taken = set(self.indices(name))
        index = next(i for i in range(1, len(taken) + 2) if i not in taken)
        served = self.router._served[name]
        origin = self.router.resolve(name)
        engine_args = origin.engine_args if origin is not None else {}
        replica = replica_name(name, index)
        logger.info("Adding replica %r", replica)
        return await self.router.add(
            replica, served.model, engine_args, may_evict=False
        )

    async def _remove(self, replica: str, why: str, drain_s: float = 30.0) -> None:
        """Stops routing to ``replica``, lets its requests finish (for at
        most ``drain_s``), then unloads it."""
        self.router._served.pop(replica, None)
        deadline = time.monotonic() + drain_s
        while self.book.in_flight[replica] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        logger.info("Removing replica %r (%s)", replica, why)
        await self.router.remove(replica, why)
        self.book.forget(replica)

    async def run(self, period_s: float = 1.0) -> None:
        """The periodic check, forever (a server's background task)."""
        while True:
            await asyncio.sleep(period_s)
            names = set(self.book.bounds)
            for m in self.router.controller.list_models():
                base, index = split(m["name"])
                if index:
                    names.add(base)
            for name in names:
                lock = self.changing(name)
                if lock.locked():
                    continue
                try:
                    async with lock:
                        await self._check(name)
                except WorkerControllerError as e:
                    logger.warning("Scaling %r: %s", name, e)

    async def _check(self, name: str) -> None:
        router = self.router
        controller = router.controller
        # Dead replicas stop being routed to and are unloaded.
        for index in self.indices(name)[1:]:
            replica = replica_name(name, index)
            if controller.state(replica) == ModelState.FAILED:
                logger.warning(
                    "Replica %r failed (%s)", replica, controller.failure(replica)
                )
                await self._remove(replica, "failed", drain_s=0)
        primary = controller.state(name)
        others = [
            i for i in self.indices(name)[1:] if self.ready(replica_name(name, i))
        ]
        if primary in (None, ModelState.FAILED) and name not in router._loading:
            if not others:
                return  # not loaded: its next request loads it
            # Replica 0 died: reloaded from a surviving replica.
            origin = router.resolve(name)
            if origin is not None and self._room_for(replica_name(name, others[0])):
                logger.info("Replacing replica 0 of %r", name)
                await router.add(
                    name, origin.model, origin.engine_args, may_evict=False
                )
            return
        if primary != ModelState.READY or name not in router._served:
            return
        bounds = self.book.bounds_of(name)
        live = self._live(name)
        ready = [0, *others]
        queue = sum(self.book.in_flight[replica_name(name, i)] for i in ready)
        busy_s = self.book.queue_long_for(name, queue / len(ready), self.scale_up_queue)
        if len(live) < bounds.min and self._room_for(name):
            await self._add(name)
        elif (
            len(live) < bounds.max
            and busy_s >= self.scale_up_after_s
            and self._room_for(name)
        ):
            logger.info(
                "%r: %.1f requests per replica for %.0f s: adding a replica",
                name,
                queue / len(ready),
                busy_s,
            )
            self.book.reset_queue(name)
            await self._add(name)
        elif len(live) > bounds.max:
            await self._remove(replica_name(name, max(live)), "was scaled down")
        elif len(live) > bounds.min:
            unused_s = router.placement.idle_s
            idle = [
                i
                for i in live
                if i > 0 and unused_s(replica_name(name, i)) >= self.idle_s
            ]
            if idle:
                await self._remove(replica_name(name, max(idle)), "was idle")

    def _room_for(self, replica: str) -> bool:
        """Whether idle processes can take one more engine like ``replica``'s
        (a worker per rank and an engine host) without evicting anything."""
        pool = self.router.controller.pool
        ranks = len(self.router.controller.devices(replica))
        return (
            pool.count(ProcessKind.WORKER, ProcessState.IDLE) >= ranks
            and pool.count(ProcessKind.ENGINE_HOST, ProcessState.IDLE) > 0
        )
