# SPDX-License-Identifier: Apache-2.0
"""Placement: whether one more awake engine fits, reserved before it starts.

The one place that decides where a load or an unpark goes. Its resources
are idle processes (the ranks' workers and an engine host), device memory
(an engine claims its ``gpu_memory_utilization`` share of each of its
devices) and ``--max-loaded-models`` slots; models still loading or
unparking count. A reservation is taken synchronously, between two awaits
of the event loop, so two concurrent loads can never count the same free
worker: it leases the processes and claims the memory at once and holds
them until the load or unpark is done.

When something is short, the least recently used idle model that frees it
is evicted (parked where that is enough, else unloaded) and the
reservation is tried again, for at most the wait budget. An idle model
whose engine has the new one's shape is the first choice: the load takes
its engine over (a swap: no new processes, memory or compile). Requests pin the
model they wait for or run on, so it is never chosen to make room. Loads,
unparks, unloads and parks on the same device run one at a time: vLLM's
memory profiler attributes what another engine allocates during its
profile to its own engine ("No available memory for the cache blocks"),
and fails on memory another engine frees meanwhile.
"""

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from vllm.logger import init_logger
from vllm.worker_controller.controller import (
    ModelState,
    PreparedLoad,
    WorkerController,
)
from vllm.worker_controller.device_memory import claimed, fits
from vllm.worker_controller.errors import (
    InsufficientWorkersError,
    ModelUnavailableError,
)
from vllm.worker_controller.pool import Lease, ProcessKind, ProcessState

logger = init_logger(__name__)

# Models that hold a slot: awake, or on their way in or out of it.
_SLOT_STATES = frozenset(
    {ModelState.LOADING, ModelState.READY, ModelState.PARKING, ModelState.UNPARKING}
)
# Models whose eviction frees device memory: awake ones, and parked ones
# that kept their memory (only models holding memory on the short devices
# are chosen: see ``_victim``).
_MEMORY_VICTIMS = frozenset({ModelState.READY, ModelState.PARKED})
# How often a reservation that must wait looks again.
_RETRY_S = 0.25

Evict = Callable[[str, bool], Awaitable[None]]
"""``evict(name, unload)``: park (if it may and ``unload`` is False) or
unload an idle model."""


@dataclass(eq=False)
class Reservation:
    """Room held for one model until its load or unpark is done."""

    name: str
    claims: dict[int, float]
    """Device -> share of its memory the engine will take."""
    lease: Lease | None = None
    """The processes of a load (None for an unpark, which keeps its own)."""
    swap_from: str | None = None
    """The idle model whose engine a swap takes over (its processes and
    memory, hence its claims)."""

    def take_lease(self) -> Lease:
        """Hands the leased processes to the load, which then owns them."""
        lease, self.lease = self.lease, None
        assert lease is not None
        return lease


@dataclass
class _Shortage:
    """Why a reservation cannot be made now, and what could fix it."""

    reason: str
    victims: frozenset[ModelState] = frozenset()
    """States of models whose eviction would help (empty: only waiting)."""
    unload: bool = False
    """Whether only an unload helps (processes: a parked model keeps its)."""
    devices: frozenset[int] = field(default_factory=frozenset)
    """Where memory is short (empty: anywhere)."""
    booting: bool = False
    """Replacement processes will end it: worth waiting for them to boot."""


