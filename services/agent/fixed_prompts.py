"""Fixed words for turns the caller did not start: silence reprompts and the call-length goodbye.

The gateway's guards publish ``Prompt(reason)`` on the call's control subject; the worker turns
it into a turn (:func:`prompt_turn`) and every provider answers it with these texts, without a
language model round trip. They contain no caller data, so TTS caches their audio
(:func:`is_fixed` feeds ``AgentProvider.cacheable``) and they play at once on later calls.
"""

from __future__ import annotations

from services.agent.providers.base import HangupAction, TurnInput, TurnKind
from services.agent.sentences import SentenceSplitter

STILL_THERE = "Are you still there?"
SILENCE_GOODBYE = (
    "I haven't heard anything for a while, so I'll end the call now. "
    "Thank you for calling. Goodbye!"
)
CALL_LIMIT_GOODBYE = (
    "We've reached the time limit for this call, so I have to end it now. "
    "Thank you for calling. Goodbye!"
)
FINAL = "final"  # TurnInput.text of a silence turn that ends the call


def prompt_turn(reason: str) -> tuple[TurnKind, str]:
    """The turn kind and text for a ``Prompt`` reason (``silence_final`` -> ("silence", FINAL))."""
    if reason == "call_limit":
        return "call_limit", ""
    return "silence", FINAL if reason == "silence_final" else ""


def fixed_reply(turn: TurnInput) -> tuple[str, HangupAction | None] | None:
    """The fixed reply of a silence / call-limit turn; ``None`` for other turns."""
    if turn.kind == "call_limit":
        return CALL_LIMIT_GOODBYE, HangupAction(reason="call_limit")
    if turn.kind == "silence":
        if turn.text == FINAL:
            return SILENCE_GOODBYE, HangupAction(reason="silence")
        return STILL_THERE, None
    return None


def sentences_of(*texts: str) -> frozenset[str]:
    """The sentences TTS will receive for ``texts`` (what ``cacheable`` is asked about)."""
    out: set[str] = set()
    for text in texts:
        splitter = SentenceSplitter()
        out.update(splitter.feed(text))
        out.add(splitter.flush())
    out.discard("")
    return frozenset(out)


FIXED_SENTENCES = sentences_of(STILL_THERE, SILENCE_GOODBYE, CALL_LIMIT_GOODBYE)


def is_fixed(sentence: str) -> bool:
    """Whether ``sentence`` is one of this module's fixed prompt sentences."""
    return sentence in FIXED_SENTENCES
