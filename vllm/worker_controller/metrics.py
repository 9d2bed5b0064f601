# SPDX-License-Identifier: Apache-2.0
"""Controller metrics for Prometheus: loads by phase, lifecycle events, and
processes and models by state.

A registry of our own, rendered together with each model's registry of
vLLM's engine metrics (``engine_metrics.py``) as one exposition.
"""

import asyncio
import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import vllm.envs as envs
from vllm.worker_controller.controller import WorkerController
from vllm.worker_controller.engine_metrics import exposition
from vllm.worker_controller.errors import WorkerControllerError

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.load_phase = Histogram(
            "vllm_wc_load_phase_seconds",
            "Duration of each phase of a model load.",
            ["phase"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.loads = Counter("vllm_wc_loads", "Models loaded.", registry=r)
        self.unloads = Counter("vllm_wc_unloads", "Models unloaded.", registry=r)
        self.evictions = Counter(
            "vllm_wc_evictions",
            "Models parked or unloaded to make room or when idle.",
            registry=r,
        )
        self.failures = Counter("vllm_wc_load_failures", "Failed loads.", registry=r)
        self.swaps = Counter(
            "vllm_wc_swaps",
            "Models loaded into the kept engine of an idle model of the same shape.",
            registry=r,
        )
        self.parks = Counter("vllm_wc_parks", "Models parked.", registry=r)
        self.unparks = Counter("vllm_wc_unparks", "Models unparked.", registry=r)
        self.processes = Gauge(
            "vllm_wc_processes",
            "Pooled processes by kind and state.",
            ["kind", "state"],
            registry=r,
        )
        self.models = Gauge("vllm_wc_models", "Models by state.", ["state"], registry=r)
        self.requests_waited = Counter(
            "vllm_wc_requests_waited",
            "Requests that waited for their model to be loaded, swapped in or "
            "unparked.",
            ["kind"],
            registry=r,
        )
        self.request_wait = Histogram(
            "vllm_wc_request_wait_seconds",
            "How long a request waited for its model to come up.",
            ["kind"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "vllm_wc_requests",
            "Requests handed to a model's engine, per replica (0: the first).",
            ["model", "replica"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "vllm_wc_requests_in_flight",
            "Requests running on a model's engine, per replica.",
            ["model", "replica"],
            registry=r,
        )
        self.respawns = Counter(
            "vllm_wc_process_respawns",
            "Pooled processes replaced: died, or recycled (not back to their "
            "boot memory after an unload).",
            ["kind", "reason"],
            registry=r,
        )
        self._respawns_seen: dict[tuple[str, str], int] = {}
        self.weight_cache_bytes = Gauge(
            "vllm_wc_weight_cache_bytes",
            "Checkpoint bytes held in the host-RAM weight cache.",
            registry=r,
        )
        self.weight_cache_budget = Gauge(
            "vllm_wc_weight_cache_budget_bytes",
            "The host-RAM weight cache's budget (--weight-cache-gb).",
            registry=r,
        )
        self.weight_cache_entries = Gauge(
            "vllm_wc_weight_cache_entries",
            "Checkpoints in the host-RAM weight cache.",
            registry=r,
        )

    @contextlib.contextmanager
    def in_flight(self, model: str, replica: int) -> Iterator[None]:
        """Counts a request on one replica of ``model`` while it runs."""
        labels = (model, str(replica))
        self.requests.labels(*labels).inc()
        gauge = self.requests_in_flight.labels(*labels)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def observe_wait(self, kind: str, seconds: float) -> None:
        self.requests_waited.labels(kind).inc()
        self.request_wait.labels(kind).observe(seconds)

    def observe_load(self, timings_s: dict[str, float]) -> None:
        self.loads.inc()
        for phase, seconds in timings_s.items():
            self.load_phase.labels(phase).observe(seconds)

    def render(self, controller: WorkerController) -> bytes:
        """The exposition text, with the state gauges read now, and every
        loaded model's vLLM engine metrics (labelled by ``model_name``)."""
        self.processes.clear()
        for p in controller.list_workers():
            self.processes.labels(p["kind"], p["state"]).inc()
        self.models.clear()
        for m in controller.list_models():
            self.models.labels(m["state"]).inc()
        # The pool counts replacements; the counter catches up at each scrape.
        for key, count in dict(controller.pool.respawns).items():
            self.respawns.labels(*key).inc(count - self._respawns_seen.get(key, 0))
            self._respawns_seen[key] = count
        if (cache := controller.weight_cache) is not None:
            entries = cache.entries()
            self.weight_cache_bytes.set(sum(e["bytes"] for e in entries))
            self.weight_cache_entries.set(len(entries))
            self.weight_cache_budget.set(cache.budget_bytes)
        return exposition([self.registry], controller.engine_metrics.registries())


async def log_stats_periodically(
    controller: WorkerController, interval_s: float | None = None
) -> None:
    """Logs each ready model's stats line every ``interval_s`` (default
    ``VLLM_LOG_STATS_INTERVAL``), forever, as ``vllm serve``'s app lifespan
    does for its one model: behind the router, the per-model apps'
    lifespans do not run. Idle engines log at debug level only (upstream's
    rule), so an idle server stays quiet."""
    interval_s = interval_s or envs.VLLM_LOG_STATS_INTERVAL
    while True:
        await asyncio.sleep(interval_s)
        for model in controller.list_models():
            if model["state"] != "ready":
                continue
            with contextlib.suppress(WorkerControllerError):  # unloaded meanwhile
                await controller.engine_client(model["name"]).do_log_stats()
