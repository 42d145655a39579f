"""Process-wide setup: the TracerProvider, the run tracer and the run processors."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Sampler

from . import _settings
from ._output_logging import install_log_capture
from ._sampling import RunAwareSampler
from .exporters._run_processor import (
    RunProcessor,
    RunSpanDispatcher,
    dispatches_directly,
    flush_all,
    shutdown_all,
)

__all__ = ["configure", "flush", "shutdown"]

logger = logging.getLogger("otel_runs")


@dataclass
class _State:
    provider: TracerProvider | None = None
    dispatcher: RunSpanDispatcher | None = None  # otel-runs' one processor on the provider
    tracer: trace.Tracer | None = None
    default_root: str | None = None
    ledger_enabled: bool | None = None  # None: not decided yet (then OTEL_RUNS_LEDGER)
    durability: str | None = None
    ledger_processors: dict[str, SpanProcessor | None] = field(default_factory=dict)
    processors: list[SpanProcessor] = field(default_factory=list)
    wired_roots: set[str] = field(default_factory=set)  # see _wire_root
    #: ``project_root`` arguments already seen by project_root_for_run -> resolved
    #: root (only wired ones): a run's root is then one dict lookup.
    run_roots: dict[object, str] = field(default_factory=dict)
    shut_down: bool = False


_state = _State()
_lock = threading.RLock()
#: Processors that serve an app for its whole life (its live feed's), by resolved
#: project root: unlike the ones passed to ``configure``, they outlive
#: ``shutdown()`` and are added again when their root is next used (configured or
#: a run opened for it). Weak: they go with their app.
_app_processors: dict[str, list[weakref.ref[SpanProcessor]]] = {}


def _resolve(root: str | os.PathLike[str]) -> str:
    return _resolve_cached(os.fspath(root))


@functools.lru_cache(maxsize=256)
def _resolve_cached(root: str) -> str:
    return str(Path(root).expanduser().resolve())


def configure(
    project_root: str | os.PathLike[str] | None = None,
    *,
    service_name: str | None = None,
    sampler: Sampler | None = None,
    processors: Iterable[SpanProcessor] = (),
    ledger: bool | None = None,
    durability: str | None = None,
    otlp_endpoint: str | None = None,
) -> TracerProvider:
    """Set up run tracking for this process; safe to call again (adds, never duplicates).

    Uses the SDK ``TracerProvider`` the application already installed (e.g. by
    ``opentelemetry-instrument``) and only adds processors to it; otherwise
    installs one (resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``
    and ``service_name``, sampler from ``OTEL_TRACES_SAMPLER`` or ``sampler``,
    wrapped so that runs are always recorded). ``project_root`` (default
    ``OTEL_RUNS_PROJECT_ROOT``, else the current directory) gets a git ledger
    unless ``ledger=False`` / ``OTEL_RUNS_LEDGER=0``. OTLP export is added when
    ``otlp_endpoint`` or the standard ``OTEL_EXPORTER_OTLP_*`` variables ask for it.
    Returns the provider in use.
    """
    with _lock:
        provider = _configure_process(service_name, sampler, otlp_endpoint, ledger, durability)
        root = project_root if project_root is not None else _settings.env_str(
            _settings.OTEL_RUNS_PROJECT_ROOT, os.getcwd())
        assert root is not None
        resolved = _resolve(root)
        if _state.default_root is None or project_root is not None:
            _state.default_root = resolved
        _wire_root(resolved)
        for proc in processors:
            _add_processor(proc)
        install_log_capture()
        return provider


def _configure_process(service_name: str | None = None, sampler: Sampler | None = None,
                       otlp_endpoint: str | None = None, ledger: bool | None = None,
                       durability: str | None = None) -> TracerProvider:
    """The part of :func:`configure` that concerns no project root (under ``_lock``)."""
    _state.shut_down = False
    provider = _ensure_provider(service_name, sampler, otlp_endpoint)
    if ledger is not None:
        if ledger != _state.ledger_enabled:
            _forget_wired_roots()  # every root's ledger is decided again
        _state.ledger_enabled = ledger
    elif _state.ledger_enabled is None:
        _state.ledger_enabled = _settings.env_bool(_settings.OTEL_RUNS_LEDGER, True)
    if durability is not None:
        _state.durability = _settings.durability(durability)
    return provider


def service_name_unset() -> bool:
    """Whether otel-runs would install the TracerProvider and nothing names the service
    (neither ``OTEL_SERVICE_NAME`` nor ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``):
    then ``RunTracking`` names it after the Flask app."""
    if _state.provider is not None or isinstance(trace.get_tracer_provider(), TracerProvider):
        return False
    return not OTELResourceDetector().detect().attributes.get(SERVICE_NAME)


def add_app_processor(proc: SpanProcessor, project_root: str | os.PathLike[str],
                      ledger: bool | None = None) -> None:
    """Add ``proc`` for the life of the process: :func:`configure` (for ``project_root``)
    adds it now and again after each :func:`shutdown`. ``proc.shutdown()`` must leave
    it usable."""
    with _lock:
        refs = _app_processors.setdefault(_resolve(project_root), [])
        if not any(ref() is proc for ref in refs):
            refs.append(weakref.ref(proc))
        configure(project_root, ledger=ledger)


def _add_processor(proc: SpanProcessor) -> None:
    if proc not in _state.processors:
        _attach(proc)
        _state.processors.append(proc)


def _attach(proc: SpanProcessor) -> None:
    """Give ``proc`` the spans: through otel-runs' dispatcher when it can stand in
    for the processor's own ``on_start``/``on_end``, else on the provider."""
    assert _state.provider is not None and _state.dispatcher is not None
    if dispatches_directly(proc):
        assert isinstance(proc, RunProcessor)
        _state.dispatcher.add(proc)
    else:
        _state.provider.add_span_processor(proc)


