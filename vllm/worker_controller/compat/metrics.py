# SPDX-License-Identifier: Apache-2.0
"""Upstream's Prometheus stat logger and the metric families it builds,
which ``engine_metrics.py`` gives a registry per model."""

from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The metric families PrometheusStatLogger builds (given our classes below).
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorProm

# Upstream's stat loggers, subclassed per model (an extension point).
from vllm.v1.metrics.loggers import (
    LoggingStatLogger,
    PrometheusStatLogger,
    StatLoggerFactory,
)
from vllm.v1.metrics.perf import PerfMetricsProm
from vllm.v1.spec_decode.metrics import SpecDecodingProm

__all__ = [
    "KVConnectorProm",
    "LoggingStatLogger",
    "PerfMetricsProm",
    "PrometheusStatLogger",
    "SpecDecodingProm",
    "StatLoggerFactory",
    "metric_classes_in",
]


def metric_classes_in(registry: CollectorRegistry) -> dict[str, Any]:
    """Class attributes that make a ``PrometheusStatLogger`` subclass (and
    the spec-decoding, KV-connector and perf families it builds) register
    their metrics in ``registry``, the way upstream's Ray logger swaps its
    metric classes. Relies on: ``PrometheusStatLogger._gauge_cls``,
    ``_counter_cls``, ``_histogram_cls``, ``_spec_decoding_cls``,
    ``_kv_connector_cls``, ``_perf_metrics_cls``, and the families'
    own ``_counter_cls`` (and ``_gauge_cls``, ``_histogram_cls``)."""
    # functools.partial is no descriptor: as a class attribute it is
    # called without ``self``, like the metric classes it stands for.
    gauge = partial(Gauge, registry=registry)
    counter = partial(Counter, registry=registry)
    histogram = partial(Histogram, registry=registry)
    metric_classes = {
        "_gauge_cls": gauge,
        "_counter_cls": counter,
        "_histogram_cls": histogram,
    }
    return {
        **metric_classes,
        "_spec_decoding_cls": type(
            SpecDecodingProm.__name__, (SpecDecodingProm,), {"_counter_cls": counter}
        ),
        "_kv_connector_cls": type(
            KVConnectorProm.__name__, (KVConnectorProm,), metric_classes
        ),
        "_perf_metrics_cls": type(
            PerfMetricsProm.__name__, (PerfMetricsProm,), {"_counter_cls": counter}
        ),
    }
