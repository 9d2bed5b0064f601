# SPDX-License-Identifier: Apache-2.0
"""The Grafana dashboard (docs/grafana/) asks only for what /metrics has.

Every metric name in its PromQL, and every label it groups, filters or
names a legend by, must be in the exposition the server renders: built
here from the same code (the controller's registry, and upstream's stat
logger bound to a model's registry, given a real tiny model's config),
without starting a server or an engine.
"""

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.worker_controller.conftest import TINY_ARGS
from tests.worker_controller.models import build_model
from vllm.engine.arg_utils import EngineArgs
from vllm.worker_controller.engine_metrics import ModelPrometheusStatLogger, exposition
from vllm.worker_controller.metrics import ControllerMetrics

DASHBOARD = (
    Path(__file__).parents[2] / "docs" / "grafana" / "vllm-worker-controller.json"
)
# Labels that Prometheus adds to every series at scrape time.
TARGET_LABELS = {"instance", "job"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, set[str]]:
    """Sample names in a /metrics exposition -> their label names."""
    metrics = ControllerMetrics()
    # Labelled families have samples once a child exists, as on a server
    # that has loaded a model and served a request that waited for it.
    metrics.observe_load({"weights": 0.5, "total": 1.0})
    metrics.observe_wait("load", 1.0)
    metrics.processes.labels("worker", "idle").set(1)
    metrics.models.labels("ready").set(1)
    metrics.respawns.labels("worker", "died").inc()
    with metrics.in_flight("tiny", 1):  # a request on a replica
        pass
    model = build_model("qwen3", tmp_path_factory.mktemp("dashboard"))
    vllm_config = EngineArgs(model=str(model), **TINY_ARGS).create_engine_config()
    registry = CollectorRegistry()
    ModelPrometheusStatLogger.for_registry(registry)(vllm_config, [0])
    text = exposition([metrics.registry], {"tiny": registry}).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legendFormat) for every target and query variable."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["query"]["query"], ""))
    return out


def parse(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names one PromQL expression uses."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(w.strip() for w in group.split(",") if w.strip())
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    # label_values(metric, label): its second argument is a label.
    m = re.match(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*$", expr)
    if m:
        expr, label = m.groups()
        labels.add(label)
    metrics = {
        name
        for name in re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
        if name not in PROMQL_WORDS
    }
    return metrics, labels


def test_parse():
    assert parse(
        'histogram_quantile(0.5, sum by (le, model_name) (rate(vllm:x_bucket{a=~"$b",'
        ' c!="d{e}"}[$__rate_interval]))) / on (f) vllm_wc_y_total'
    ) == ({"vllm:x_bucket", "vllm_wc_y_total"}, {"le", "model_name", "a", "c", "f"})
    assert parse('label_values(vllm:z{i=~"$i"}, model_name)') == (
        {"vllm:z"},
        {"i", "model_name"},
    )


def test_dashboard_uses_only_exported_metrics_and_labels(exported):
    queries = dashboard_queries()
    assert len(queries) > 20
    for where, expr, legend in queries:
        metrics, labels = parse(expr)
        assert metrics, f"{where}: no metric in {expr!r}"
        unknown = metrics - exported.keys()
        assert not unknown, f"{where}: {sorted(unknown)} not in /metrics ({expr!r})"
        have = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        missing = (labels | legend_labels) - have
        assert not missing, f"{where}: no label {sorted(missing)} on {sorted(metrics)}"


def test_dashboard_covers_the_controller_metrics(exported):
    """Each controller family is on the dashboard (a new one should be too)."""
    used = set().union(*(parse(expr)[0] for _, expr, _ in dashboard_queries()))
    families = {
        family.name
        for family in ControllerMetrics().registry.collect()
        if not family.name.endswith("_created")
    }
    for family in families:
        assert any(name.startswith(family) for name in used), family


def test_dashboard_shape():
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
