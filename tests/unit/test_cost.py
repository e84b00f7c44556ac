"""The price table turns usage into money (shared.cost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cost import PriceTable, price_call
from shared.usage import Usage


def test_the_bundled_table_loads_with_its_date() -> None:
    table = PriceTable.load()
    assert table.currency == "USD" and len(table.date) == 10
    assert table.prices("llm", "openai", "gpt-4o")["per_1m_prompt_tokens"] == 2.50
    # A model not listed takes the provider's prices; an unknown provider costs nothing.
    assert table.prices("llm", "openai", "gpt-x") == table.prices("llm", "openai")
    assert table.cost(Usage(stage="asr", provider="nobody", audio_s=600)) == 0.0


def test_each_stage_is_priced_in_its_own_unit(tmp_path: Path) -> None:
    p = tmp_path / "prices.toml"
    p.write_text(
        'date = "2026-01-02"\n[asr.deepgram]\nper_audio_minute = 0.01\n'
        '[llm."openai:m"]\nper_1m_prompt_tokens = 1.0\nper_1m_completion_tokens = 4.0\n'
        "[tts.piper]\nper_cpu_second = 0.5\n"
        "[twilio.twilio]\nper_minute_inbound = 0.01\nper_minute_outbound = 0.02\n"
    )
    t = PriceTable.load(p)
    usages = [
        Usage(stage="asr", provider="deepgram", audio_s=90),  # 1.5 min
        Usage(stage="llm", provider="openai", model="m", prompt_tokens=10**6,
              completion_tokens=5 * 10**5),
        Usage(stage="tts", provider="piper", chars=40, cpu_s=0.2),
        Usage(stage="twilio", provider="twilio", call_s=61, direction="outbound"),  # 2 minutes
    ]  # fmt: skip
    cost, spend = price_call(usages, t)
    assert cost.cost_asr == pytest.approx(0.015)
    assert cost.cost_llm == pytest.approx(3.0)
    assert cost.cost_tts == pytest.approx(0.1)
    assert cost.cost_twilio == pytest.approx(0.04)
    assert cost.cost_total == pytest.approx(3.155)
    assert spend[("llm", "openai")] == pytest.approx(3.0)
    assert cost.prices_date == "2026-01" and cost.reports == 4


def test_a_bad_price_table_is_refused_clearly(tmp_path: Path) -> None:
    p = tmp_path / "prices.toml"
    p.write_text('[llm.openai]\nper_1m_prompt_tokens = "cheap"\n')
    with pytest.raises(ValueError, match=r"\[llm.openai\]"):
        PriceTable.load(p)
    with pytest.raises(ValueError, match="price table"):
        PriceTable.load(tmp_path / "missing.toml")
