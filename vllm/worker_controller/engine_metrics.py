# SPDX-License-Identifier: Apache-2.0
"""vLLM's own engine metrics for many models in one process.

Upstream's ``PrometheusStatLogger`` registers into the global prometheus
registry and first unregisters every ``vllm:`` metric there, because one
process serves one model. Here a process serves many, so each model gets a
registry of its own: :class:`EngineMetrics` hands the controller per-model
stat loggers (``AsyncLLM(stat_loggers=...)``, upstream's extension point)
whose metric classes are bound to that registry, the way upstream's Ray
logger swaps its metric classes. The global registry is left alone (the
unregister call finds nothing of ours there), and :func:`exposition` merges
every registry into one Prometheus text: each family's HELP and TYPE once,
all models' samples under it, told apart by ``model_name``.
"""

import threading
from collections.abc import Iterable
from typing import ClassVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from vllm.logger import init_logger
from vllm.worker_controller.compat.metrics import (
    LoggingStatLogger,
    PrometheusStatLogger,
    StatLoggerFactory,
    metric_classes_in,
)

logger = init_logger(__name__)

MODEL_LABEL = "model_name"


class ModelPrometheusStatLogger(PrometheusStatLogger):
    """``PrometheusStatLogger`` whose metrics live in ``registry``.

    Made per model by :meth:`for_registry`: ``StatLoggerManager`` takes a
    Prometheus logger only as a class (it builds the instance itself), so
    the registry travels as a class attribute of a per-model subclass.
    """

    registry: ClassVar[CollectorRegistry]

    @classmethod
    def for_registry(
        cls, registry: CollectorRegistry
    ) -> type["ModelPrometheusStatLogger"]:
        return type(
            cls.__name__,
            (cls,),
            {
                "__module__": cls.__module__,
                "registry": registry,
                **metric_classes_in(registry),
            },
        )


class ModelLoggingStatLogger(LoggingStatLogger):
    """Upstream's periodic stats line, prefixed with the model's name: with
    many models in one log, ``Engine 000:`` alone says nothing."""

    @property
    def log_prefix(self) -> str:
        name = self.vllm_config.model_config.served_model_name
        return f"Engine {self.engine_index:03d} ({name}): "


class EngineMetrics:
    """The per-model registries of vLLM's engine metrics. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registries: dict[str, CollectorRegistry] = {}

    def stat_loggers(self, name: str) -> list[StatLoggerFactory]:
        """Stat loggers for model ``name``'s ``AsyncLLM``, with a fresh
        registry (a reloaded model starts its counters at zero, as a
        restarted ``vllm serve`` does).

        Pass them with ``disable_log_stats=True``: they replace upstream's
        defaults, which would log without the model's name and register
        into the global registry.
        """
        registry = CollectorRegistry()
        with self._lock:
            self._registries[name] = registry
        return [
            ModelPrometheusStatLogger.for_registry(registry),
            ModelLoggingStatLogger,
        ]

    def drop(self, name: str) -> None:
        """Forgets an unloaded model's metrics."""
        with self._lock:
            self._registries.pop(name, None)

    def registries(self) -> dict[str, CollectorRegistry]:
        with self._lock:
            return dict(self._registries)


class _Merged:
    """A collector over several registries that yields each metric family
    once, with the samples of all of them; samples of a model's registry
    that lack ``model_name`` (e.g. ``vllm:cache_config_info``) get it, so
    that no two models' series collide."""

    def __init__(
        self,
        registries: Iterable[CollectorRegistry],
        models: dict[str, CollectorRegistry],
    ):
        self._sources: list[tuple[CollectorRegistry, str | None]] = [
            *((r, None) for r in registries),
            *((r, name) for name, r in models.items()),
        ]

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for registry, model in self._sources:
            for metric in registry.collect():
                merged = families.get(metric.name)
                if merged is None:
                    merged = families[metric.name] = Metric(
                        metric.name, metric.documentation, metric.type, metric.unit
                    )
                elif merged.type != metric.type:
                    logger.warning(
                        "Metric %s is a %s and a %s; keeping the first",
                        metric.name,
                        merged.type,
                        metric.type,
                    )
                    continue
                merged.samples.extend(
                    _with_model(s, model) if model else s for s in metric.samples
                )
        return families.values()


def _with_model(sample: Sample, model: str) -> Sample:
    if MODEL_LABEL in sample.labels:
        return sample
    return sample._replace(labels={**sample.labels, MODEL_LABEL: model})


def exposition(
    registries: Iterable[CollectorRegistry],
    models: dict[str, CollectorRegistry] | None = None,
) -> bytes:
    """One Prometheus text exposition of ``registries`` (e.g. the
    controller's) and of every model's registry in ``models``."""
    return generate_latest(_Merged(registries, models or {}))  # type: ignore[arg-type]
