"""Static checks of collector-config/ (no Docker engine here to start it), the Grafana
dashboard included: valid JSON, and every query names only metrics otel-runs emits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_runs.metrics import prometheus_series

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"


def _load(name: str) -> Any:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return dict(_load("otel-collector.yaml"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(_load("docker-compose.yaml"))


def _published_ports(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(host)] = int(container)
    return out


def _readme_ports() -> dict[int, str]:
    """The README's ports table: port -> service."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([\w-]+)\s*\|", (CONFIG_DIR / "README.md").read_text(),
                      re.MULTILINE)
    return {int(port): service for port, service in rows}


def test_every_pipeline_names_only_defined_components(collector: dict[str, Any]) -> None:
    service = collector["service"]
    assert service["pipelines"], "no pipelines"
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            defined = set(collector.get(kind) or {})
            used = pipeline.get(kind) or []
            assert used or kind == "processors", f"pipeline {name} has no {kind}"
            undefined = [c for c in used if c not in defined]
            assert not undefined, f"pipeline {name}: {kind} {undefined} are not defined"
    undefined_ext = [e for e in service.get("extensions", []) if e not in (collector.get("extensions") or {})]
    assert not undefined_ext


def test_traces_pipeline_limits_memory_first_then_batches(collector: dict[str, Any]) -> None:
    traces = collector["service"]["pipelines"]["traces"]
    assert traces["processors"][0] == "memory_limiter"
    assert "batch" in traces["processors"]
    limiter = collector["processors"]["memory_limiter"]
    assert limiter["limit_mib"] > limiter["spike_limit_mib"] > 0
    assert set(traces["exporters"]) == {"otlp/jaeger", "otlp/tempo"}


def test_receivers_listen_on_the_standard_otlp_ports(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_exporters_point_at_services_that_receive_otlp(collector: dict[str, Any],
                                                      compose: dict[str, Any]) -> None:
    services = compose["services"]
    tempo_cfg = _load("tempo.yaml")
    for exporter in ("otlp/jaeger", "otlp/tempo"):
        host, _, port = collector["exporters"][exporter]["endpoint"].rpartition(":")
        assert host in services, f"{exporter} points at {host}, not a compose service"
        assert port == "4317"
    assert tempo_cfg["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert "COLLECTOR_OTLP_ENABLED=true" in services["jaeger"]["environment"]


def test_ports_match_the_readme(collector: dict[str, Any], compose: dict[str, Any]) -> None:
    readme = _readme_ports()
    published = {port: name for name, svc in compose["services"].items()
                 for port in _published_ports(svc)}
    assert readme == published
    collector_ports = _published_ports(compose["services"]["otel-collector"])
    for proto, port in (("grpc", 4317), ("http", 4318)):
        endpoint = collector["receivers"]["otlp"]["protocols"][proto]["endpoint"]
        assert collector_ports[port] == int(endpoint.rpartition(":")[2])
    health = collector["extensions"]["health_check"]["endpoint"]
    assert collector_ports[13133] == int(health.rpartition(":")[2])
    tempo_port = _load("tempo.yaml")["server"]["http_listen_port"]
    assert _published_ports(compose["services"]["tempo"])[3200] == tempo_port


def test_mounted_config_files_exist_and_are_the_ones_read(compose: dict[str, Any]) -> None:
    mounted: dict[str, dict[str, str]] = {}
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith("./"):
                assert (CONFIG_DIR / source).is_file(), f"{name} mounts missing {source}"
                mounted.setdefault(name, {})[target] = source
    assert mounted["otel-collector"] == {"/etc/otelcol/otel-collector.yaml": "./otel-collector.yaml"}
    assert "--config=/etc/otelcol/otel-collector.yaml" in compose["services"]["otel-collector"]["command"]
    assert mounted["tempo"] == {"/etc/tempo/tempo.yaml": "./tempo.yaml"}
    assert "-config.file=/etc/tempo/tempo.yaml" in compose["services"]["tempo"]["command"]
    target, source = next(iter(mounted["grafana"].items()))
    assert source == "./grafana-datasources.yaml"
    assert target.startswith("/etc/grafana/provisioning/datasources/")
    named = {str(v).split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])
             if not str(v).startswith("./")}
    assert named <= set(compose.get("volumes") or {})


def test_grafana_has_tempo_as_its_data_source(compose: dict[str, Any]) -> None:
    sources = _load("grafana-datasources.yaml")["datasources"]
    tempo = next(s for s in sources if s["type"] == "tempo")
    host_port = tempo["url"].split("//")[1]
    host, _, port = host_port.partition(":")
    assert host in compose["services"]
    assert int(port) == _load("tempo.yaml")["server"]["http_listen_port"]
    assert tempo.get("isDefault") is True


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in (deps if isinstance(deps, list) else list(deps)):
            assert dep in services, f"{name} depends on unknown service {dep}"