def _forget_wired_roots() -> None:
    _state.wired_roots.clear()
    _state.run_roots.clear()


def _wire_root(resolved_root: str) -> None:
    """Give a project root its ledger and its apps' processors (under ``_lock``)."""
    _ensure_ledger(resolved_root)
    refs = _app_processors.get(resolved_root)
    if refs:
        refs[:] = [ref for ref in refs if ref() is not None]
        for ref in refs:
            proc = ref()
            if proc is not None:
                _add_processor(proc)
    _state.wired_roots.add(resolved_root)


def _ensure_provider(service_name: str | None, sampler: Sampler | None,
                     otlp_endpoint: str | None) -> TracerProvider:
    if _state.provider is not None:
        if otlp_endpoint:
            _add_otlp(_state.provider, otlp_endpoint)
        return _state.provider
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider, owns = current, False
        if service_name or sampler:
            logger.info("otel-runs: using the application's TracerProvider; "
                        "service_name/sampler arguments are not applied to it")
    else:
        attrs = {SERVICE_NAME: service_name} if service_name else {}
        provider = TracerProvider(resource=Resource.create(attrs))
        # The provider read OTEL_TRACES_SAMPLER(_ARG); wrap it (or the given one).
        provider.sampler = RunAwareSampler(sampler or provider.sampler)
        owns = True
    dispatcher = RunSpanDispatcher()
    provider.add_span_processor(dispatcher)
    tracer = provider.get_tracer("otel_runs")
    if not isinstance(getattr(tracer, "sampler", None), RunAwareSampler) and hasattr(tracer, "sampler"):
        # The application's provider: make only our run spans sampling-proof.
        tracer.sampler = RunAwareSampler(tracer.sampler)
    _state.provider, _state.dispatcher, _state.tracer = provider, dispatcher, tracer
    if owns:
        trace.set_tracer_provider(provider)
    if owns or otlp_endpoint:
        _add_otlp(provider, otlp_endpoint)
    else:
        _start_output_logs(provider, None)
    return provider


