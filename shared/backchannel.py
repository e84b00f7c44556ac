"""Backchannels ("mm-hm", "okay", "yeah"): words that acknowledge and never take the turn.

One rule for every service: the gateway uses it to confirm or revert a barge-in, the agent to
ignore a backchannel said over its reply. The list is ``BACKCHANNEL_WORDS``.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")
_REPEAT = re.compile(r"(.)\1+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _squash(token: str) -> str:
    # "mm-hmm", "mmhm", "mhm" -> "mhm": spellings of a backchannel vary more than its sound.
    return _REPEAT.sub(r"\1", token.replace("-", "").replace("'", ""))


def parse_backchannels(csv: str) -> frozenset[str]:
    """Normalized forms of a comma-separated backchannel list (see :func:`content_words`)."""
    forms: set[str] = set()
    for phrase in csv.split(","):
        toks = _tokens(phrase)
        if toks:
            forms.add(" ".join(_squash(t) for t in toks))
            forms.add(_squash("".join(toks)))
    return frozenset(forms)


def content_words(text: str, backchannels: frozenset[str]) -> int:
    """How many words of ``text`` are not backchannels ("uh huh okay" -> 0, "wait" -> 1)."""
    toks = [_squash(t) for t in _tokens(text)]
    count = i = 0
    while i < len(toks):
        for span in (3, 2, 1):
            part = toks[i : i + span]
            if len(part) == span and (
                " ".join(part) in backchannels or _squash("".join(part)) in backchannels
            ):
                i += span
                break
        else:
            count += 1
            i += 1
    return count


def is_backchannel(text: str, backchannels: frozenset[str]) -> bool:
    """``text`` has words and all of them are backchannels ("Mm-hmm." yes; "" and "Wait" no)."""
    return bool(_tokens(text)) and content_words(text, backchannels) == 0
