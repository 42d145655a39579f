"""``@run_tracked``: one line that makes a Flask view or a function a run."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from flask import Flask, after_this_request
from flask.globals import _cv_app, _cv_request

from ._taxonomy import validate_run_type
from ._tracking import RunScope

__all__ = ["run_tracked", "RUN_ID_HEADER", "tracked_by"]

F = TypeVar("F", bound=Callable[..., Any])

#: Response header carrying the run's id on every response of a tracked view.
RUN_ID_HEADER = "X-Run-Id"
_MARK = "__otel_runs__"


def tracked_by(fn: Callable[..., Any]) -> tuple[str, str] | None:
    """``(type, subtype)`` if ``fn`` (or anything it wraps) is ``@run_tracked``."""
    seen = 0
    while fn is not None and seen < 50:
        mark = getattr(fn, _MARK, None)
        if mark is not None:
            return mark  # type: ignore[no-any-return]
        fn = getattr(fn, "__wrapped__", None)  # type: ignore[assignment]
        seen += 1
    return None


def run_tracked(
    run_type: str,
    subtype: str,
    *,
    summary_key: str = "summary",
    ok_key: str = "ok",
    summary_fn: Callable[[dict[str, Any]], str] | None = None,
    summary: str = "",
) -> Callable[[F], F]:
    """Track each call of a Flask view or a plain function (sync or async) as a run.

    Apply below ``@app.route``. A bad type or subtype raises ``RunTypeError``
    here, at import time. For views, the run is ``failed`` when the JSON body's
    ``ok_key`` is falsy or the HTTP status is >= 400; the summary comes from
    ``summary_fn(body)`` or ``body[summary_key]`` (else ``summary``); ``run_id``
    is added to a JSON object body and ``X-Run-Id`` to every response; nothing
    else in the response changes. A streamed response's run ends with the
    stream (``cancelled`` if the client goes away). For plain functions the
    status comes from a returned dict's ``ok_key`` when present.
    """
    validate_run_type(run_type, subtype)
    rules = _Rules(run_type, subtype, summary_key, ok_key, summary_fn, summary)

    def decorate(fn: F) -> F:
        if tracked_by(fn) is not None:
            return fn  # already a run: never track twice
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                app = _dispatching_app(async_wrapper)
                if app is not None:
                    scope = rules.start_view_run(app)
                    with scope.activated():
                        try:
                            response = app.make_response(await fn(*args, **kwargs))
                        except BaseException as exc:
                            rules.header_on_error_response(scope)
                            scope.finish(exc)
                            raise
                    return rules.finish_view_run(app, scope, response)
                scope = rules.start_run()
                with scope.activated():
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        scope.finish(exc)
                        raise
                rules.finish_call_run(scope, result)
                return result

            setattr(async_wrapper, _MARK, (run_type, subtype))
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            app = _dispatching_app(wrapper)
            if app is not None:
                scope = rules.start_view_run(app)
                tokens = scope.activate()  # no context manager: this is the hot path
                try:
                    response = app.make_response(fn(*args, **kwargs))
                except BaseException as exc:
                    rules.header_on_error_response(scope)
                    scope.finish(exc)
                    raise
                finally:
                    scope.deactivate(tokens)
                return rules.finish_view_run(app, scope, response)
            scope = rules.start_run()
            tokens = scope.activate()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                scope.finish(exc)
                raise
            finally:
                scope.deactivate(tokens)
            rules.finish_call_run(scope, result)
            return result

        setattr(wrapper, _MARK, (run_type, subtype))
        return wrapper  # type: ignore[return-value]

    return decorate


def _dispatching_app(wrapper: Callable[..., Any]) -> Flask | None:
    """The app when Flask is dispatching the current request to ``wrapper``
    (possibly under other decorators); None for a plain call, even inside a request."""
    # The request context itself, not the ``request``/``current_app`` proxies: this
    # runs on every call of a tracked function.
    ctx = _cv_request.get(None)
    if ctx is None:
        return None
    rule = ctx.request.url_rule
    if rule is None:
        return None
    fn: Any = ctx.app.view_functions.get(rule.endpoint)
    for _ in range(50):
        if fn is None:
            return None
        if fn is wrapper:
            return ctx.app
        fn = getattr(fn, "__wrapped__", None)
    return None


class _Rules:
    """How one decorated callable turns its outcome into a run's status and summary."""

    def __init__(self, run_type: str, subtype: str, summary_key: str, ok_key: str,
                 summary_fn: Callable[[dict[str, Any]], str] | None, summary: str) -> None:
        self.run_type, self.subtype = run_type, subtype
        self.summary_key, self.ok_key, self.summary_fn = summary_key, ok_key, summary_fn
        self.summary = summary

    def _root(self) -> Any:
        ctx = _cv_app.get(None)
        return None if ctx is None else ctx.app.config.get("PROJECT_ROOT")

    def start_run(self) -> RunScope:
        return RunScope(self._root(), self.run_type, self.subtype, self.summary, validated=True)

    def start_view_run(self, app: Flask) -> RunScope:
        return RunScope(app.config.get("PROJECT_ROOT"), self.run_type, self.subtype,
                        self.summary, validated=True)

    @staticmethod
    def header_on_error_response(scope: RunScope) -> None:
        """The view raised: put ``X-Run-Id`` on the response Flask's error handling
        builds (``after_this_request`` runs in ``process_response`` for it too)."""
        run_id = scope.run_id

        def add_run_id_header(response: Any) -> Any:
            response.headers[RUN_ID_HEADER] = run_id
            return response

        after_this_request(add_run_id_header)

    def outcome(self, body: dict[str, Any]) -> tuple[str | None, str | None]:
        status = None
        if self.ok_key in body and not body[self.ok_key]:
            status = "failed"
        if self.summary_fn is not None:
            summary = self.summary_fn(body)
        else:
            value = body.get(self.summary_key)
            summary = value if isinstance(value, str) else None
        return status, summary

    def finish_call_run(self, scope: RunScope, result: Any) -> None:
        status, summary = (None, None)
        if isinstance(result, dict):
            try:
                status, summary = self.outcome(result)
            except Exception as exc:  # a broken summary_fn must not break the call
                scope.handle.add_event("otel_runs.summary_error", error=repr(exc))
        scope.finish(None, status or "ok", summary)

    def finish_view_run(self, app: Flask, scope: RunScope, response: Any) -> Any:
        """Derive the run's outcome from the view's response, add ``run_id``, end
        the run (or hand it to the stream)."""
        response.headers[RUN_ID_HEADER] = scope.run_id
        http_failed = response.status_code >= 400
        if response.is_streamed:
            response.response = _RunStream(scope, response.response, http_failed)
            return response
        status: str | None = "failed" if http_failed else None
        summary: str | None = None
        if response.is_json:
            chunks = response.response
            # What jsonify and a returned dict make: one bytes chunk (get_data() joins a copy).
            if type(chunks) is list and len(chunks) == 1 and type(chunks[0]) is bytes:
                raw = chunks[0]
            else:
                raw = response.get_data()
            body = _json_object(app, raw)
            if body is not None:
                try:
                    body_status, summary = self.outcome(body)
                except Exception as exc:
                    scope.handle.add_event("otel_runs.summary_error", error=repr(exc))
                    body_status = None
                status = status or body_status
                if "run_id" not in body:
                    response.set_data(_with_run_id(raw, scope.run_id))
        scope.finish(None, status or "ok", summary)
        return response


