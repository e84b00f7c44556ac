"""Text normalization for the local synthesizers: what the caller hears for numbers and times."""

from __future__ import annotations

import pytest

from services.tts.text import lead_clause, normalize_for_speech, number_words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (15, "fifteen"),
        (40, "forty"),
        (42, "forty two"),
        (100, "one hundred"),
        (305, "three hundred five"),
        (1250, "one thousand two hundred fifty"),
        (2_000_017, "two million seventeen"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("See you at 9:30.", "See you at nine thirty."),
        ("At 10:05 pm.", "At ten oh five p.m."),
        ("Open at 9:00 AM, closed at 17:00.", "Open at nine a.m., closed at seventeen hundred."),
        ("Come at 9:00.", "Come at nine o'clock."),
        ("It costs $12.50 today.", "It costs twelve dollars and fifty cents today."),
        ("Only $1.", "Only one dollar."),
        ("A $1,200 deposit.", "A one thousand two hundred dollars deposit."),
        ("Raised $5 million.", "Raised five million dollars."),
        ("Call 555-1234.", "Call five five five, one two three four."),
        ("Code 90210.", "Code nine zero two one zero."),
        ("Dr. Smith and Mrs. Jones.", "Doctor Smith and Missus Jones."),
        ("**Sure**, happy to help.", "Sure, happy to help."),
    ],
)
def test_normalize_for_speech(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize(
    "text",
    [
        "We have 3 rooms and 1,250 units, 10% off.",  # espeak reads these well: left alone
        "Pi is 3.14159 and the ratio is 1:2.",
        "The year 2024 was good.",
    ],
)
def test_what_the_engine_reads_well_is_left_alone(text: str) -> None:
    assert normalize_for_speech(text) == text


def test_sentence_end_title_is_not_expanded() -> None:
    # "Dr." followed by nothing is not a title before a name: leave the sentence end alone.
    assert normalize_for_speech("Ask the Dr.") == "Ask the Dr."


def test_blank_text_stays_blank() -> None:
    assert normalize_for_speech("  ** ") == ""


def test_a_long_first_sentence_is_said_from_its_first_clause() -> None:
    opening = (
        "We're open Monday to Friday from eight am to six pm, and on Saturdays from nine am "
        "to one pm. We're closed on Sundays."
    )
    head, rest = lead_clause(opening)
    assert head == "We're open Monday to Friday from eight am to six pm,"
    assert rest == "and on Saturdays from nine am to one pm. We're closed on Sundays."
    assert f"{head} {rest}" == opening  # nothing lost or added


@pytest.mark.parametrize(
    "text",
    [
        "Your appointment is on Tuesday at ten.",  # short: one piece
        "Yes, and I can also move your other appointment to the following week if you like.",
        "Thank you for calling the clinic today and have a wonderful rest of your day ahead.",
        "Of course. Your appointment on Tuesday, the fourth, at ten in the morning is booked.",
    ],
    ids=["short", "break-too-early", "no-break", "long-second-sentence"],
)
def test_short_or_unbreakable_first_sentences_stay_whole(text: str) -> None:
    assert lead_clause(text) == (text, "")
