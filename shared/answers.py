"""What an agent's question asks the caller for (shared by the agent, which announces it, and
the end-of-turn decision, which waits for it): pure text rules, no PHI kept."""

from __future__ import annotations

import re
from typing import Literal

AnswerKind = Literal["date", "time", "phone", "number", "name"]


def expected_answer(question: str | None) -> AnswerKind | None:
    """What the agent's question asks for: "date", "time", "phone" (a number of 10 digits),
    "number", "name", or ``None`` (not a question, or one that asks for none of these)."""
    if not question or (
        "?" not in question
        and not re.search(r"\b(tell me|give me|please (say|spell))\b", question.lower())
    ):
        return None
    q = question.lower()
    if re.search(
        r"\b(date of birth|birthday|birth date|what date|which date|which day|"
        r"what day|when)\b",
        q,
    ):
        return "date"
    if re.search(r"\bwhat time\b|\bwhich time\b|\bwhat hour\b", q):
        return "time"
    if re.search(r"\bphone\b", q):
        return "phone"
    if re.search(r"\b(number|digits|zip|postcode|account|pin|code)\b", q):
        return "number"
    if re.search(r"\b(your name|who am i speaking|who is calling|spell)\b", q):
        return "name"
    return None