class Placement:
    """Reservations, pins and LRU order of the models behind one router."""

    def __init__(
        self,
        controller: WorkerController,
        max_loaded_models: int | None,
        wait_s: float,
    ):
        self.controller = controller
        self.pool = controller.pool
        self.max_loaded_models = max_loaded_models
        self.wait_s = wait_s
        self.boot_wait_s = max(wait_s, controller.settings.boot_timeout_s)
        self._reservations: dict[str, Reservation] = {}
        self._pins: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}
        self._evicting: set[str] = set()
        self._device_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.evict_first: Callable[[str], bool] = lambda name: False
        """Models to take before any other when room is needed (a replica
        beyond its model's ``min``; see ``replicas.py``)."""

    # ------------------------------------------------------ pins and LRU

    @contextmanager
    def pin(self, name: str) -> Iterator[None]:
        """Keeps ``name`` from being evicted while a request needs it."""
        self._pins[name] += 1
        self._last_used[name] = time.monotonic()
        try:
            yield
        finally:
            self._pins[name] -= 1
            if not self._pins[name]:
                del self._pins[name]
            self._last_used[name] = time.monotonic()

    def pins(self, name: str) -> int:
        return self._pins[name]

    def idle_s(self, name: str) -> float:
        """Seconds since a request last needed ``name`` (0 while one does)."""
        if self._pins[name]:
            return 0.0
        return time.monotonic() - self._last_used.setdefault(name, time.monotonic())

    def settling(self, name: str) -> bool:
        """Whether ``name`` is being evicted or reserved right now."""
        return name in self._evicting or name in self._reservations

    def forget(self, name: str) -> None:
        self._last_used.pop(name, None)

    async def evict_idle(self, name: str, unload: bool, evict: Evict) -> bool:
        """Evicts ``name`` if no request needs it and nothing else is doing
        so; returns whether it did."""
        if self._pins[name] or self.settling(name):
            return False
        self._evicting.add(name)
        try:
            await evict(name, unload)
        finally:
            self._evicting.discard(name)
            self.forget(name)
        return True

    # ------------------------------------------------------ reservations

    async def reserve_load(
        self, name: str, prepared: PreparedLoad, evict: Evict
    ) -> Reservation:
        """Leases the processes and claims the memory of a new engine,
        evicting idle models for them; ``ModelUnavailableError`` if no room
        can be made within the wait budget."""
        return await self._reserve(
            name, lambda: self._try_load(name, prepared), evict, prepared.engine_key
        )

    async def reserve_unpark(self, name: str, evict: Evict) -> Reservation:
        """Claims the memory of a parked model's own devices, and a slot."""
        share = self.controller.engine_client(
            name
        ).vllm_config.cache_config.gpu_memory_utilization
        devices = [d for d in self.controller.devices(name) if d is not None]
        return await self._reserve(
            name, lambda: self._try_unpark(name, share, devices), evict
        )

    def release(self, reservation: Reservation) -> None:
        """Ends a reservation; processes its load did not take go back."""
        if self._reservations.get(reservation.name) is reservation:
            del self._reservations[reservation.name]
        if (victim := reservation.swap_from) is not None:
            self._evicting.discard(victim)
            self.forget(victim)
        if reservation.lease is not None:
            self.pool.give_back(reservation.take_lease().processes)

    def exclusive(self, reservation: Reservation) -> AsyncContextManager[None]:
        """The locks of the devices of this load, swap or unpark."""
        return self.devices_exclusive(reservation.claims)

    @asynccontextmanager
    async def devices_exclusive(
        self, devices: Iterable[int | None]
    ) -> AsyncIterator[None]:
        """Holds the devices' locks: for a load or unpark, and also for an
        unload or park, since memory freed during another engine's profile
        fails it too ("Error in memory profiling ... release GPU memory")."""
        indices = sorted({d for d in devices if d is not None})
        locks = [self._device_locks[d] for d in indices]
        for lock in locks:
            await lock.acquire()
        try:
            yield
        finally:
            for lock in reversed(locks):
                lock.release()

    async def _reserve(
        self,
        name: str,
        attempt: Callable[[], Reservation | _Shortage],
        evict: Evict,
        engine_key: str | None = None,
    ) -> Reservation:
        start = time.monotonic()
        while True:
            result = attempt()  # synchronous: no await between check and hold
            # Only where evicting would do: a shortage that booting
            # replacements will end must not cost a bystander its model.
            if (
                isinstance(result, _Shortage)
                and result.victims
                and (swap := self._swap_victim(name, engine_key))
            ):
                # It frees exactly what this engine needs: its own.
                logger.info(
                    "Making room for %r (%s): swapping it into the engine of %r",
                    name,
                    result.reason,
                    swap,
                )
                self._evicting.add(swap)
                claims = self.controller.device_claims().get(swap, {})
                result = Reservation(name, claims, swap_from=swap)
            if isinstance(result, Reservation):
                self._reservations[name] = result
                return result
            wait_s = self.boot_wait_s if result.booting else self.wait_s
            deadline = start + wait_s
            victim = self._victim(result, exclude=name)
            # Bounded also when others keep taking the room it made.
            if victim is not None and time.monotonic() < deadline:
                logger.info(
                    "Making room for %r (%s): %s least recently used model %r",
                    name,
                    result.reason,
                    "unloading" if result.unload else "evicting",
                    victim,
                )
                await self.evict_idle(victim, result.unload, evict)
            elif time.monotonic() < deadline:
                await asyncio.sleep(_RETRY_S)
            else:
                raise ModelUnavailableError(
                    f"no room could be made within {wait_s:.0f} s: {result.reason}",
                    retry_after_s=5.0,
                )

    def _try_load(self, name: str, prepared: PreparedLoad) -> Reservation | _Shortage:
        if shortage := self._slot_shortage(name):
            return shortage
        share = prepared.gpu_memory_utilization
        used = self._device_use(exclude=name)
        try:
            workers = self.pool.lease(
                ProcessKind.WORKER,
                prepared.world_size,
                prefer=lambda p: fits(used, p.device_index, share),
                wait=False,
            )
        except InsufficientWorkersError:
            return self._process_shortage(ProcessKind.WORKER, prepared.world_size)
        full = {
            w.device_index for w in workers if not fits(used, w.device_index, share)
        }
        if full:
            self.pool.give_back(workers)
            return _Shortage(
                f"device(s) {sorted(full)} lack {share:.0%} of memory free",
                victims=_MEMORY_VICTIMS,
                devices=frozenset(d for d in full if d is not None),
            )
        try:
            (host,) = self.pool.lease(ProcessKind.ENGINE_HOST, 1, wait=False)
        except InsufficientWorkersError:
            self.pool.give_back(workers)
            return self._process_shortage(ProcessKind.ENGINE_HOST, 1)
        claims = {w.device_index: share for w in workers if w.device_index is not None}
        return Reservation(name, claims, Lease(workers, host))

    def _try_unpark(
        self, name: str, share: float, devices: list[int]
    ) -> Reservation | _Shortage:
        if shortage := self._slot_shortage(name):
            return shortage
        used = self._device_use(exclude=name)
        if full := {d for d in devices if not fits(used, d, share)}:
            return _Shortage(
                f"device(s) {sorted(full)} lack {share:.0%} of memory free",
                victims=_MEMORY_VICTIMS,
                devices=frozenset(full),
            )
        return Reservation(name, dict.fromkeys(devices, share))

    def _slot_shortage(self, name: str) -> _Shortage | None:
        if self.max_loaded_models is None:
            return None
        states = {
            m["name"]: ModelState(m["state"]) for m in self.controller.list_models()
        }
        holding = {n for n, s in states.items() if s in _SLOT_STATES}
        holding |= set(self._reservations)
        holding.discard(name)
        if len(holding) < self.max_loaded_models:
            return None
        return _Shortage(
            f"{len(holding)} of {self.max_loaded_models} model slots are taken",
            victims=frozenset({ModelState.READY}),
        )

    def _process_shortage(self, kind: ProcessKind, count: int) -> _Shortage:
        idle = self.pool.count(kind, ProcessState.IDLE)
        booting = self.pool.count(kind, ProcessState.BOOTING, ProcessState.DEAD)
        reason = f"{count} idle {kind.value}(s) needed, {idle} idle"
        if idle + booting >= count:
            # Replacements of dead processes are on their way: wait for
            # them rather than evict a bystander.
            return _Shortage(f"{reason}, {booting} booting", booting=True)
        return _Shortage(
            reason,
            victims=frozenset({ModelState.READY, ModelState.PARKED, ModelState.FAILED}),
            unload=True,
        )

    def _device_use(self, exclude: str) -> dict[int, float]:
        """Claimed share per device: awake engines and reservations."""
        per_model = self.controller.device_claims()
        per_model.update({n: r.claims for n, r in self._reservations.items()})
        per_model.pop(exclude, None)
        return claimed(per_model.values())

    def _swap_victim(self, name: str, engine_key: str | None) -> str | None:
        """The least recently used idle model of this engine shape (an extra
        replica before any other)."""
        candidates = [
            (self.evict_first(n), self.idle_s(n), n)
            for n in self.controller.swappable(engine_key)
            if n != name and not self._pins[n] and not self.settling(n)
        ]
        return max(candidates)[-1] if candidates else None

    def _victim(self, shortage: _Shortage, exclude: str) -> str | None:
        """The least recently used model that may make this room (an
        extra replica before any other)."""
        if not shortage.victims:
            return None
        claims = self.controller.device_claims()
        candidates = [
            (self.evict_first(m["name"]), self.idle_s(m["name"]), m["name"])
            for m in self.controller.list_models()
            if ModelState(m["state"]) in shortage.victims
            and m["name"] != exclude
            and not self._pins[m["name"]]
            and not self.settling(m["name"])
            and (
                not shortage.devices
                or shortage.devices & set(claims.get(m["name"], {}))
            )
        ]
        return max(candidates)[-1] if candidates else None
