"""The one end-of-turn decision every recognizer goes through (issue 11): pure, clock-free.

At each pause the ASR worker gathers :class:`Evidence` (the words so far with their
confidences, the pause so far, the agent's last question, the acoustic :class:`Finality` of the
last second of speech) and asks :func:`decide`, which says how long a pause this utterance needs
before the turn ends:

- the words read as finished ("Yes.", "My name is Maria Lopez.", an answer to the agent's
  question): a short wait (``min_wait_ms``);
- they read as a fragment (a trailing "and", "for", "my", "um"; a date or number still being
  said; the agent asked for a date and no date came yet): the long wait (``max_wait_ms``);
- in between, a wait interpolated on the completeness score.

The text decides most; the recognizer's confidence pulls an uncertain transcript toward the
middle; the acoustic score moves the result a little (``acoustic_weight``: it separates finished
from cut speech only weakly on real voices, ``docs/turn-taking.md``); whisper's final period is
a hint worth ``punctuation_weight`` at most (it punctuates fragments as sentences). Speech that
resumes before the wait is over continues the same utterance (:func:`joins`, :func:`merge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

from services.asr.turntaking.prosody import Finality
from shared.answers import AnswerKind, expected_answer

# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word; timings in ms of the call's audio, when the recognizer gives them."""

    text: str
    confidence: float | None = None
    start_ms: float | None = None
    end_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is known at a pause of the caller's utterance."""

    words: tuple[Word, ...]
    pause_ms: float  # silence since the end of speech (VAD); 0: the caller is speaking
    text: str | None = None  # the transcript as punctuated by the recognizer (else the words)
    agent_question: str | None = None  # the agent's last sentence, if it asked something
    expects: AnswerKind | None = None  # what the agent asked for, when announced as a kind
    acoustic: Finality | None = None
    confidence: float | None = None  # the utterance's confidence, if no per-word ones

    @property
    def transcript(self) -> str:
        """The punctuated transcript if given, else the words joined."""
        return self.text if self.text is not None else " ".join(w.text for w in self.words)


@dataclass(frozen=True, slots=True)
class EndOfTurnPolicy:
    """Settings of the decision (env vars proposed in ``docs/turn-taking.md``)."""

    min_wait_ms: int = 200  # a finished answer ends after this much pause (then the decode)
    max_wait_ms: int = 2000  # a fragment ends after this much pause, whatever it says
    complete_at: float = 0.7  # completeness at or above this: the short wait
    incomplete_at: float = 0.3  # at or below this: the long wait
    acoustic_weight: float = 0.1  # how far the acoustic score may move the text's (0: ignore)
    punctuation_weight: float = 0.05
    low_confidence: float = 0.5  # words under this confidence make the text cue uncertain


# --------------------------------------------------------------------------- decision


class Action(StrEnum):
    """What the worker does now."""

    END = "end"  # the turn is over: publish the final transcript
    WAIT = "wait"  # pausing: end when the pause reaches ``wait_ms`` unless speech resumes
    LISTEN = "listen"  # the caller is speaking (or nothing was said): no pause to judge yet


@dataclass(frozen=True, slots=True)
class Decision:
    """The decision at one pause, with why (published as the ``end_of_turn`` event's reason)."""

    action: Action
    wait_ms: int  # the pause this utterance needs before its turn ends
    completeness: float  # 0: surely a fragment, 1: surely finished
    reason: str
    cues: dict[str, float] = field(default_factory=dict)


