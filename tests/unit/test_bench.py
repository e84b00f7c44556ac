"""The bench's statistics, target checks and table (no timing: pure functions)."""

from __future__ import annotations

import os

import pytest

from benchmarks.capacity import RawPublisher, metric, parse_metrics
from benchmarks.load import (
    COLUMNS,
    BenchOptions,
    CallStats,
    Row,
    SoakWave,
    Split,
    capacity_line,
    cpu_percent,
    format_soak,
    format_table,
    missed_targets,
    pacing_gaps_ms,
    percentile,
    proc_ticks,
    service_of,
    split_turns,
    steps_for,
)
from services.gateway.audio_batch import AudioBatcher
from shared.messages import event


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    xs = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 100.0
    assert percentile(list(reversed(xs)), 99) == pytest.approx(99.01)


def test_pacing_gaps_ignore_the_lead_burst_and_pauses() -> None:
    lead = [0.0] * 10  # ten frames sent at once: the playback lead
    paced = [0.02 * k for k in range(1, 6)]
    late = [paced[-1] + 0.05]  # one frame 30 ms late
    after_pause = [5.0, 5.0, 5.02]  # a new segment seconds later starts a new run
    gaps = pacing_gaps_ms(lead + paced + late + after_pause, lead_frames=10)
    assert len(gaps) == 5  # first paced gap is the 10th of its run; pause and new run skipped
    assert max(gaps) == pytest.approx(30.0)
    assert sorted(gaps)[:4] == pytest.approx([0.0] * 4, abs=1e-6)


def test_cpu_from_proc_of_this_process() -> None:
    t = proc_ticks(os.getpid())
    assert t is not None and t > 0
    assert proc_ticks(2**22 + 12345) is None
    assert cpu_percent(50, 1.0, hz=100) == 50.0
    assert service_of("asr-2") == "asr" and service_of("gateway") == "gateway"


def _row(**kw: object) -> Row:
    base: dict[str, object] = dict(
        mode="instant",
        calls=10,
        in_bus_p50=1.0,
        in_bus_p99=3.0,
        jitter_p99=2.0,
        v2v_p50=700.0,
        v2v_p95=720.0,
        overhead_p50=9.0,
    )
    base.update(kw)
    return Row(**base)  # type: ignore[arg-type]


def test_targets_name_what_was_missed() -> None:
    assert missed_targets(_row()) == []
    missed = missed_targets(_row(frames_lost=3, calls_failed=1, overhead_p50=22.0))
    assert any("3 frames lost" in m for m in missed)
    assert any("1 calls failed" in m for m in missed)
    assert any("overhead" in m for m in missed)
    # Embedded mode has no overhead target but must not saturate against N=1.
    emb = _row(mode="embedded", overhead_p50=300.0, v2v_p95=5000.0)
    assert missed_targets(emb, baseline_v2v_p95=1000.0) == [
        "voice-to-voice p95 5000 ms > 2x N=1 (1000 ms)"
    ]


def test_capacity_line_reports_where_targets_stop_being_met() -> None:
    rows = [_row(calls=1), _row(calls=10), _row(calls=50, frames_lost=12)]
    line = capacity_line(rows)
    assert "up to N=10" in line and "N=50" in line and "12 frames lost" in line
    assert "N=10 (the largest N tried)" in capacity_line(rows[:2])


def test_table_has_every_column_and_one_line_per_row() -> None:
    rows = [_row(calls=1, cpu={"gateway": 12.3, "asr": 4.0}), _row(calls=10)]
    text = format_table(rows).splitlines()
    assert len(text) == 3
    header = text[0].split()
    for _, title in COLUMNS:
        assert title.split()[0] in header
    first = text[1].split()
    assert first[0] == "1" and first[1] == "12" and "-" in first  # missing CPU shows '-'


