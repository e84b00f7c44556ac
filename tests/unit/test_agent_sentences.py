"""The incremental sentence splitter: TTS gets each sentence as soon as it is complete."""

from __future__ import annotations

import pytest

from services.agent.sentences import SentenceSplitter


def split_stream(deltas: list[str], **kw: int) -> tuple[list[list[str]], str]:
    s = SentenceSplitter(**kw)
    per_delta = [s.feed(d) for d in deltas]
    return per_delta, s.flush()


def split_all(text: str, *, step: int = 3, **kw: int) -> list[str]:
    """Feed ``text`` in small chunks, like a token stream; all sentences in order."""
    s = SentenceSplitter(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.feed(text[i : i + step])
    rest = s.flush()
    return [*out, rest] if rest else out


def test_sentence_is_emitted_as_soon_as_the_next_one_starts() -> None:
    per_delta, rest = split_stream(["Hello there", ". How", " are you", "? I'm fine"])
    assert per_delta == [[], ["Hello there."], [], ["How are you?"]]
    assert rest == "I'm fine"


def test_first_sentence_is_not_delayed_by_the_rest() -> None:
    s = SentenceSplitter()
    assert s.feed("We're open until six. ") == ["We're open until six."]


def test_final_sentence_without_trailing_space_comes_from_flush() -> None:
    per_delta, rest = split_stream(["Goodbye."])
    assert per_delta == [[]]
    assert rest == "Goodbye."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith will see you. Please arrive early.",
            ["Dr. Smith will see you.", "Please arrive early."],
        ),
        (
            "Bring documents, e.g. your insurance card. Thanks!",
            ["Bring documents, e.g. your insurance card.", "Thanks!"],
        ),
        ("It costs 3.5 dollars. That's all.", ["It costs 3.5 dollars.", "That's all."]),
        ("Come at 9:30 tomorrow. See you then.", ["Come at 9:30 tomorrow.", "See you then."]),
        (
            "We open at 9 a.m. on Mondays. Parking is free.",
            ["We open at 9 a.m. on Mondays.", "Parking is free."],
        ),
        ("We open at 9 a.m. Parking is free.", ["We open at 9 a.m.", "Parking is free."]),
        ("Really? Yes! Great.", ["Really?", "Yes!", "Great."]),
        ('He said "hello." Then left.', ['He said "hello."', "Then left."]),
        ("Ask for J. Smith at the desk.", ["Ask for J. Smith at the desk."]),
        ("Options:\n1. Book\n2. Cancel", ["Options:", "1. Book", "2. Cancel"]),
        ("Well... let me check.", ["Well...", "let me check."]),
    ],
)
def test_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert split_all(text) == expected
    assert split_all(text, step=1) == expected


def test_long_clause_is_cut_at_a_comma_so_tts_starts_early() -> None:
    text = (
        "We offer general checkups for adults and children of every age, vaccinations before "
        "travel and for the flu season, blood tests with results in two days, and physiotherapy"
    )
    s = SentenceSplitter(max_chars=80)
    got: list[str] = []
    for word in text.split(" "):
        got += s.feed(word + " ")
    assert got, "a long clause must not wait for its full stop"
    assert all(part.endswith(",") for part in got)
    assert all(len(part) <= 110 for part in got)
    assert " ".join([*got, s.flush()]) == text


def test_thousands_separator_is_not_a_clause_boundary() -> None:
    s = SentenceSplitter(max_chars=20)
    got = s.feed("The total comes to 1,250 dollars for everything")
    assert all(not part.endswith("1,") for part in got)


def test_no_punctuation_at_all_is_cut_at_whitespace_eventually() -> None:
    s = SentenceSplitter(max_chars=40)
    got = s.feed("word " * 30)
    assert got and all(len(p) <= 80 for p in got)


def test_flush_resets() -> None:
    s = SentenceSplitter()
    s.feed("half a sentence")
    assert s.flush() == "half a sentence"
    assert s.flush() == ""
    assert s.feed("Next. ") == ["Next."]
