"""``tracked_run``: the context manager, its statuses, nesting, async, child spans."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import otel_runs
from otel_runs import current_run, tracked_run


def test_run_id_is_available_at_once_and_run_is_started_then_ended(collector) -> None:  # noqa: ANN001
    with tracked_run(None, "deploy", "deploy:k8s") as run:
        assert otel_runs.validate_run_id(run.run_id)
        assert [r.run_id for r in collector.started] == [run.run_id]
        assert collector.started[0].status == "running"
        assert collector.ended == []
        assert current_run() is run
    assert current_run() is None
    assert collector.by_id(run.run_id).status == "ok"


def test_body_sets_status_summary_metadata_events(collector) -> None:  # noqa: ANN001
    with tracked_run(None, "deploy", "deploy:k8s", summary="Apply", namespace="a") as run:
        run.status = "failed"
        run.summary = "2 of 3 applied"
        run.metadata["applied"] = 2
        run.add_event("step", name="apply", n=1)
    got = collector.by_id(run.run_id)
    assert (got.status, got.summary) == ("failed", "2 of 3 applied")
    assert got.metadata == {"namespace": "a", "applied": 2}
    assert got.events[0]["name"] == "step"
    with pytest.raises(ValueError, match="interrupted"):
        run.status = "interrupted"  # only the ledger's crash recovery sets it
    with pytest.raises(ValueError):
        run.status = "running"


def test_exception_fails_the_run_and_is_reraised_unchanged(collector) -> None:  # noqa: ANN001
    boom = RuntimeError("kubectl: connection refused")
    with pytest.raises(RuntimeError) as err:
        with tracked_run(None, "deploy", "deploy:k8s") as run:
            run.status = "ok"
            raise boom
    assert err.value is boom
    got = collector.by_id(run.run_id)
    assert got.status == "failed"
    assert got.summary == "kubectl: connection refused"
    assert any(e["name"] == "exception" for e in got.events)


def test_exception_keeps_a_summary_the_body_set(collector) -> None:  # noqa: ANN001
    with pytest.raises(KeyError):
        with tracked_run(None, "deploy", "deploy:k8s", summary="default") as run:
            run.summary = "applied 2 of 3"
            raise KeyError("x")
    assert collector.by_id(run.run_id).summary == "applied 2 of 3"


@pytest.mark.parametrize(("exc", "status"), [
    (KeyboardInterrupt(), "cancelled"),
    (SystemExit(0), "ok"),
    (SystemExit(None), "ok"),
    (SystemExit(2), "failed"),
    (SystemExit("fatal"), "failed"),
    (GeneratorExit(), "cancelled"),
    (asyncio.CancelledError(), "cancelled"),
])
def test_base_exceptions_are_classified_and_reraised(collector, exc: BaseException, status: str) -> None:  # noqa: ANN001
    with pytest.raises(type(exc)) as err:
        with tracked_run(None, "test", "test:run") as run:
            raise exc
    assert err.value is exc
    assert collector.by_id(run.run_id).status == status


def test_span_status_and_exception_recorded_on_the_span(collector) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        with tracked_run(None, "test", "test:run") as run:
            raise ValueError("bad")
    spans = [s for s in _finished_run_spans(collector) if s.attributes["run.id"] == run.run_id]
    assert spans[0].status.status_code is StatusCode.ERROR
    assert spans[0].name == "test:run"
    (event,) = [e for e in spans[0].events if e.name == "exception"]
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.escaped"] == "True"  # it left the run's block


def test_span_status_is_unset_for_ok_and_cancelled_runs(collector) -> None:  # noqa: ANN001
    with tracked_run(None, "test", "test:run") as ok:
        pass
    with tracked_run(None, "test", "test:run") as cancelled:
        cancelled.status = "cancelled"
    by_id = {s.attributes["run.id"]: s for s in _finished_run_spans(collector)}
    assert by_id[ok.run_id].status.status_code is StatusCode.UNSET
    assert by_id[cancelled.run_id].status.status_code is StatusCode.UNSET
    assert by_id[cancelled.run_id].attributes["run.status"] == "cancelled"


def test_the_project_of_a_run_is_known_in_process_and_not_on_the_span(tmp_path) -> None:  # noqa: ANN001
    from opentelemetry.sdk.trace import SpanProcessor

    from otel_runs.exporters import run_project_root

    seen: list[tuple[str, str, str | None]] = []

    class Looking(SpanProcessor):
        def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001
            seen.append(("start", span.name, run_project_root(span)))

        def on_end(self, span) -> None:  # noqa: ANN001
            seen.append(("end", span.name, run_project_root(span)))

    other = tmp_path / "other"
    other.mkdir()
    provider = otel_runs.configure(tmp_path, ledger=False, processors=[Looking()])
    tracer = provider.get_tracer("test")
    with tracked_run(other, "deploy", "deploy:k8s") as run:
        with tracer.start_as_current_span("kubectl apply") as child:
            assert "run.project_root" not in child.attributes
    with tracer.start_as_current_span("outside"):
        pass
    root = str(other.resolve())
    assert seen == [("start", "deploy:k8s", root), ("start", "kubectl apply", root),
                    ("end", "kubectl apply", root), ("end", "deploy:k8s", root),
                    ("start", "outside", None), ("end", "outside", None)]
    from otel_runs import _open_runs as _run_processor
    # nothing kept once the run and its spans ended
    assert run.run_id not in _run_processor._by_run_id
    assert run.span.get_span_context().span_id not in _run_processor._by_span_id
    assert child.get_span_context().span_id not in _run_processor._child_spans


def _finished_run_spans(collector):  # noqa: ANN001, ANN202
    return collector.run_spans


@pytest.fixture
def collector(collector):  # noqa: ANN001, ANN201
    """The conftest collector, also keeping the raw run spans (seen by a plain
    SpanProcessor on the same provider)."""
    from opentelemetry.sdk.trace import SpanProcessor

    from otel_runs.exporters import is_run_span

    collector.run_spans = []

    class RunSpans(SpanProcessor):
        def on_end(self, span):  # noqa: ANN001, ANN202
            if is_run_span(span):
                collector.run_spans.append(span)

    otel_runs.configure(processors=[RunSpans()])
    return collector


def test_nested_runs_get_parent_run_id_and_one_trace(collector) -> None:  # noqa: ANN001
    with tracked_run(None, "deploy", "deploy:k8s") as outer:
        with tracked_run(None, "plan", "plan:helm_template") as inner:
            pass
        with tracked_run(None, "deploy", "deploy:helm_upgrade") as sibling:
            pass
    o, i, s = (collector.by_id(r.run_id) for r in (outer, inner, sibling))
    assert o.parent_run_id is None
    assert i.parent_run_id == o.run_id and s.parent_run_id == o.run_id
    assert o.trace_id == i.trace_id == s.trace_id


def test_one_tracked_run_object_entered_twice_nested_ends_both_runs(collector) -> None:  # noqa: ANN001
    again = tracked_run(None, "test", "test:unit")
    with again as outer:
        with again as inner:
            pass
    assert outer.run_id != inner.run_id
    assert {r.run_id for r in collector.ended} == {outer.run_id, inner.run_id}
    assert collector.by_id(inner.run_id).parent_run_id == outer.run_id
    assert current_run() is None


def test_spans_opened_inside_a_run_carry_its_id(collector) -> None:  # noqa: ANN001
    tracer = trace.get_tracer("some.instrumentation")
    with tracked_run(None, "build", "build:docker") as run:
        with tracer.start_as_current_span("docker build"):
            with tracer.start_as_current_span("layer"):
                pass
    with tracer.start_as_current_span("outside"):
        pass
    children = [(rid, s.name) for rid, s in collector.child_spans]
    assert (run.run_id, "docker build") in children
    assert (run.run_id, "layer") in children
    assert all(name != "outside" for _, name in children)


def test_async_with(collector) -> None:  # noqa: ANN001
    async def main() -> str:
        async with tracked_run(None, "test", "test:run", summary="async") as run:
            await asyncio.sleep(0)
            async with tracked_run(None, "test", "test:coverage") as inner:
                await asyncio.sleep(0)
            assert collector.by_id(inner.run_id).parent_run_id == run.run_id
        return run.run_id

    run_id = asyncio.run(main())
    assert collector.by_id(run_id).status == "ok"


def test_async_task_cancellation_is_cancelled(collector) -> None:  # noqa: ANN001
    started = []

    async def work() -> None:
        async with tracked_run(None, "test", "test:run") as run:
            started.append(run.run_id)
            await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(work())
        while not started:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert collector.by_id(started[0]).status == "cancelled"


def test_concurrent_async_runs_do_not_mix_contexts(collector) -> None:  # noqa: ANN001
    async def one(i: int) -> tuple[str, str | None]:
        async with tracked_run(None, "test", "test:run", i=i) as run:
            await asyncio.sleep(0.001 * (i % 3))
            async with tracked_run(None, "test", "test:coverage") as inner:
                await asyncio.sleep(0)
            return run.run_id, collector.by_id(inner.run_id).parent_run_id

    async def main() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    for outer_id, parent in asyncio.run(main()):
        assert parent == outer_id


def test_inside_a_flask_request_the_run_is_a_child_of_the_request_span(collector, tmp_path) -> None:  # noqa: ANN001
    from flask import Flask

    from otel_runs.flask import RunTracking

    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(tmp_path)
    RunTracking(app, ledger=False)
    seen = {}

    @app.post("/do")
    def do() -> str:
        seen["request_span"] = trace.get_current_span().get_span_context()
        with tracked_run(None, "deploy", "deploy:k8s") as run:
            seen["run_id"] = run.run_id
        return "ok"

    assert app.test_client().post("/do").status_code == 200
    span = next(s for s in collector.run_spans if s.attributes["run.id"] == seen["run_id"])
    assert span.parent is not None
    assert span.parent.span_id == seen["request_span"].span_id
    assert span.context.trace_id == seen["request_span"].trace_id


def test_a_run_span_ended_directly_still_reaches_the_processors(collector) -> None:  # noqa: ANN001
    """Ending ``run.span`` by hand bypasses RunScope: processors get the Run read from
    the span, once (the block's own end is then a no-op for them)."""
    with tracked_run(None, "deploy", "deploy:k8s", summary="by hand") as run:
        run.span.set_attribute("run.status", "cancelled")
        run.span.end()
    ended = [r for r in collector.ended if r.run_id == run.run_id]
    assert len(ended) == 1
    assert (ended[0].status, ended[0].summary, ended[0].type) == ("cancelled", "by hand", "deploy")


def test_a_runs_context_is_what_the_public_api_builds() -> None:
    """The run's context is built as one dict; it must equal what OpenTelemetry's
    own ``set_span_in_context`` + ``set_value`` + ``set_baggage`` make, other
    baggage (from another service) kept."""
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    from otel_runs._context import LOCAL_RUN_KEY, parent_run_id, run_context

    span = NonRecordingSpan(SpanContext(1, 2, is_remote=False))
    parents = [otel_context.Context(),
               baggage.set_baggage("tenant", "acme", otel_context.Context()),
               otel_context.set_value("other", 1, baggage.set_baggage(
                   "otel_runs.run_id", "20261127T101500123Z-3fa9c2d1e5", otel_context.Context()))]
    for parent in parents:
        expected = baggage.set_baggage("otel_runs.run_id", "20261127T101500123Z-0000000001",
                                       otel_context.set_value(
                                           LOCAL_RUN_KEY, "20261127T101500123Z-0000000001",
                                           trace.set_span_in_context(span, parent)))
        got = run_context("20261127T101500123Z-0000000001", span, parent)
        assert got == expected
        assert trace.get_current_span(got) is span
        assert dict(baggage.get_all(got)) == dict(baggage.get_all(expected))
        assert parent_run_id(got) == "20261127T101500123Z-0000000001"
    assert parent_run_id(parents[0]) is None and parent_run_id(parents[1]) is None
    assert parent_run_id(parents[2]) == "20261127T101500123Z-3fa9c2d1e5"  # from another service
    bad = baggage.set_baggage("otel_runs.run_id", "../../etc", otel_context.Context())
    assert parent_run_id(bad) is None
