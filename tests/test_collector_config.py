"""Static checks of collector-config/ (no Docker engine here to start it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

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