def decide(evidence: Evidence, policy: EndOfTurnPolicy | None = None) -> Decision:
    """The end-of-turn decision for ``evidence`` under ``policy`` (defaults if ``None``)."""
    p = policy or EndOfTurnPolicy()
    text = text_completeness(
        evidence.transcript, agent_question=evidence.agent_question, expects=evidence.expects
    )
    score, reasons = text.score, [text.reason]
    cues = {"text": text.score}

    conf = _confidence(evidence)
    if conf is not None:
        cues["confidence"] = conf
        if conf < p.low_confidence and text.words:
            # Misheard words are weak evidence either way: pull toward undecided.
            score = 0.5 + (score - 0.5) * (conf / p.low_confidence)
            reasons.append(f"low confidence {conf:.2f}")

    if text.words and p.punctuation_weight:
        punct = _punctuation_hint(evidence.transcript)
        if punct:
            score += p.punctuation_weight * punct
            cues["punctuation"] = punct

    if evidence.acoustic is not None and text.words and p.acoustic_weight:
        a = evidence.acoustic.score
        cues["acoustic"] = a
        # Acoustics never override a strong text cue: they only move an undecided one.
        if text.strength < 1.0:
            score += p.acoustic_weight * (a - 0.5) * 2
            if abs(a - 0.5) > 0.25:
                reasons.append("sounds final" if a > 0.5 else "sounds unfinished")

    score = min(1.0, max(0.0, score))
    wait = wait_for(score, p)
    reason = "; ".join(r for r in reasons if r)
    if not text.words:
        return Decision(Action.LISTEN, p.max_wait_ms, score, "no words yet", cues)
    if evidence.pause_ms <= 0:
        return Decision(Action.LISTEN, wait, score, reason, cues)
    if evidence.pause_ms >= wait:
        return Decision(Action.END, wait, score, reason, cues)
    return Decision(Action.WAIT, wait, score, reason, cues)


def wait_for(completeness: float, policy: EndOfTurnPolicy) -> int:
    """The pause needed before ending a turn of this completeness."""
    p = policy
    if completeness >= p.complete_at:
        return p.min_wait_ms
    if completeness <= p.incomplete_at:
        return p.max_wait_ms
    frac = (p.complete_at - completeness) / (p.complete_at - p.incomplete_at)
    return round(p.min_wait_ms + frac * (p.max_wait_ms - p.min_wait_ms))


def joins(decision: Decision, *, resumed_after_ms: float) -> bool:
    """Speech resumed ``resumed_after_ms`` into a pause: it continues the same utterance unless
    the turn had already ended."""
    return decision.action is not Action.END and resumed_after_ms < decision.wait_ms


def merge(before: Evidence, after: Evidence) -> Evidence:
    """One utterance from a fragment and the speech that resumed it (pause from ``after``)."""
    text = None
    if before.text is not None or after.text is not None:
        text = _join_text(before.transcript, after.transcript)
    return replace(
        after,
        words=before.words + after.words,
        text=text,
        agent_question=after.agent_question or before.agent_question,
        expects=after.expects or before.expects,
        confidence=_min_opt(before.confidence, after.confidence),
    )


def _join_text(a: str, b: str) -> str:
    # The recognizer closed the fragment with a period; the sentence goes on. The case of the
    # resumed words is kept: their first word may be a name ("... for Tuesday").
    a = a.rstrip()
    if a.endswith((".", "…")) and not a.endswith("..."):
        a = a.rstrip(".…")
    return f"{a} {b.strip()}".strip()


def _min_opt(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v is not None]
    return min(vals) if vals else None


def _confidence(e: Evidence) -> float | None:
    # The last words matter most: a misheard "for" at the end changes the verdict.
    tail = [w.confidence for w in e.words[-3:] if w.confidence is not None]
    if tail:
        return min(tail)
    return e.confidence


def _punctuation_hint(text: str) -> float:
    t = text.rstrip()
    if t.endswith(("...", "…", ",", ";", ":", "-", "—")):
        return -1.0
    if t.endswith(("?", "!", ".")):
        return 1.0
    return 0.0


# --------------------------------------------------------------------------- text cues