def test_split_turns_attributes_the_stages_and_the_rest_to_us() -> None:
    st = CallStats(call_sid="CA1", speech_end_at=[100.0, 110.0], reply_at=[100.9, 110.8])
    ev = event
    events = [
        ev(call_sid="CA1", service="agent", name="agent.first_sentence", turn=0, ms=5.0),
        ev(call_sid="CA1", service="asr", name="asr.final", endpointing_ms=600.0, asr_ms=50.0),
        ev(call_sid="CA1", service="asr", name="asr.final", empty=True, endpointing_ms=9.0),
        ev(
            call_sid="CA1",
            service="agent",
            name="agent.first_sentence",
            turn=1,
            ms=100.0,
            since_speech_end_ms=760.0,
        ),
        ev(
            call_sid="CA1",
            service="tts",
            name="tts.first_audio",
            turn=1,
            ms=130.0,
            since_speech_end_ms=890.0,
        ),
        ev(
            call_sid="CA1",
            service="tts",
            name="tts.first_audio",
            turn=1,
            ms=999.0,
            since_speech_end_ms=2000.0,
        ),  # the turn's second segment: not its first audio
        ev(call_sid="CA1", service="asr", name="asr.final", endpointing_ms=500.0, asr_ms=40.0),
        ev(
            call_sid="CA1",
            service="agent",
            name="agent.first_sentence",
            turn=2,
            ms=90.0,
            since_speech_end_ms=1.0,
        ),
        ev(
            call_sid="CA1",
            service="tts",
            name="tts.first_audio",
            turn=2,
            ms=120.0,
            since_speech_end_ms=1.0,
        ),
    ]
    first, second = split_turns(st, events)
    assert (first.endpointing, first.asr, first.agent, first.tts) == (600.0, 50.0, 100.0, 130.0)
    assert first.overhead == pytest.approx(20.0)
    assert second.v2v == pytest.approx(800.0) and second.overhead == pytest.approx(50.0)
    assert split_turns(CallStats(call_sid="CA2"), events) == []
    assert Split(v2v=1.0, endpointing=None, asr=1, agent=1, tts=1).overhead is None


def test_steps_stop_at_the_cap() -> None:
    assert steps_for(BenchOptions(max_calls=50)) == [1, 10, 50]
    assert steps_for(BenchOptions(max_calls=2, steps=(1, 10))) == [1, 2]


def test_metrics_page_parsing_sums_labels() -> None:
    page = (
        "# HELP voice_frames_total Audio frames\n"
        'voice_frames_total{service="asr",direction="in"} 1500.0\n'
        'voice_frames_total{service="gateway",direction="in"} 7.0\n'
        'voice_frames_dropped_total{service="asr",reason="queue_full"} 2.0\n'
    )
    samples = parse_metrics(page)
    assert metric(samples, "voice_frames_total", service="asr", direction="in") == 1500.0
    assert metric(samples, "voice_frames_total", direction="in") == 1507.0
    assert metric(samples, "voice_frames_dropped_total", reason="slow_consumer") == 0.0


def test_raw_publisher_frames_are_valid_hpub() -> None:
    raw = RawPublisher.frame("voice.CA1.audio.in.asr-1", 3, b"\x01" * 160)
    head, _, rest = raw.partition(b"\r\n")
    verb, subject, hdr_len, total = head.split()
    assert verb == b"HPUB" and subject == b"voice.CA1.audio.in.asr-1"
    assert len(rest) == int(total) + 2 and rest.endswith(b"\r\n")
    hdrs = rest[: int(hdr_len)]
    assert hdrs.startswith(b"NATS/1.0\r\n") and b"Va-Seq: 3\r\n" in hdrs and b"Va-Ts: 40" in hdrs


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append((subject, data))


async def test_audio_batcher_keeps_order_and_flushes_on_demand() -> None:
    rec = _Recorder()
    b = AudioBatcher(rec, window_s=60.0)  # type: ignore[arg-type]
    for i in range(5):
        b.add("a" if i % 2 else "b", bytes([i]), {})
    assert rec.sent == []  # waits for the window (or a flush)
    await b.flush()
    assert [d[0] for _, d in rec.sent] == [0, 1, 2, 3, 4]
    small = AudioBatcher(rec, window_s=60.0, max_batch=2)  # type: ignore[arg-type]
    for i in range(3):
        small.add("c", bytes([i]), {})
    await small.flush()
    assert [d[0] for s, d in rec.sent if s == "c"] == [1, 2]  # the oldest went when full


