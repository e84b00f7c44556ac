"""A small question/answer file (markdown) and keyword-overlap matching against it.

Format: an optional ``# Title`` (the business name), then one ``## keywords`` heading per topic
followed by its answer paragraph(s). The heading's first comma-separated phrase names the
topic ("opening hours"); all of its words are keywords. Matching is by keyword overlap on
crudely stemmed words: a heading keyword counts 1, a word of the answer text 0.3, and the best
topic wins if it scores at least :data:`MATCH_THRESHOLD`. Question words used as keywords
("where", "when") count 0.8, so "where do I park" prefers parking over the address. Good
enough for a demo, and honest about it: nothing here pretends to understand language.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from shared.logging import kv

log = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).with_name("knowledge.md")
MATCH_THRESHOLD = 0.8
_BODY_WEIGHT = 0.3
WEAK_KEYWORDS = frozenset({"wher", "when", "much", "how", "tim", "what", "which"})  # stemmed
_WEAK_WEIGHT = 0.8

STOPWORDS = frozenset(
    """
    a about am an and any are as at be can could do does did for from have how i i'm if in
    is it it's me my of on or our please should tell that the there this to us was we what
    when which will with would you your you're yes no hi hello hey ok okay so just like want
    know need get got some also be been being thank thanks
    """.split()
)  # "where" and "much" stay: they carry meaning in short questions

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word: str) -> str:
    """A crude English stemmer: enough to match "opening"/"opens"/"open", "prices"/"price"."""
    for suffix in ("ations", "ation", "ings", "ing", "ions", "ion", "ied", "ies", "ed", "es"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    else:
        if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Stemmed, lower-cased words of ``text`` without stopwords."""
    return {stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One topic: its name, heading keywords, answer words, and the spoken answer."""

    topic: str
    keywords: frozenset[str]
    body_words: frozenset[str]
    answer: str


@dataclass(frozen=True, kw_only=True)
class Match:
    """The best topic for a question and how well it matched."""

    entry: Entry
    score: float


class Knowledge:
    """Parsed knowledge file: topics and their answers."""

    def __init__(self, *, title: str, entries: list[Entry]) -> None:
        self.title = title
        self.entries = entries
        # Keywords shared by many topics tell less: weight each by a mild inverse frequency.
        df: dict[str, int] = {}
        for e in entries:
            for k in e.keywords:
                df[k] = df.get(k, 0) + 1
        self._weight = {
            k: (_WEAK_WEIGHT if k in WEAK_KEYWORDS else 1.0) / (1.0 + math.log(c))
            for k, c in df.items()
        }

    @property
    def topics(self) -> list[str]:
        """Topic names in file order ("opening hours", "address", ...)."""
        return [e.topic for e in self.entries]

    @classmethod
    def parse(cls, text: str) -> Knowledge:
        """Parse markdown text (see module docstring for the format)."""
        title = ""
        entries: list[Entry] = []
        heading: str | None = None
        body: list[str] = []

        def close() -> None:
            if heading is None:
                return
            answer = " ".join(" ".join(body).split())
            if not answer:
                return
            topic = heading.split(",")[0].strip()
            entries.append(
                Entry(
                    topic=topic,
                    keywords=frozenset(content_words(heading)),
                    body_words=frozenset(content_words(answer)),
                    answer=answer,
                )
            )

        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("## "):
                close()
                heading, body = stripped[3:].strip(), []
            elif stripped.startswith("# ") and not title and heading is None:
                title = stripped[2:].strip()
            elif heading is not None and stripped and not stripped.startswith("<!--"):
                body.append(stripped)
        close()
        return cls(title=title, entries=entries)

    @classmethod
    def load(cls, path: Path | None = None) -> Knowledge:
        """Read ``path`` (the shipped clinic file when ``None``)."""
        # KNOWLEDGE_FILE= (empty) parses as Path("."): that means "not set" too.
        p = path if path is not None and str(path) not in ("", ".") else DEFAULT_FILE
        knowledge = cls.parse(p.read_text(encoding="utf-8"))
        log.info("knowledge loaded", **kv(file=p.name, topics=len(knowledge.entries)))
        return knowledge

    def score(self, entry: Entry, words: set[str]) -> float:
        """How well ``words`` (see :func:`content_words`) match ``entry``."""
        kw = sum(self._weight.get(w, 1.0) for w in words & entry.keywords)
        body = _BODY_WEIGHT * len((words - entry.keywords) & entry.body_words)
        return kw + body

    def match(self, question: str, *, threshold: float = MATCH_THRESHOLD) -> Match | None:
        """The best-matching topic, or ``None`` when nothing matches well enough."""
        words = content_words(question)
        if not words:
            return None
        best: Match | None = None
        for entry in self.entries:
            s = self.score(entry, words)
            if s >= threshold and (best is None or s > best.score):
                best = Match(entry=entry, score=s)
        return best

    def answer(self, question: str) -> str | None:
        """The answer text for ``question``, or ``None``."""
        m = self.match(question)
        return m.entry.answer if m else None

    def topic_entry(self, topic: str) -> Entry | None:
        """The entry whose topic name contains ``topic`` (for menus: "hours", "address")."""
        for e in self.entries:
            if topic.lower() in e.topic.lower():
                return e
        return None