def _start_output_logs(provider: TracerProvider, endpoint: str | None) -> None:
    """Run output as OTel logs (``exporters.otlp_logs``), with the provider's resource."""
    if not (endpoint or "opentelemetry.sdk._logs" in sys.modules
            or _settings.env_str("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
            or _settings.env_str("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return  # nothing could take the output (and the logs SDK stays unimported)
    try:
        from .exporters import otlp_logs
    except ImportError as exc:  # an OpenTelemetry SDK older than the logs API used
        logger.info("otel-runs: run output is not exported as OTel logs (%s)", exc)
        return
    otlp_logs.start(endpoint, provider.resource)


def _add_otlp(provider: TracerProvider, endpoint: str | None) -> None:
    from .exporters.otlp import OTLPSpanProcessor, otlp_processor

    _start_output_logs(provider, endpoint)
    existing = [p for p in _state.processors if isinstance(p, OTLPSpanProcessor)]
    if existing:
        if endpoint:
            logger.warning("otel-runs: OTLP export is already configured; otlp_endpoint=%r "
                           "is ignored (call otel_runs.shutdown() first to change it)", endpoint)
        return
    proc = otlp_processor(endpoint)
    if proc is not None:
        provider.add_span_processor(proc)
        _state.processors.append(proc)


def _ensure_ledger(resolved_root: str) -> None:
    if _state.ledger_enabled is False or resolved_root in _state.ledger_processors:
        return
    assert _state.provider is not None
    try:
        from .exporters.ledger import ledger_processor_for
    except ImportError:  # pragma: no cover - until the ledger module exists
        _state.ledger_processors[resolved_root] = None
        return
    proc = ledger_processor_for(resolved_root, durability=_settings.durability(_state.durability))
    _state.ledger_processors[resolved_root] = proc
    if proc is not None:
        _attach(proc)


def run_tracer() -> trace.Tracer:
    """The tracer run spans are opened with (configures on first use)."""
    tracer = _state.tracer
    if tracer is None:
        configure()
        tracer = _state.tracer
    assert tracer is not None
    return tracer


def project_root_for_run(project_root: str | os.PathLike[str] | None) -> str | None:
    """The resolved project root a run belongs to, making sure its ledger is wired."""
    if project_root is None:
        if _state.default_root is None:
            with _lock:
                configure()
        return _state.default_root
    try:
        resolved = _state.run_roots.get(project_root)
    except TypeError:  # an unhashable PathLike: resolved every time
        resolved = None
    if resolved is not None:
        return resolved
    resolved = _resolve(project_root)
    with _lock:
        if resolved not in _state.wired_roots:
            if _state.provider is None:  # not configure(): the default root is not this run's
                _configure_process()
            _wire_root(resolved)
        if len(_state.run_roots) < 256:
            try:
                _state.run_roots[project_root] = resolved
            except TypeError:
                pass
    return resolved


def ledger_processor(project_root: str | os.PathLike[str]) -> SpanProcessor | None:
    """The ledger processor wired for ``project_root`` (None if none/disabled)."""
    return _state.ledger_processors.get(_resolve(project_root))


def flush(timeout_millis: int = 30_000) -> bool:
    """Push everything pending to every run processor and exporter. Idempotent."""
    done = flush_all(_our_processors(), timeout_millis)
    logs = sys.modules.get("otel_runs.exporters.otlp_logs")  # only once it was started
    return (logs is None or logs.flush(timeout_millis)) and done


def _our_processors() -> list[SpanProcessor]:
    return [p for p in _state.ledger_processors.values() if p is not None] + _state.processors


def shutdown() -> None:
    """Flush and stop otel-runs' processors (and the provider, if otel-runs made it).
    Idempotent; ``configure()`` may be called again afterwards."""
    with _lock:
        if _state.shut_down:
            return
        flush()
        shutdown_all(_our_processors())
        logs = sys.modules.get("otel_runs.exporters.otlp_logs")
        if logs is not None:
            logs.shutdown()
        _reset_locked()
        _state.shut_down = True


def _reset_locked() -> None:
    provider = _state.provider
    if provider is not None:
        # Processors stay registered with the provider; a shut-down processor ignores spans.
        # Detach ours so a later configure() starts clean.
        ours = {id(p) for p in _our_processors()}
        if _state.dispatcher is not None:
            for proc in _state.dispatcher.processors:
                if id(proc) in ours:
                    _state.dispatcher.remove(proc)
        active = getattr(provider, "_active_span_processor", None)
        procs = getattr(active, "_span_processors", None)
        if procs is not None and ours:
            active._span_processors = tuple(p for p in procs if id(p) not in ours)
    _state.ledger_processors.clear()
    _state.processors.clear()
    _forget_wired_roots()
    _state.default_root = None
    _state.ledger_enabled = None
    _state.durability = None
