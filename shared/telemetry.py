"""OpenTelemetry tracing across the bus: off by default, redacted, a no-op without the SDK.

One trace per call: the gateway opens a ``call`` span; its W3C ``traceparent`` rides in the
NATS headers (:data:`shared.headers.TRACEPARENT`) of what each stage publishes, so a turn shows
as ``call`` -> ``asr.utterance`` -> ``agent.turn`` -> ``tts.segment`` -> ``gateway.playback``
across four processes. Export is configured by the standard ``OTEL_*`` environment variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_EXPORTER``, ``OTEL_SERVICE_NAME``, ...); with
none of them set, or without the ``otel`` extra installed, nothing is recorded and every helper
here costs a few attribute lookups.

Span attributes are ids and timings only (:func:`safe_attributes`): never transcript or reply
text, never a phone number; the call SID appears as its log tag (a hash).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shared import headers as H
from shared.logging import kv
from shared.redact import sid_tag

log = logging.getLogger(__name__)

try:  # the API is small and usually present; the SDK (exporting) is the ``otel`` extra
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised only without opentelemetry-api
    _trace = None  # type: ignore[assignment]
    _PROPAGATOR = None

TRACER_NAME = "voiceagent"
AttrValue = str | int | float | bool
# String attributes allowed through (closed vocabularies, never free text).
_STR_KEYS = frozenset({"service", "provider", "outcome", "reason", "stage", "worker", "kind"})


_provider: Any = None  # a tracer provider of our own (tests); None: the global one


def use_provider(provider: Any) -> None:
    """Record spans with ``provider`` instead of the global one (None: back to global).

    For tests (an in-memory exporter) and embedding; :func:`setup_tracing` sets the global.
    """
    global _provider
    _provider = provider


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """The environment asks for an exporter (standard OTEL variables; default: off)."""
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = e.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(exporter or endpoint)


def setup_tracing(service: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Install an exporting tracer provider if the environment asks for one (True if so).

    ``OTEL_TRACES_EXPORTER``: ``otlp`` (default; OTLP over HTTP/protobuf, endpoint and headers
    from ``OTEL_EXPORTER_OTLP_*``) or ``console``. The service name defaults to ``service``.
    """
    if not tracing_requested(env) or _trace is None:
        return False
    e = os.environ if env is None else env
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("OTEL_* is set but opentelemetry-sdk is not installed: tracing stays off")
        return False
    kind = (e.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    exporter: SpanExporter
    if kind == "console":
        exporter = ConsoleSpanExporter()
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP exporter not installed (pip install '.[otel]'): tracing stays off")
            return False
        exporter = OTLPSpanExporter()
    else:
        log.warning("unsupported OTEL_TRACES_EXPORTER: tracing stays off")
        return False
    name = e.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _trace.set_tracer_provider(provider)
    log.info("tracing on", **kv(exporter=kind, service=name))
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (on exit; harmless when tracing is off)."""
    if _trace is None:
        return
    shutdown = getattr(_trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception as e:
            log.warning("tracing shutdown failed: %s", type(e).__name__)


def safe_attributes(call_sid: str | None = None, **attrs: Any) -> dict[str, AttrValue]:
    """Span attributes that carry no PHI: numbers, booleans, closed-vocabulary strings.

    Free text is dropped whatever its key; the call SID becomes its hashed log tag.
    """
    out: dict[str, AttrValue] = {}
    if call_sid:
        out["voice.call"] = sid_tag(call_sid)
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float):
            out[f"voice.{key}"] = value
        elif isinstance(value, str) and key in _STR_KEYS and len(value) <= 64:
            out[f"voice.{key}"] = value
    return out


class Span:
    """A started span (or a no-op one): end it, read its ``traceparent`` for headers."""

    __slots__ = ("_span",)

    def __init__(self, *, span: Any = None) -> None:
        self._span = span

    @property
    def recording(self) -> bool:
        """True when this span is exported (tracing on and sampled)."""
        return self._span is not None and bool(self._span.is_recording())

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of this span, or None when tracing is off."""
        if self._span is None or _trace is None:
            return None
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def set(self, **attrs: Any) -> None:
        """Add redacted attributes (see :func:`safe_attributes`)."""
        if self.recording:
            self._span.set_attributes(safe_attributes(**attrs))

    def error(self, kind: str) -> None:
        """Mark the span failed with an error class name (no message: it may hold PHI)."""
        if self.recording and _trace is not None:
            self._span.set_status(_trace.Status(_trace.StatusCode.ERROR, kind[:64]))

    def end(self, end_ns: int | None = None) -> None:
        """End the span (idempotent in the SDK)."""
        if self._span is not None:
            self._span.end(end_time=end_ns)


NO_SPAN = Span()


def start_span(
    name: str,
    *,
    parent: str | None = None,
    call_sid: str | None = None,
    start_ns: int | None = None,
    **attrs: Any,
) -> Span:
    """Start a span as a child of the ``parent`` traceparent (a new trace if None/invalid).

    Returns :data:`NO_SPAN` when tracing is off, so callers never branch on it.
    """
    if _trace is None:
        return NO_SPAN
    tracer = (_provider or _trace.get_tracer_provider()).get_tracer(TRACER_NAME)
    ctx = None
    if parent:
        ctx = _PROPAGATOR.extract({H.TRACEPARENT: parent})
    span = tracer.start_span(
        name,
        context=ctx,
        start_time=start_ns,
        attributes=safe_attributes(call_sid, **attrs),
    )
    if not span.is_recording():
        # Not exported: keep the parent's context flowing (a no-op provider drops it).
        return Span(span=span) if span.get_span_context().is_valid else NO_SPAN
    return Span(span=span)


@contextmanager
def span(
    name: str, *, parent: str | None = None, call_sid: str | None = None, **attrs: Any
) -> Iterator[Span]:
    """``with span(...) as s:``: a span around a block; an exception marks it failed."""
    s = start_span(name, parent=parent, call_sid=call_sid, **attrs)
    try:
        yield s
    except BaseException as e:
        s.error(type(e).__name__)
        raise
    finally:
        s.end()


def traceparent_of(headers: Mapping[str, str] | None) -> str | None:
    """The ``traceparent`` header of a NATS message, if any."""
    if not headers:
        return None
    return headers.get(H.TRACEPARENT)


def with_trace(headers: dict[str, str] | None, parent: Span | str | None) -> dict[str, str] | None:
    """``headers`` plus ``traceparent`` of ``parent`` (unchanged when tracing is off)."""
    tp = parent.traceparent if isinstance(parent, Span) else parent
    if not tp:
        return headers
    out = dict(headers) if headers else {}
    out[H.TRACEPARENT] = tp
    return out