#: The standard library's C scanner: a view's JSON body is parsed with it directly
#: (``json.loads`` adds an encoding sniff and two regex passes per call).
_scan_json = json.JSONDecoder().scan_once


def _json_object(app: Flask, raw: bytes) -> dict[str, Any] | None:
    """The body if it is a JSON object, else None (``get_json(silent=True)`` without
    its proxy lookups). A UTF-8 object, what ``jsonify`` writes, takes the C scanner
    directly; anything else goes through the app's JSON provider."""
    value: Any = None
    if raw[:1] == b"{":
        try:
            text = raw.decode()
            value, end = _scan_json(text, 0)
        except (ValueError, StopIteration):
            end, text = -1, ""
        if end == len(text) or (end > 0 and not text[end:].strip()):
            return value if isinstance(value, dict) else None
    try:
        value = app.json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_NOT_COMPACT = frozenset((b"", b"{", b" ", b"\n", b"\t", b"\r"))


def _with_run_id(raw: bytes, run_id: str) -> bytes:
    """``raw`` (a JSON object) with a ``"run_id"`` member appended before the
    closing brace; every other byte is unchanged (pretty-printed bodies keep
    their indentation)."""
    value = b'"' + run_id.encode() + b'"'  # a run id is plain ASCII: nothing to escape
    if raw[-2:] == b"}\n" and raw[-3:-2] not in _NOT_COMPACT \
            and b'": ' not in raw and b'", "' not in raw:
        return raw[:-2] + b',"run_id":' + value + b"}\n"  # jsonify's compact form: the rest, faster
    end = raw.rindex(b"}")
    head = raw[:end]
    stripped = head.rstrip()
    tail = head[len(stripped):] + raw[end:]
    if stripped.endswith(b"{"):  # empty object
        return stripped + b'"run_id":' + value + tail
    if tail.startswith(b"\n"):  # pretty-printed: reuse the last member's indentation
        line = stripped[stripped.rfind(b"\n") + 1:]
        indent = line[: len(line) - len(line.lstrip())]
        sep = b": " if b'": ' in raw else b":"
        return stripped + b",\n" + indent + b'"run_id"' + sep + value + tail
    sep = b": " if b'", "' in raw or b'": ' in raw else b":"
    comma = b", " if sep == b": " else b","
    return stripped + comma + b'"run_id"' + sep + value + tail


class _RunStream:
    """Wraps a streamed body: the run ends when it is exhausted (``ok``/``failed``),
    raises (``failed``) or is closed early, e.g. the client went away (``cancelled``)."""

    def __init__(self, scope: RunScope, body: Iterable[Any], http_failed: bool) -> None:
        self._scope = scope
        self._body = body
        self._it: Iterator[Any] | None = None
        self._http_failed = http_failed

    def __iter__(self) -> _RunStream:
        return self

    def __next__(self) -> Any:
        if self._scope.finished:
            raise StopIteration
        with self._scope.activated():
            try:
                if self._it is None:
                    self._it = iter(self._body)
                return next(self._it)
            except StopIteration:
                self._scope.finish(None, "failed" if self._http_failed else "ok")
                raise
            except BaseException as exc:
                self._scope.finish(exc)
                raise

    def close(self) -> None:
        with self._scope.activated():
            try:
                close = getattr(self._body, "close", None)
                if close is not None:
                    close()
            finally:
                if not self._scope.finished:
                    self._scope.finish(GeneratorExit())
