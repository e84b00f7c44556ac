"""The stored form of a call's conversation history in Redis (key layout in ``shared/callstate``).

Written by the agent (:mod:`services.agent.history`), read back by it and by the gateway's
transcript export (:mod:`services.gateway.admin`).

- ``va:hist:<call>``: a list of :class:`HistoryEntry`, each a chat-completions message (role,
  content and whatever else the provider keeps: ``tool_calls``, ``tool_call_id``...) plus
  private ``_``-prefixed fields: ``_turn``, and for a spoken reply ``_seq0`` and ``_segs`` (its
  segments as published, numbered from ``_seq0``).
- ``va:heard:<call>``: a hash turn -> :class:`BargeInCut`, where the caller cut that turn's reply.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PRIVATE_PREFIX = "_"  # fields the agent keeps for itself; never sent to a provider


class HistoryEntry(BaseModel):
    """One stored history entry; fields other than these are kept as they came (``extra``)."""

    # Validated by alias only: a chat field named ``turn`` stays a chat field.
    model_config = ConfigDict(extra="allow", frozen=True)

    role: str
    content: Any = None
    turn: int | None = Field(default=None, alias="_turn")
    seq0: int = Field(default=0, alias="_seq0")
    segs: list[str] | None = Field(default=None, alias="_segs")

    @classmethod
    def user(cls, text: str, *, turn: int) -> HistoryEntry:
        """A caller message (what ASR heard, or a key press) for ``turn``."""
        return cls.model_validate({"role": "user", "content": text, "_turn": turn})

    @classmethod
    def spoken(cls, segments: list[str], *, turn: int, seq0: int) -> HistoryEntry:
        """An assistant reply as spoken: ``segments`` went out as seq ``seq0``, ``seq0+1``..."""
        return cls.model_validate(
            {
                "role": "assistant",
                "content": " ".join(segments),
                "_turn": turn,
                "_seq0": seq0,
                "_segs": list(segments),
            }
        )

    @classmethod
    def item(cls, message: dict[str, Any], *, turn: int) -> HistoryEntry:
        """A non-spoken item (a tool call or result) produced during ``turn``."""
        return cls.model_validate({**message, "_turn": turn})

    @classmethod
    def from_stored(cls, raw: str | bytes) -> HistoryEntry:
        """Read one stored entry (``ValueError`` if it is not one)."""
        return cls.model_validate_json(raw)

    def cut_to(self, segs: list[str]) -> HistoryEntry:
        """This spoken reply reduced to ``segs`` (what the caller heard of it)."""
        return self.model_copy(update={"content": " ".join(segs), "segs": list(segs)})

    def stored(self) -> str:
        """The entry as stored in the list (compact JSON)."""
        return json.dumps(self.as_dict(), separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        """The entry as a dict, private fields included, only the fields it was given."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def message(self) -> dict[str, Any]:
        """The chat message: the entry without its private fields."""
        return {k: v for k, v in self.as_dict().items() if not k.startswith(PRIVATE_PREFIX)}


class BargeInCut(BaseModel):
    """Where barge-in cut a turn's reply: segment ``seq``, of which the caller heard ``text``."""

    model_config = ConfigDict(frozen=True)

    seq: int
    text: str

    @classmethod
    def from_stored(cls, raw: str | bytes) -> BargeInCut:
        """Read one stored cut (``ValueError`` if it is not one)."""
        return cls.model_validate_json(raw)

    def stored(self) -> str:
        """The cut as stored in the hash."""
        return json.dumps({"seq": self.seq, "text": self.text})


def read_cuts(stored: dict[str, str]) -> dict[int, BargeInCut]:
    """The readable cuts of a ``va:heard`` hash by turn (unreadable ones are skipped)."""
    cuts: dict[int, BargeInCut] = {}
    for turn_s, raw in stored.items():
        try:
            cuts[int(turn_s)] = BargeInCut.from_stored(raw)
        except ValueError:
            continue
    return cuts
