"""What a call cost: usage reports (:mod:`shared.usage`) priced by the price table.

The table is ``shared/prices.toml`` (``PRICES_FILE`` overrides it): per-unit prices per
``stage.provider`` or ``stage."provider:model"``. The gateway prices a call when it ends and
publishes ``call.cost`` on the call's events (:class:`CallCost`, a stable schema: the console
and ``voiceagent calls`` read it); ``voice_spend_total`` counts spend by stage and provider.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.usage import STAGES, Usage

DEFAULT_PRICES = Path(__file__).with_name("prices.toml")
COST_EVENT = "call.cost"
COST_SCHEMA = 1


class PriceTable:
    """Per-unit prices, looked up by stage, provider and model."""

    def __init__(self, *, table: dict[str, Any]) -> None:
        self.date = str(table.get("date", ""))
        self.currency = str(table.get("currency", "USD"))
        self._table = table

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read a TOML price table (the bundled defaults without ``path``); ValueError if bad."""
        p = path or DEFAULT_PRICES
        try:
            table = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"price table {p}: {e}") from e
        for stage in STAGES:
            for key, prices in (table.get(stage) or {}).items():
                if not isinstance(prices, dict) or not all(
                    isinstance(v, int | float) and v >= 0 for v in prices.values()
                ):
                    raise ValueError(f"price table {p}: [{stage}.{key}] needs numbers >= 0")
        return cls(table=table)

    def prices(self, stage: str, provider: str, model: str = "") -> dict[str, float]:
        """The unit prices for one provider (and model); empty when not listed (costs 0)."""
        section = self._table.get(stage) or {}
        found = (model and section.get(f"{provider}:{model}")) or section.get(provider) or {}
        return {k: float(v) for k, v in found.items()}

    def cost(self, usage: Usage) -> float:
        """The money one usage report cost (unrounded)."""
        p = self.prices(usage.stage, usage.provider, usage.model)
        total = p.get("per_cpu_second", 0.0) * usage.cpu_s
        if usage.stage == "asr":
            total += p.get("per_audio_minute", 0.0) * usage.audio_s / 60.0
        elif usage.stage == "llm":
            total += p.get("per_1m_prompt_tokens", 0.0) * usage.prompt_tokens / 1e6
            total += p.get("per_1m_completion_tokens", 0.0) * usage.completion_tokens / 1e6
        elif usage.stage == "tts":
            total += p.get("per_1k_chars", 0.0) * usage.chars / 1000.0
        elif usage.stage == "twilio":
            minutes = math.ceil(usage.call_s / 60.0) if usage.call_s > 0 else 0
            rate = p.get(f"per_minute_{usage.direction or 'inbound'}", 0.0)
            total += rate * minutes
        return total


@lru_cache(maxsize=4)
def price_table(path: Path | None = None) -> PriceTable:
    """The price table at ``path`` (``PRICES_FILE``), read once per process."""
    return PriceTable.load(path)


class CallCost(BaseModel):
    """The ``call.cost`` event's data: cost per stage and the quantities behind it.

    Flat fields (events carry scalars only): ``cost_<stage>`` for asr, llm, tts, twilio,
    ``cost_total``, ``currency``, ``prices_date`` (``YYYY-MM`` of the price table), and the
    summed quantities.
    """

    model_config = ConfigDict(frozen=True)

    schema_v: int = COST_SCHEMA
    currency: str = "USD"
    prices_date: str = ""
    cost_total: float = 0.0
    cost_asr: float = 0.0
    cost_llm: float = 0.0
    cost_tts: float = 0.0
    cost_twilio: float = 0.0
    asr_audio_s: float = 0.0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    tts_chars: int = 0
    twilio_s: float = 0.0
    cpu_s: float = 0.0
    reports: int = Field(default=0, description="usage reports priced")


def price_call(
    usages: Iterable[Usage], table: PriceTable
) -> tuple[CallCost, dict[tuple[str, str], float]]:
    """The call's :class:`CallCost` and the spend per (stage, provider)."""
    by_stage = dict.fromkeys(STAGES, 0.0)
    by_provider: dict[tuple[str, str], float] = {}
    q: dict[str, float] = dict.fromkeys(
        ("audio_s", "prompt", "completion", "chars", "call_s", "cpu_s", "n"), 0.0
    )
    for u in usages:
        c = table.cost(u)
        by_stage[u.stage] += c
        key = (u.stage, u.provider)
        by_provider[key] = by_provider.get(key, 0.0) + c
        q["audio_s"] += u.audio_s
        q["prompt"] += u.prompt_tokens
        q["completion"] += u.completion_tokens
        q["chars"] += u.chars
        q["call_s"] += u.call_s
        q["cpu_s"] += u.cpu_s
        q["n"] += 1
    cost = CallCost(
        currency=table.currency,
        # Month only: a full date on the bus would be taken for PHI (a birth date) and redacted.
        prices_date=table.date[:7],
        cost_total=round(sum(by_stage.values()), 6),
        cost_asr=round(by_stage["asr"], 6),
        cost_llm=round(by_stage["llm"], 6),
        cost_tts=round(by_stage["tts"], 6),
        cost_twilio=round(by_stage["twilio"], 6),
        asr_audio_s=round(q["audio_s"], 3),
        llm_prompt_tokens=int(q["prompt"]),
        llm_completion_tokens=int(q["completion"]),
        tts_chars=int(q["chars"]),
        twilio_s=round(q["call_s"], 3),
        cpu_s=round(q["cpu_s"], 3),
        reports=int(q["n"]),
    )
    return cost, by_provider
