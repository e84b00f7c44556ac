"""Text normalization for the local synthesizers (Piper, espeak-ng).

espeak-ng (Piper's phonemizer) reads most numbers well but gets a few things a phone agent says
often wrong: ``$12.50`` ("dollar twelve point five zero"), ``10:05`` ("ten zero five"),
``5551234`` ("five million ..."), and ``Dr. Smith`` (split into two sentences with a pause).
Only those cases are rewritten here; everything else is left to the engine.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))

_TITLES = {"dr": "Doctor", "mr": "Mister", "mrs": "Missus", "ms": "Miz"}
_TITLE_RE = re.compile(r"\b(Dr|Mr|Mrs|Ms)\.(?=\s+[A-Z])", re.IGNORECASE)
_TIME_RE = re.compile(
    r"\b([01]?\d|2[0-3]):([0-5]\d)(?::[0-5]\d)?(?:\s*([ap])\.?\s?m\b\.?)?", re.IGNORECASE
)
_SCALE_WORDS = "thousand|million|billion"
_MONEY_RE = re.compile(
    rf"\$\s?(\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.(\d{{1,2}}))?(?:\s+({_SCALE_WORDS})\b)?",
    re.IGNORECASE,
)
# Phone numbers and codes: 555-1234, (555) 123-4567, +1 555 123 4567, or 5+ bare digits.
_PHONE_RE = re.compile(
    r"(?<![\w.,])(?:\+\d{1,3}(?:[\s-]\d{2,4}){2,4}"
    r"|(?:\+?1[\s-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])?\d{3}[.-]\d{4})(?!\w)"
)
_DIGITS_RE = re.compile(r"(?<![\w.,])\d{5,}(?![\w]|[.,]\d)")
_MARKUP_RE = re.compile(r"[*`#]+")
_SPACES_RE = re.compile(r"\s+")


def number_words(n: int) -> str:
    """Cardinal ``n`` (0 <= n < 10**12) in words: ``1250`` -> ``one thousand two hundred fifty``."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for size, word in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {word}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")  # pragma: no cover


def _digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s if c.isdigit())


def _time(m: re.Match[str]) -> str:
    hour, minute, meridiem = int(m.group(1)), int(m.group(2)), m.group(3)
    words = number_words(hour)
    if minute == 0:
        words += " hundred" if hour > 12 or hour == 0 else ("" if meridiem else " o'clock")
    elif minute < 10:
        words += f" oh {number_words(minute)}"
    else:
        words += f" {number_words(minute)}"
    if meridiem:
        words += f" {meridiem.lower()}.m."
    return words


def _money(m: re.Match[str]) -> str:
    dollars = int(m.group(1).replace(",", ""))
    cents = int((m.group(2) or "0").ljust(2, "0"))
    scale = m.group(3)
    if scale:  # "$5 million" -> "five million dollars"; cents are meaningless there
        amount = number_words(dollars)
        if m.group(2):
            amount += " point " + _digits(m.group(2))
        return f"{amount} {scale.lower()} dollars"
    parts = []
    if dollars or not cents:
        parts.append(f"{number_words(dollars)} dollar{'' if dollars == 1 else 's'}")
    if cents:
        parts.append(f"{number_words(cents)} cent{'' if cents == 1 else 's'}")
    return " and ".join(parts)


def _phone(m: re.Match[str]) -> str:
    # Read digit by digit, pausing where the writer grouped them.
    groups = re.findall(r"\d+", m.group(0))
    return ", ".join(_digits(g) for g in groups)


def normalize_for_speech(text: str) -> str:
    """Rewrite ``text`` so a local synthesizer says it the way a person would read it."""
    text = _MARKUP_RE.sub("", text)
    text = _TITLE_RE.sub(lambda m: _TITLES[m.group(1).lower()], text)
    text = _MONEY_RE.sub(_money, text)
    text = _TIME_RE.sub(_time, text)
    text = _PHONE_RE.sub(_phone, text)
    text = _DIGITS_RE.sub(lambda m: _digits(m.group(0)), text)
    return _SPACES_RE.sub(" ", text).strip()


_CLAUSE_BREAK_RE = re.compile(r"[,;:](?=\s)")
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
LEAD_SPLIT_CHARS = 80  # a first sentence longer than this is said in two pieces...
LEAD_MIN_CHARS = 25  # ...at its first clause break with at least this much on either side


def lead_clause(text: str) -> tuple[str, str]:
    """``text`` split after the first clause of a long first sentence, else ``(text, "")``.

    A synthesizer that renders a sentence at a time (Piper) makes the caller wait for the whole
    first sentence before any audio: its first clause alone comes out in about half the time,
    and the rest is ready long before the clause has been played. The split is at a comma,
    semicolon or colon, where a reader pauses anyway.
    """
    end = _SENTENCE_END_RE.search(text)
    first = text[: end.end()] if end else text
    if len(first) <= LEAD_SPLIT_CHARS:
        return text, ""
    for m in _CLAUSE_BREAK_RE.finditer(first):
        cut = m.end()
        if cut >= LEAD_MIN_CHARS and len(first) - cut >= LEAD_MIN_CHARS:
            return text[:cut].strip(), text[cut:].strip()
    return text, ""
