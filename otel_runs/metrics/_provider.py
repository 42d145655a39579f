"""The MeterProvider run metrics go to, chosen as the TracerProvider is.

The application's SDK ``MeterProvider`` when it installed one (e.g. by
``opentelemetry-instrument``): otel-runs only creates its instruments there and never
replaces it. Otherwise otel-runs makes one for its own instruments, with the tracer
provider's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, the Flask app's
name), and does not install it as the global provider: the application's other
instrumentations (``http.server.*`` of the Flask instrumentation, ...) keep costing nothing
unless the application installs a MeterProvider itself. Its readers:

- Prometheus (the ``prometheus`` extra: ``opentelemetry-exporter-prometheus``) when the
  ``/metrics`` endpoint is on or ``OTEL_METRICS_EXPORTER`` lists ``prometheus``;
- OTLP when an endpoint is given or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, unless ``OTEL_METRICS_EXPORTER`` leaves ``otlp``
  out (protocol from ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` / ``..._PROTOCOL``; interval
  ``OTEL_METRIC_EXPORT_INTERVAL``; temporality, headers and the rest as the SDK reads them);
- the console when ``OTEL_METRICS_EXPORTER`` lists ``console``.

Exemplars (the run's trace id on its duration bucket) are offered only when there is an
OTLP reader, unless ``OTEL_METRICS_EXEMPLAR_FILTER`` says otherwise.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from .. import _settings

__all__ = ["OTEL_METRICS_EXPORTER", "choose_meter_provider", "installed_meter_provider",
           "prometheus_reader"]

logger = logging.getLogger("otel_runs.metrics")

OTEL_METRICS_EXPORTER = "OTEL_METRICS_EXPORTER"
OTEL_METRICS_EXEMPLAR_FILTER = "OTEL_METRICS_EXEMPLAR_FILTER"
_OTLP_METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def installed_meter_provider() -> MeterProvider | None:
    """The SDK MeterProvider the application (or otel-runs) installed, else None."""
    current = metrics.get_meter_provider()
    return current if isinstance(current, MeterProvider) else None


def _exporters() -> list[str] | None:
    value = _settings.env_str(OTEL_METRICS_EXPORTER)
    return None if value is None else [e.strip().lower() for e in value.split(",")]


def prometheus_reader() -> MetricReader | None:
    """A Prometheus reader (registered with ``prometheus_client``'s default registry,
    which ``/metrics`` serves); None with a warning when the extra is not installed."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        logger.warning("otel-runs: /metrics needs the 'prometheus' extra "
                       "(pip install 'otel-runs[prometheus]'); it serves no run metrics")
        return None
    return PrometheusMetricReader()


def _otlp_reader(endpoint: str | None) -> MetricReader | None:
    exporters = _exporters()
    if exporters is not None and "otlp" not in exporters:
        return None
    if not (endpoint or _settings.env_str(_OTLP_METRICS_ENDPOINT)
            or _settings.env_str(_OTLP_ENDPOINT)):
        return None
    protocol = next((v.lower() for v in map(_settings.env_str, _PROTOCOL_VARS) if v),
                    "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=endpoint or None))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    url = None
    if endpoint:
        url = endpoint if urlparse(endpoint).path.rstrip("/").endswith("/v1/metrics") \
            else endpoint.rstrip("/") + "/v1/metrics"
    return PeriodicExportingMetricReader(HttpMetricExporter(endpoint=url))


def _resource() -> Resource:
    provider = trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    return resource if isinstance(resource, Resource) else Resource.create()


def choose_meter_provider(*, prometheus: bool = False,
                          otlp_endpoint: str | None = None) -> tuple[MeterProvider, bool]:
    """``(provider, made_by_otel_runs)``: the application's SDK MeterProvider if it has
    one, else a new one for otel-runs' instruments only (see the module doc)."""
    current = installed_meter_provider()
    if current is not None:
        return current, False
    exporters = _exporters() or []
    readers: list[MetricReader] = []
    if prometheus or "prometheus" in exporters:
        reader = prometheus_reader()
        if reader is not None:
            readers.append(reader)
    otlp = _otlp_reader(otlp_endpoint)
    if otlp is not None:
        readers.append(otlp)
    if "console" in exporters:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    # Exemplars (trace ids on histogram buckets) reach a backend over OTLP only: without an
    # OTLP reader each measurement would offer one for nothing. OTEL_METRICS_EXEMPLAR_FILTER
    # decides when set.
    exemplars = None
    if otlp is None and _settings.env_str(OTEL_METRICS_EXEMPLAR_FILTER) is None:
        exemplars = AlwaysOffExemplarFilter()
    return MeterProvider(metric_readers=readers, resource=_resource(),
                         exemplar_filter=exemplars), True
