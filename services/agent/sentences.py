"""Incremental sentence splitting: TTS starts on the first complete sentence of a reply.

Feed text deltas as they stream from the model; :meth:`SentenceSplitter.feed` returns the
sentences completed so far, :meth:`SentenceSplitter.flush` the rest at the end. A sentence
ends at ``.``, ``!``, ``?`` or ``…`` followed by whitespace (so "3.5" and "e.g." inside a word
never split), or at a line break. Known abbreviations ("Dr.", "e.g.") and tiny fragments
("1.") do not end a sentence. A clause running past ``max_chars`` without a sentence end is
cut at its last comma (or, failing that, whitespace), so a long first sentence does not
delay the first audio.
"""

from __future__ import annotations

import re

# Lower-cased, without the final dot. Titles and Latin short forms never end a sentence.
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "approx",
        "dept", "inc", "ltd", "co", "corp", "no", "nos", "tel", "ext", "fig", "vol", "ave",
        "blvd", "rd", "apt", "e.g", "i.e", "cf", "a.m", "p.m", "jan", "feb", "mar", "apr",
        "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "tues", "wed",
        "thu", "thurs", "fri", "sat", "sun",
    }
)  # fmt: skip
# Ambiguous short forms: they end the sentence when the next word is capitalised
# ("We open at 9 a.m. Parking is free.") but not otherwise ("9 a.m. on Monday").
_END_IF_CAPITAL = frozenset({"etc", "a.m", "p.m", "no", "sat", "sun", "mon", "wed", "fri"})

_TERMINATORS = (".", "!", "?", "…")
_CLOSERS = "\"')]}’”»"
_CANDIDATE = re.compile(r"[.!?…]+[\"')\]}’”»]*(?=\s)|\n+")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_MIN_SENTENCE_CHARS = 4  # "1." or "A." alone is not worth a TTS request
_MIN_CLAUSE_CHARS = 20


class SentenceSplitter:
    """Cut streamed text into sentences as soon as each one is complete."""

    def __init__(self, *, max_chars: int = 120) -> None:
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, delta: str) -> list[str]:
        """Add a text delta; return the sentences it completed (maybe none)."""
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            sentence = self._buf[:cut].strip()
            self._buf = self._buf[cut:].lstrip()
            if sentence:
                out.append(sentence)
        return out

    def flush(self) -> str:
        """The unfinished rest (stream ended): the last sentence, or ``""``."""
        rest = self._buf.strip()
        self._buf = ""
        return rest

    @property
    def pending(self) -> str:
        """Text received but not yet returned as a sentence."""
        return self._buf

    def pending_looks_complete(self) -> bool:
        """Whether the pending text ends like a sentence, only waiting for what follows.

        A stream that pauses here (a model about to call a tool) has most likely finished
        the sentence: the caller may flush it after a short gap instead of waiting.
        """
        text = self._buf.rstrip().rstrip(_CLOSERS)
        return len(text) >= _MIN_SENTENCE_CHARS and text.endswith(_TERMINATORS)

    def _next_cut(self) -> int | None:
        buf = self._buf
        for m in _CANDIDATE.finditer(buf):
            end = m.end()
            if m.group().startswith("\n"):
                if buf[: m.start()].strip():
                    return end
                continue
            if self._is_sentence_end(buf, m.start(), end):
                return end
        if len(buf) >= self.max_chars:
            return _clause_cut(buf, self.max_chars)
        return None

    def _is_sentence_end(self, buf: str, start: int, end: int) -> bool:
        if len(buf[:end].strip()) < _MIN_SENTENCE_CHARS:
            return False
        if buf[start] != "." or buf[start : start + 2] == "..":
            return True
        word_m = _WORD_BEFORE.search(buf[: start + 1])
        if word_m is None:
            return True
        word = word_m.group(1)
        key = word.lower()
        nxt = buf[end:].lstrip()
        if not nxt:
            # Whitespace seen but no next word yet: wait for it if the word is ambiguous.
            return key not in ABBREVIATIONS and not _is_initial(word)
        if key in _END_IF_CAPITAL:
            return nxt[0].isupper()
        if key in ABBREVIATIONS:
            return False
        # A single capital initial ("J. Smith") continues the sentence.
        return not (_is_initial(word) and nxt[0].isupper())


def _is_initial(word: str) -> bool:
    return len(word) == 1 and word.isupper()


def _clause_cut(buf: str, max_chars: int) -> int | None:
    """Where to cut a clause longer than ``max_chars``: at its last comma (or semicolon,
    colon) within ``max_chars``, else at the first one after, else at a space once the clause
    reaches twice ``max_chars``."""
    head = buf[:max_chars]
    best = max(head.rfind(", "), head.rfind("; "), head.rfind(": "))
    if best >= _MIN_CLAUSE_CHARS:
        return best + 1
    later = [i for i in (buf.find(", ", max_chars), buf.find("; ", max_chars)) if i >= 0]
    if later and min(later) < 2 * max_chars:
        return min(later) + 1
    if len(buf) >= 2 * max_chars:
        space = buf.rfind(" ", 0, 2 * max_chars)
        if space >= _MIN_CLAUSE_CHARS:
            return space
    return None