# A sentence ending in one of these is not finished, whatever the recognizer's punctuation says.
FUNCTION_WORDS = frozenset(
    """
    a an the and but or nor so because since though although if unless then than that which who
    whom whose where when while whether to of for with at on in into onto from by about like as
    until till after before between through over under per via my your our their his her its
    this these those is are was were am be been being do does did have has had will would can
    could should shall may might must need want also plus just i i'm i'd i'll we we're you're
    it's there's what's
    """.split()
)
# Auxiliaries close an elliptic answer after a subject ("I do.", "Yes, it is.", "We can.").
_AUXILIARIES = frozenset(
    "is are was were am be been do does did have has had will would can could should shall"
    " may might must".split()
)
_SUBJECTS = frozenset("i you we they he she it there that who not".split())
# "so" after these is an answer ("I think so."); "that" after them announces a clause.
_THINK = frozenset("think hope guess believe suppose said say know mean sure afraid".split())
_DEMONSTRATIVES = frozenset("that this these those".split())
_WH = frozenset("what who where which when how whom whose".split())
_PREPOSITIONS = frozenset(
    "to of for with at on in into onto from by about like as over under through via".split()
)
FILLERS = frozenset("um uh er erm uhm hmm mm ah eh".split())
# Whisper spells a held filler as it heard it ("umm...", "uhhh", "hmmm", "errr"): the same word.
_FILLER = re.compile(r"u+h*m+|u+h+|e+r+m*|h+m+|m{2,}|a+h+|e+h+")
MONTHS = frozenset(
    "january february march april may june july august september october november december"
    " jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_UNITS = "zero oh one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = frozenset([*_UNITS, *_TEENS, *_TENS, "hundred", "thousand", "double", "triple"])
# Numbers that announce more: "nineteen ..." (a year), "twenty ..." , "two hundred ...".
_NUMBER_GOES_ON = frozenset(["hundred", "thousand", "double", "triple", *_TENS])
ORDINALS = frozenset(
    """
    first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth
    fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth thirtieth
    twenty-first twenty-second twenty-third thirty-first
    """.split()
)
# "in March", "since May": the month is the whole answer, no day is coming.
_WHOLE_MONTH = frozenset("in of since until till last next early late mid end".split())
_RELATIVE_DAYS = frozenset("today tomorrow tonight yesterday weekend morning afternoon".split())
# Stems that ask for more than themselves ("I'd like to book an appointment" is complete, but
# these are not, whatever word closes them).
_OPEN_PHRASES = (
    re.compile(
        r"\b(my|the|his|her|our|your) (date of birth|birthday|name|number|phone number|"
        r"address|zip code|postcode|email|account number|card number) is$"
    ),
    re.compile(r"\b(it's|it is|that's|that is) (on|at|for|in)$"),
    re.compile(r"\bborn (on|in)$"),
    # A wish whose object has not come yet: "I'd like to book ...", "I need to cancel ...".
    re.compile(
        r"\b(like|want|need|wanted|trying|going|have) to (book|make|schedule|cancel|change|"
        r"move|get|see|order|pay|check|ask|confirm|reschedule|renew|refill|update)$"
    ),
)
# "my phone number is <value>", "my date of birth is <value>": the value's kind, and the words
# after the announcement (judged by _announced_value_missing).
_ANNOUNCED = re.compile(
    r"\b(my|the|your|our|his|her) (?:(?:phone|cell|mobile|home|work|account|member|card|policy|"
    r"insurance|callback|contact|id|pin|zip) )?(?P<kind>number|date of birth|birthday|birth date)"
    r" is (?P<rest>[a-z0-9' -]+)$"
)
_ANNOUNCED_MAX_WORDS = 4
# Words that make the rest a statement about the value, not the value misheard.
_NOT_A_VALUE = frozenset(
    "file same changed different wrong new old not listed above below there here it".split()
)
# Main-verb "do" ends sentences ("... what you can do.", "I do."): not a dangling auxiliary.
_FINAL_VERBS = frozenset("do does did".split())
# Words saying a number is being given: digit groups after them are a number still being said.
_NUMBER_INTROS = frozenset("number phone digits zip code pin account card".split())
# A sentence that opens with these announces a clause: with no verb yet, it has not come
# ("And so, my fellow ...", "But the second one ...").
_CLAUSE_OPENERS = frozenset("and so but because or then also plus".split())
# Enough of English's verbs to tell a clause from a noun phrase: the auxiliaries and modals,
# the commonest lexical verbs (with -s, -ed, -ing and irregular forms), and contractions.
_VERB_STEMS = frozenset(
    """
    ask book call cancel change check come confirm cost feel find get give go happen help hear
    hope keep know leave let like live look love make mean move need open order pay pick put
    reach remember say schedule see seem send set show speak start stay stop take talk tell
    think try turn understand use wait want work close arrive die eat fall hurt run sleep write
    """.split()
)
_IRREGULAR_VERBS = frozenset(
    """
    went gone came got gotten gave given took taken made said saw seen told knew known thought
    felt found left kept meant paid put sent set spoke spoken understood ate fell hurt ran slept
    wrote written heard
    """.split()
)


_ELLIPTIC_ENDS = frozenset("too either also please thanks then".split())


def _is_verb(w: str) -> bool:
    if w in _AUXILIARIES or w in _IRREGULAR_VERBS or "'" in w[1:]:
        return True  # "i'd", "don't", "it's": a contraction carries a verb
    for suffix in ("", "s", "es", "ed", "d", "ing"):
        if suffix and not w.endswith(suffix):
            continue
        stem = w[: len(w) - len(suffix)] if suffix else w
        if stem in _VERB_STEMS or (suffix == "ing" and stem + "e" in _VERB_STEMS):
            return True
    return len(w) > 4 and w.endswith("ed")  # most past forms


def _clause_pending(ws: tuple[str, ...], text: str) -> bool:
    """The words open a clause ("and so ...") and no verb has come yet."""
    i = 0
    while i < len(ws) and ws[i] in _CLAUSE_OPENERS:
        i += 1
    rest = ws[i:]
    if i == 0 or len(rest) < 2 or text.rstrip().endswith("?") or rest[-1] in _ELLIPTIC_ENDS:
        return False  # "And you?", "So, Tuesday.", "And my daughter too."
    return not any(_is_verb(w) for w in rest)


SHORT_ANSWERS = frozenset(
    """
    yes yeah yep yup no nope nah okay ok sure right correct exactly thanks thank fine great
    perfect absolutely definitely alright bye goodbye hello hi
    """.split()
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


@dataclass(frozen=True, slots=True)
class TextCue:
    """Completeness of the words: ``score`` in [0, 1], ``strength`` 1: a rule that decides."""

    score: float
    strength: float
    reason: str
    words: tuple[str, ...]


def tokens(text: str) -> tuple[str, ...]:
    """Lower-case words, apostrophes kept ("i'd"), digits as their own tokens."""
    return tuple(_WORD.findall(text.lower().replace("’", "'")))


def _has_date(ws: tuple[str, ...]) -> bool:
    if any(w in WEEKDAYS or w in _RELATIVE_DAYS for w in ws):
        return True
    for i, w in enumerate(ws):
        if w in MONTHS and w != "may":
            # "March fourth", "the fourth of March", "March 4": a month with a day.
            near = ws[max(0, i - 3) : i + 3]
            if any(n in ORDINALS or n.isdigit() or n in NUMBER_WORDS for n in near):
                return True
    return any(re.fullmatch(r"\d{1,2}(st|nd|rd|th)", w) for w in ws)


def _has_time(ws: tuple[str, ...]) -> bool:
    return any(
        w.isdigit()
        or w in NUMBER_WORDS
        or w in {"noon", "midday", "o'clock", "am", "pm", "morning", "afternoon", "evening"}
        for w in ws
    )


def is_filler(word: str) -> bool:
    """A hesitation ("um", "uhh", "hmmm"), however the recognizer spells its length."""
    return word in FILLERS or _FILLER.fullmatch(word) is not None


def _announced_value_missing(joined: str) -> str | None:
    """The caller announced a number or a date ("my phone number is ...") and the few words
    after it hold none: a recognizer that mishears digits ("time time time" for "five five
    five") or a caller who is still looking it up. The kind announced, or None."""
    m = _ANNOUNCED.search(joined)
    if m is None:
        return None
    rest = tuple(m.group("rest").split())
    if len(rest) > _ANNOUNCED_MAX_WORDS or any(w in _NOT_A_VALUE for w in rest):
        return None  # a sentence of its own ("... is on file", "... is the same as before")
    kind = "number" if m.group("kind") == "number" else "date"
    value = NUMBER_WORDS | ({"oh"} if kind == "number" else MONTHS | ORDINALS | WEEKDAYS)
    if any(w in value or any(ch.isdigit() for ch in w) for w in rest):
        return None
    return kind


def _digit_count(ws: tuple[str, ...]) -> int:
    n = 0
    for w in ws:
        if w in _UNITS:
            n += 1
        elif w == "double":
            n += 1  # "double five": two digits, the word and the next
        else:
            n += sum(ch.isdigit() for ch in w)  # "555", "555-123-4567"
    return n


def text_completeness(
    text: str, *, agent_question: str | None = None, expects: AnswerKind | None = None
) -> TextCue:
    """How finished the words read, and why (the rules of the module docstring)."""
    ws = tokens(text)
    if not ws:
        return TextCue(0.5, 0.0, "no words", ws)
    last = ws[-1]
    joined = " ".join(ws)
    if is_filler(last):
        return TextCue(0.05, 1.0, f"trailing filler '{last}'", ws)
    prev = ws[-2] if len(ws) > 1 else ""
    if last == "may" and (prev in ("in", "of", "early", "late", "mid") or prev in NUMBER_WORDS):
        pass  # the month, not the verb: judged with the dates below
    elif last in _FINAL_VERBS:
        return TextCue(0.75, 0.3, f"sentence-final '{last}'", ws)
    elif last in _AUXILIARIES and prev in _SUBJECTS:
        return TextCue(0.75, 0.3, f"elliptic answer ('{prev} {last}')", ws)
    elif last == "so" and prev in _THINK:
        return TextCue(0.8, 0.3, f"'{prev} so'", ws)
    elif last in _DEMONSTRATIVES and prev not in _THINK:
        return TextCue(0.45, 0.3, f"trailing '{last}' (pronoun or clause?)", ws)
    elif last in _PREPOSITIONS and ws[0] in _WH:
        return TextCue(0.6, 0.3, f"question with a stranded '{last}'", ws)
    elif last in FUNCTION_WORDS:
        return TextCue(0.05, 1.0, f"trailing '{last}'", ws)
    for pat in _OPEN_PHRASES:
        if pat.search(joined):
            return TextCue(0.05, 1.0, "an announced value not said yet", ws)
    if (kind := _announced_value_missing(joined)) is not None:
        return TextCue(0.25, 0.8, f"the announced {kind} not heard yet", ws)

    want = expects or expected_answer(agent_question)
    answered: bool | None = None
    if want == "date":
        answered = _has_date(ws) or (len(ws) <= 3 and ws[0] in SHORT_ANSWERS)
    elif want == "time":
        answered = _has_time(ws) or (len(ws) <= 3 and ws[0] in SHORT_ANSWERS)
    elif want in ("number", "phone"):
        answered = _digit_count(ws) >= 3 or (len(ws) <= 3 and ws[0] in SHORT_ANSWERS)
        if answered and want == "phone":
            answered = _digit_count(ws) >= 10 or _digit_count(ws) == 0
            if not answered:
                return TextCue(0.1, 1.0, f"phone number: {_digit_count(ws)} digits so far", ws)

    # A number or date still being said.
    dated = any(w in MONTHS or w in ORDINALS for w in ws[:-1])
    # "two hundred ...", "twenty ...": more is coming, unless a number came before ("seven
    # thirty", "nineteen eighty"), which the tens close.
    goes_on = last in _NUMBER_GOES_ON and not (last in _TENS and prev in NUMBER_WORDS)
    if goes_on or (last in ("nineteen", "eighteen") and dated):
        return TextCue(0.15, 0.8, f"number still being said ('{last}')", ws)
    if last in MONTHS and want in ("date", None) and len(ws) > 1 and prev not in _WHOLE_MONTH:
        # "my birthday is March ...": the day is coming (a lone "March." may be the answer).
        return TextCue(0.2, 0.8, f"date still being said ('{last}')", ws)
    if want in ("number", "phone") and last in NUMBER_WORDS | {"oh"} and _digit_count(ws) < 7:
        return TextCue(0.3, 0.6, "digits still being said", ws)
    if (
        want is None
        and _digit_count(ws) in (3, 6)
        and (last.isdigit() or last in _UNITS)
        and any(w in _NUMBER_INTROS for w in ws)
    ):
        # "my number is five five five ...": a number said in groups pauses after the first
        # three and six digits (3-3-4); seven or ten digits may be the whole number.
        return TextCue(0.15, 0.8, "digits still being said", ws)

    if len(ws) >= 4 and ws[-1] == ws[-2] == ws[-3] and last not in SHORT_ANSWERS:
        # The shape of a digit group said word by word ("five five five") that the recognizer
        # wrote as some other word ("time time time"): more digits are likely coming.
        return TextCue(0.3, 0.6, "a word said three times (a digit group?)", ws)
    if answered is False:
        return TextCue(0.2, 0.8, f"the agent's question ({want}) not answered yet", ws)
    if not answered and _clause_pending(ws, text):
        return TextCue(0.2, 0.6, f"a clause opened ('{ws[0]}') with no verb yet", ws)
    if answered:
        return TextCue(0.95, 0.6, f"answers the agent's question ({want})", ws)
    if ws[0] in SHORT_ANSWERS and len(ws) <= 3:
        return TextCue(0.95, 0.6, "short answer", ws)
    return TextCue(0.8, 0.0, "reads as a finished sentence", ws)
