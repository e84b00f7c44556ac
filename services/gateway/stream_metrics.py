"""``/websocket-metrics``: this gateway's media-stream metrics in Prometheus text format.

The operator view of the original VoiceAgent: how many Twilio media WebSockets are open, the
audio frames they carried (in from callers, out to them, dropped and why) and the latency
(caller's end of speech to the agent's first audio, ASR claim) of this process, taken from the
same metrics ``/metrics`` serves (``shared/metrics.py``) and limited to the gateway's series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVICE = "gateway"
# Families (prometheus_client names: no ``_total``) that describe the media streams.
FAMILIES = ("voice_frames", "voice_frames_dropped", "voice_stage_seconds", "voice_bad_messages")


class _StreamView:
    """A collector: live stream gauges plus the gateway's frame and latency series."""

    def __init__(self, *, streams: Callable[[], int], calls: Callable[[], int]) -> None:
        self._streams = streams
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "voice_websocket_streams",
            "Twilio media WebSockets open on this gateway",
            value=self._streams(),
        )
        yield GaugeMetricFamily(
            "voice_websocket_calls", "Calls this gateway holds", value=self._calls()
        )
        for family in REGISTRY.collect():
            if family.name not in FAMILIES:
                continue
            samples = [s for s in family.samples if s.labels.get("service") == SERVICE]
            if samples:
                view = Metric(family.name, family.documentation, family.type, family.unit)
                view.samples = samples
                yield view


def render(*, streams: Callable[[], int], calls: Callable[[], int]) -> bytes:
    """The exposition text (``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StreamView(streams=streams, calls=calls))
    return generate_latest(registry)