def test_soak_flags_a_process_whose_memory_keeps_growing_over_the_second_half() -> None:
    def wave(n: int, gateway: float, asr1: float, asr2: float) -> SoakWave:
        served = {"asr-1": 5 * n, "asr-2": 3 * n}
        return SoakWave(n, 8, 0, {"gateway": gateway, "asr-1": asr1, "asr-2": asr2}, served)

    # asr-2 warms up late (few calls in wave 1): growth in the first half is not a leak.
    flat = [wave(1, 170, 300, 200), wave(2, 176, 301, 290), wave(3, 174, 302, 296)]
    flat.append(wave(4, 175, 303, 297))
    text = format_soak(flat)
    assert "memory flat over 32 calls" in text and "after wave 2" in text
    assert text.splitlines()[0].endswith("asr-1 calls asr-2 calls")
    assert text.splitlines()[-2].split()[-2:] == ["20", "12"]  # calls served so far per worker
    leaking = [*flat, wave(5, 260, 304, 298), wave(6, 262, 305, 299)]
    text = format_soak(leaking)
    assert "NOT flat over 48 calls" in text and "gateway +88 MiB (174 -> 262)" in text
    assert "asr-1 +" not in text and "asr-2 +" not in text


def test_ab_table_gives_medians_per_variant_and_the_after_before_ratio() -> None:
    from benchmarks.load import ab_table

    def r(label: str, v2v: float, cpu: float, failed: int = 0) -> Row:
        row = _row(calls=10)
        row.label, row.v2v_p50, row.v2v_p95, row.asr_cpu_ms = label, v2v, 2 * v2v, cpu
        row.asr_p50, row.calls_failed = 100.0, failed
        return row

    rows = [r("A", 1000, 300), r("B", 500, 100), r("B", 700, 120), r("A", 1200, 330, failed=1)]
    text = ab_table(rows, before="A", after="B")
    lines = text.splitlines()
    assert lines[2].startswith("| 10 | A | 2 | 1100 | 2200 | 100 | 315 | 19/20 |")
    assert lines[3].startswith("| 10 | B | 2 | 600 | 1200 | 100 | 110 | 20/20 |")
    assert lines[4].startswith("| 10 | ratio after/before | | 0.55 | 0.55 | 1.00 | 0.35 |")


def test_bench_ab_settings_are_parsed_and_bad_ones_refused() -> None:
    import argparse

    from voiceagent.bench_cli import _settings

    assert _settings("ASR_MIN_WINDOW_S=30,ASR_BATCH=1") == {
        "ASR_MIN_WINDOW_S": "30",
        "ASR_BATCH": "1",
    }
    for bad in ("asr_min_window_s=30", "ASR_MIN_WINDOW_S", "=3"):
        with pytest.raises(argparse.ArgumentTypeError):
            _settings(bad)


def test_the_soak_is_off_in_embedded_mode_unless_asked_and_the_flags_apply_to_every_mode() -> None:
    import argparse

    from benchmarks.suite import soak_for
    from voiceagent.bench_cli import add_bench_parser

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())

    defaults = parser.parse_args(["bench"])
    assert soak_for(defaults, "instant") == (5, 20)
    assert soak_for(defaults, "embedded") == (0, 8)  # make bench does not soak whisper
    asked = parser.parse_args(["bench", "--mode", "embedded", "--soak-waves", "6"])
    assert soak_for(asked, "embedded") == (6, 8) and soak_for(asked, "instant") == (6, 20)
    sized = parser.parse_args(["bench", "--soak-waves", "3", "--soak-calls", "4"])
    assert soak_for(sized, "embedded") == (3, 4)
