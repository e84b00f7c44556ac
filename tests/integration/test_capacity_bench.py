"""`voiceagent bench` machinery end to end: the stack, two simulated calls, the cloud fakes.

Asserts the table is complete and sane (no frame lost, no call failed, every column filled),
never timings: the machine is shared.
"""

from __future__ import annotations

from benchmarks.load import COLUMNS, BenchOptions, format_table, run_bench


async def test_bench_two_calls_instant_fakes_fill_every_column() -> None:
    lines: list[str] = []
    opts = BenchOptions(mode="instant", steps=(2,), max_calls=2, asr=1, agent=1, tts=1)
    rows = await run_bench(opts, out=lines.append)
    assert len(rows) == 1
    row = rows[0]
    assert row.calls == 2
    assert row.calls_failed == 0, row.failures
    assert row.frames_lost == 0 and row.frames_sent > 100
    for key, _ in COLUMNS:
        if key.startswith("cpu:"):
            assert key[4:] in row.cpu, f"no CPU figure for {key[4:]}"
        else:
            assert getattr(row, key) is not None, f"column {key} is empty"
    assert 0 < row.in_bus_p50 <= row.in_bus_p99  # type: ignore[operator]
    assert row.v2v_p50 > row.endpointing_p50 > 0  # type: ignore[operator]
    assert row.v2v_p50 <= row.v2v_p95  # type: ignore[operator]
    table = format_table(rows)
    assert "-" not in table.splitlines()[1].split()
    assert any("met every target" in line or "stops meeting" in line for line in lines)