# -- metrics: collector -> Prometheus -> Grafana ----------------------------------------------

DASHBOARD = "grafana-dashboard-otel-runs.json"


def test_metrics_pipeline_goes_to_prometheus(collector: dict[str, Any],
                                             compose: dict[str, Any]) -> None:
    pipeline = collector["service"]["pipelines"]["metrics"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"][0] == "memory_limiter" and "batch" in pipeline["processors"]
    assert pipeline["exporters"] == ["prometheus"]
    exporter = collector["exporters"]["prometheus"]
    assert exporter["enable_open_metrics"] is True  # exemplars: duration -> trace
    port = int(exporter["endpoint"].rpartition(":")[2])
    scrape = _load("prometheus.yaml")["scrape_configs"]
    targets = [t for job in scrape for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"otel-collector:{port}"]
    prometheus = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yaml" in prometheus["command"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert "./prometheus.yaml:/etc/prometheus/prometheus.yaml:ro" in prometheus["volumes"]


def test_grafana_has_prometheus_linked_to_tempo(compose: dict[str, Any]) -> None:
    sources = {s["uid"]: s for s in _load("grafana-datasources.yaml")["datasources"]}
    prometheus = sources["prometheus"]
    host, _, port = prometheus["url"].split("//")[1].partition(":")
    assert host in compose["services"] and int(port) == 9090
    links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert [link["datasourceUid"] for link in links] == ["tempo"]
    assert sources["tempo"]["type"] == "tempo"


def test_the_dashboard_is_provisioned(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    provider = _load("grafana-dashboards.yaml")["providers"][0]
    folder = provider["options"]["path"]
    assert f"./{DASHBOARD}:{folder}/otel-runs.json:ro" in volumes
    assert ("./grafana-dashboards.yaml:/etc/grafana/provisioning/dashboards/dashboards.yaml:ro"
            in volumes)
    for volume in volumes:
        assert (CONFIG_DIR / volume.split(":")[0]).is_file()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads((CONFIG_DIR / DASHBOARD).read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text: panel targets on the Prometheus data source, and variables."""
    found = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])
             if t.get("datasource", {}).get("uid") == "prometheus"]
    found += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return found


#: PromQL's own words (functions, aggregations, keywords) and Grafana's variables.
_PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile",
                 "by", "without", "or", "and", "unless", "label_values", "le"}


def _metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, groupings, ranges,
    strings and Grafana variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", promql)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(([^,]*),[^)]*\)", r"\1", text)
    text = re.sub(r"\$\w+", "", text)
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text)
            if w not in _PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", w)}


def test_every_dashboard_query_reads_metrics_otel_runs_emits(dashboard: dict[str, Any]) -> None:
    emitted = prometheus_series()
    queries = _queries(dashboard)
    assert len(queries) >= 10
    for promql in queries:
        names = _metric_names(promql)
        assert names, f"no metric in {promql!r}"
        assert names <= emitted, f"{promql!r} reads {sorted(names - emitted)}, not emitted"
    assert _metric_names("sum by (le) (rate(a_b{x=\"y\"}[5m])) / max(c)") == {"a_b", "c"}


def test_the_dashboard_answers_the_operators_questions(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in _panels(dashboard)}
    exprs = {title: " ".join(t.get("expr", "") for t in p.get("targets", []))
             for title, p in by_title.items()}
    assert "by (cicd_pipeline_result)" in exprs["Runs per minute by result"]
    assert "cicd_pipeline_result=\"failure\"" in exprs["Failure rate by subtype"]
    durations = by_title["Duration p50 / p95 by subtype"]
    quantiles = [t["expr"].split(",")[0] for t in durations["targets"]]
    assert quantiles == ["histogram_quantile(0.5", "histogram_quantile(0.95"]
    assert all(t.get("exemplar") for t in durations["targets"])
    assert "cicd_pipeline_run_active" in exprs["Active runs by subtype"]
    assert "otel_runs_ledger_runs" in exprs["Runs in the ledger by type and status"]
    # From a run to its trace in Tempo: exemplars, a data link, and the failed-runs table.
    assert "tempo" in durations["fieldConfig"]["defaults"]["links"][0]["url"]
    traces = next(p for p in _panels(dashboard) if p.get("datasource", {}).get("uid") == "tempo")
    assert traces["targets"][0]["queryType"] == "traceql"
    assert "span.run.status" in traces["targets"][0]["query"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
