"""The built-in demo agent: rules and a knowledge file, no language model (and it says so).

It greets, answers questions from the knowledge file by keyword overlap, books appointments
through :class:`CallTools` (day and time, then name, then a yes/no confirmation), transfers to
a person when ``TRANSFER_TARGETS`` names one, and hangs up on goodbye. Keypad digits work as a
menu: 1 books, 2.. read the knowledge topics in file order, 0 asks for a person, * repeats.
Asked about a member id, it has the caller type it on the keypad (a keypad entry:
:mod:`services.agent.digits`) and reads it back. Silence and call-limit prompts get the fixed
words of :mod:`services.agent.fixed_prompts`.

No state lives in this object (any replica may take any turn): where a booking stands is read
back from the last thing the agent said, which is in the history the worker passes in. Every
booking prompt restates what is known so far ("Tuesday at 10 am, got it. What name...?"), so
that one message is the whole state, and it is exactly what the caller heard (history is
truncated on barge-in): a question the caller never heard is never taken as answered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.agent import outbound_script
from services.agent.fixed_prompts import STILL_THERE, fixed_reply, is_fixed
from services.agent.providers.base import (
    AgentOutput,
    AgentProvider,
    HangupAction,
    TransferAction,
    TurnInput,
)
from services.agent.sentences import SentenceSplitter
from services.agent.tools import CallTools, ToolError, spell
from shared.settings import Settings

ANYTHING_ELSE = "Is there anything else I can help with?"
ASK_WHEN = "What day and time would you like?"
ASK_NAME = "What name should I book it under?"
CONFIRM = "Shall I book it? Say yes, or press 1."
MEMBER_DIGITS = 6
ASK_MEMBER_ID = "Please type your 6-digit member ID on the keypad, then press the pound key."

_ASK_TIME_RE = re.compile(r"OK, (?P<day>[^.?]+)\. What time would suit you\?")
_ASK_DAY_RE = re.compile(r"OK, (?P<time>(?:at|in) [^.?]+)\. Which day would suit you\?")
_ASK_NAME_RE = re.compile(r"OK, (?P<when>[^.?]+)\. " + re.escape(ASK_NAME))
_CONFIRM_RE = re.compile(r"So that's (?P<when>[^.?]+?), for (?P<name>.+?)\. " + re.escape(CONFIRM))


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


GOODBYE = _words(
    "bye", "goodbye", "good bye", "bye bye", "that's all", "that is all", "nothing else",
    "hang up", "no more questions", "i'm done", "i am done",
)  # fmt: skip
BOOK = _words("book", "booking", "appointment", "appointments", "schedule", "reserve", "appt")
MY_BOOKINGS = re.compile(
    r"\b(?:what|when|which|check|list|read|tell)\b.*\b(?:my|the)\s+(?:appointment|booking)s?\b",
    re.IGNORECASE,
)
CANCEL = _words("cancel", "never ?mind", "forget it", "start over")
PERSON = _words(
    "person", "human", "someone", "somebody", "receptionist", "operator", "front desk", "staff",
    "real person", "transfer me",
)  # fmt: skip
MEMBER = _words("member id", "member number", "membership", "member")
REPEAT = _words("repeat", "say that again", "pardon", "come again", "what did you say")
YES = _words(
    "yes", "yeah", "yep", "yup", "sure", "correct", "right", "please do", "go ahead", "ok",
    "okay", "confirm", "sounds good", "perfect", "absolutely",
)  # fmt: skip
NO = _words("no", "nope", "nah", "don't", "do not", "wrong", "incorrect", "not right")
THANKS = re.compile(
    r"^\W*(?:ok(?:ay)?,? )?(?:thank you|thanks)(?: very much| so much| a lot)?\W*$", re.IGNORECASE
)
QUESTION = re.compile(r"\?\s*$|^\s*(?:what|when|where|how|do|does|is|are|can|could)\b", re.I)

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_RE = re.compile(
    r"\b(?:(?P<rel>today|tomorrow|day after tomorrow)|(?:(?P<mod>next|this) )?(?P<dow>"
    + "|".join(_DAYS)
    + r"))\b",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    w: i + 1
    for i, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split())
}
_HOUR = r"(?P<h>\d{1,2}|" + "|".join(_NUMBER_WORDS) + r")"
_TIME_RE = re.compile(
    r"\b" + _HOUR + r"(?:[:.](?P<m>\d{2}))?\s*(?P<ampm>a\.?\s?m\.?|p\.?\s?m\.?|o'?clock)(?![a-z])",
    re.IGNORECASE,
)
_AT_TIME_RE = re.compile(r"\bat\s+" + _HOUR + r"(?:[:.](?P<m>\d{2}))?\b", re.IGNORECASE)
_PART_OF_DAY = {
    "noon": "at noon",
    "midday": "at noon",
    "morning": "in the morning",
    "afternoon": "in the afternoon",
    "evening": "in the evening",
}
_PART_RE = re.compile(r"\b(noon|midday|morning|afternoon|evening)\b", re.IGNORECASE)
_NAME_PREFIX = re.compile(
    r"^(?:(?:yes|yeah|ok(?:ay)?|sure|so|well|um|uh)[,.]?\s+)*"
    r"(?:(?:(?:my|the|his|her|our) name(?:'s| is)|name(?:'s| is)|it's|it is|this is|i'm|"
    r"i am|put it under|under|for|call me)\s+)?",
    re.IGNORECASE,
)


def find_day(text: str) -> str | None:
    """The day named in ``text``, as it will be spoken ("tomorrow", "next Tuesday")."""
    m = _DAY_RE.search(text)
    if not m:
        return None
    if m.group("rel"):
        return m.group("rel").lower()
    dow = m.group("dow").capitalize()
    return f"{m.group('mod').lower()} {dow}" if m.group("mod") else dow


def find_time(text: str) -> str | None:
    """The time of day in ``text``, with its preposition ("at 10 am", "in the morning")."""
    m = _TIME_RE.search(text) or _AT_TIME_RE.search(text)
    if m:
        raw_h = m.group("h").lower()
        h = _NUMBER_WORDS.get(raw_h) or int(raw_h)
        if not 0 <= h <= 23:
            return None
        minutes = m.group("m")
        clock = f"{h}:{minutes}" if minutes and minutes != "00" else str(h)
        suffix = (m.groupdict().get("ampm") or "").lower().replace(".", "").replace(" ", "")
        if suffix in ("am", "pm"):
            return f"at {clock} {suffix}"
        if h > 12:
            return f"at {h}:{minutes or '00'}"
        return f"at {clock} o'clock" if not minutes or minutes == "00" else f"at {clock}"
    p = _PART_RE.search(text)
    return _PART_OF_DAY[p.group(1).lower()] if p else None


def clean_name(text: str) -> str:
    """A caller's answer to "what name?" reduced to the name ("It's Jane Doe." -> "Jane Doe")."""
    name = _NAME_PREFIX.sub("", text.strip(), count=1)
    name = re.sub(r"[,.!?]*\s*(?:please|thanks|thank you)?[.!?]*$", "", name, flags=re.I)
    name = name.strip(" ,.!?\"'")
    return " ".join(w if w[:1].isupper() else w.capitalize() for w in name.split())


def last_assistant(history: list[dict[str, Any]]) -> str:
    """What the agent said last (the spoken text of the latest assistant message)."""
    for m in reversed(history):
        if m.get("role") == "assistant" and isinstance(m.get("content"), str) and m["content"]:
            return str(m["content"])
    return ""


def _asked_to_confirm(history: list[dict[str, Any]]) -> bool:
    """The agent's last real question was an outbound reminder's "still good for you?" (a
    silence reprompt in between does not count: the caller may answer the question late)."""
    for m in reversed(history):
        content = m.get("content")
        if m.get("role") != "assistant" or not isinstance(content, str) or not content:
            continue
        if content.startswith(STILL_THERE):
            continue
        return content.endswith(outbound_script.CONFIRM_QUESTION)
    return False


@dataclass
class Reply:
    """What the demo agent says and does in one turn."""

    text: str
    actions: list[HangupAction | TransferAction] = field(default_factory=list)


class DemoAgent(AgentProvider):
    """Rule-based demo assistant over a knowledge file. No language model."""

    name = "demo"

    def __init__(self, *, settings: Settings, tools: CallTools) -> None:
        self._tools = tools
        k = tools.knowledge
        self._title = k.title or "our office"
        self._topics = k.topics
        # Keypad menu: 1 books, 2..9 read knowledge topics in file order.
        self._menu = {str(i + 2): e for i, e in enumerate(k.entries[:8])}
        self._fixed = self._fixed_sentences()

    # ------------------------------------------------------------------ texts

    def _topic_list(self) -> str:
        topics = list(self._topics)
        if not topics:
            return ""
        if len(topics) == 1:
            return topics[0]
        return ", ".join(topics[:-1]) + ", or " + topics[-1]

    def _can_do(self) -> str:
        topics = self._topic_list()
        if topics:
            return f"I can tell you about our {topics}, or book an appointment."
        return "I can book an appointment."

    def greeting(self) -> str:
        """What the agent says when the call connects: short, honest, and it says what works."""
        topics = list(self._topics)[:2]
        ask = f"Ask about our {' or '.join(topics)}, or" if topics else "You can"
        return (
            f"Hello, you've reached {self._title}. I'm a simple demo assistant, "
            f"not a language model. {ask} book an appointment. Press star for the menu."
        )

    def _menu_text(self) -> str:
        parts = ["Press 1 to book an appointment"]
        parts += [f"{d} for {e.topic}" for d, e in self._menu.items()]
        parts.append("0 to speak to a person" if self._tools.transfer_targets else "")
        parts.append("or star to hear this again.")
        return ", ".join(p for p in parts if p)

    def _not_understood(self) -> str:
        return f"Sorry, I didn't understand that. I'm only a simple demo. {self._can_do()}"

    def _goodbye(self) -> Reply:
        return Reply(
            text=f"Thank you for calling {self._title}. Goodbye!",
            actions=[HangupAction(reason="caller_goodbye")],
        )

    def _fixed_sentences(self) -> frozenset[str]:
        texts = [
            self.greeting(),
            self._menu_text(),
            self._not_understood(),
            self._goodbye().text,
            ANYTHING_ELSE,
            ASK_WHEN,
            "You're welcome. " + ANYTHING_ELSE,
            f"{STILL_THERE} {self._can_do()}",
            ASK_MEMBER_ID,
            *(e.answer for e in self._tools.knowledge.entries),
        ]
        out: set[str] = set()
        for text in texts:
            splitter = SentenceSplitter()
            out.update(splitter.feed(text))
            out.add(splitter.flush())
        out.discard("")
        return frozenset(out)

    def cacheable(self, sentence: str) -> bool:
        return sentence in self._fixed or is_fixed(sentence)

    # ------------------------------------------------------------------ turns

    async def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        reply = await self.reply(turn)
        yield reply.text
        for action in reply.actions:
            yield action

    async def reply(self, turn: TurnInput) -> Reply:
        """Decide this turn's reply from the input and the history (no other state)."""
        if turn.kind == "call_started":
            if turn.outbound is not None:
                return self._outbound_opening(turn)
            return Reply(text=self.greeting())
        fixed = fixed_reply(turn)
        if fixed is not None:
            text, action = fixed
            if action is None:  # the first silence: remind the caller what works
                return Reply(text=f"{text} {self._can_do()}")
            return Reply(text=text, actions=[action])
        said = last_assistant(turn.history)
        if turn.kind == "utterance" and _asked_to_confirm(turn.history):
            # The answer to an outbound reminder: yes ends the call, no too (politely).
            if YES.search(turn.text) and not NO.search(turn.text):
                return Reply(
                    text=outbound_script.CONFIRMED, actions=[HangupAction(reason="confirmed")]
                )
            if NO.search(turn.text):
                return Reply(
                    text=outbound_script.DECLINED, actions=[HangupAction(reason="declined")]
                )
        if turn.kind == "digits":
            return await self._on_entry(turn, said, turn.text.strip())
        if turn.kind == "dtmf":
            return await self._on_key(turn, said, turn.text.strip())
        reply = await self._on_utterance(turn, said, turn.text.strip())
        if turn.keys and reply.text == self._not_understood():
            # Words we cannot place, a key pressed while saying them: the key decides.
            return await self._on_key(turn, said, turn.keys[-1])
        return reply

    def _outbound_opening(self, turn: TurnInput) -> Reply:
        """A call we placed: open with why to a person; leave a message on a machine."""
        ctx = turn.outbound
        assert ctx is not None
        if ctx.person:
            return Reply(text=outbound_script.opening(ctx, org=self._title))
        return Reply(
            text=outbound_script.voicemail(ctx, org=self._title),
            actions=[HangupAction(reason="voicemail")],
        )

    async def _on_key(self, turn: TurnInput, said: str, digit: str) -> Reply:
        confirm = _CONFIRM_RE.search(said)
        if confirm and digit in ("1", "2"):
            if digit == "1":
                return await self._book(turn, confirm.group("when"), confirm.group("name"))
            return Reply(text="OK, I haven't booked anything. " + ANYTHING_ELSE)
        if digit == "1":
            return Reply(text=ASK_WHEN)
        if digit in self._menu:
            return Reply(text=f"{self._menu[digit].answer} {ANYTHING_ELSE}")
        if digit == "0":
            return self._transfer()
        if digit == "*":
            return Reply(text=self._menu_text())
        return Reply(text="Sorry, that key does nothing here. " + self._menu_text())

    async def _on_utterance(self, turn: TurnInput, said: str, text: str) -> Reply:
        if not text:
            return Reply(text=self._not_understood())
        if GOODBYE.search(text):
            return self._goodbye()
        booking = await self._continue_booking(turn, said, text)
        if booking is not None:
            return booking
        if MEMBER.search(text):
            return await self._ask_member_id(turn)
        if said.endswith(ANYTHING_ELSE) and NO.search(text) and not YES.search(text):
            if not (BOOK.search(text) or self._tools.knowledge.match(text)):
                return self._goodbye()
        if REPEAT.search(text):
            return Reply(text=said or self.greeting())
        if PERSON.search(text):
            return self._transfer()
        if MY_BOOKINGS.search(text):
            return await self._list_bookings(turn)
        if BOOK.search(text):
            return self._start_booking(text)
        answer = self._tools.lookup(text)
        if answer:
            return Reply(text=f"{answer} {ANYTHING_ELSE}")
        if THANKS.search(text):
            return Reply(text="You're welcome. " + ANYTHING_ELSE)
        return Reply(text=self._not_understood())

    # ------------------------------------------------------------------ keypad entry

    async def _ask_member_id(self, turn: TurnInput, prefix: str = "") -> Reply:
        await self._tools.collect_digits(turn.call_sid, num_digits=MEMBER_DIGITS)
        return Reply(text=prefix + ASK_MEMBER_ID)

    async def _on_entry(self, turn: TurnInput, said: str, digits: str) -> Reply:
        if not said.endswith(ASK_MEMBER_ID):
            return Reply(text="Sorry, I wasn't expecting a number. " + self._can_do())
        if len(digits) != MEMBER_DIGITS or not digits.isdigit():
            return await self._ask_member_id(turn, "Sorry, a member ID has 6 digits. ")
        return Reply(
            text=f"Thank you. I have member ID {' '.join(digits)}. I'm only a demo, so I can't "
            f"look it up, but a real assistant could now. {ANYTHING_ELSE}"
        )

    # ------------------------------------------------------------------ booking

    def _start_booking(self, text: str) -> Reply:
        return self._ask_for(find_day(text), find_time(text))

    def _ask_for(self, day: str | None, when_time: str | None) -> Reply:
        if day and when_time:
            return Reply(text=f"OK, {day} {when_time}. {ASK_NAME}")
        if day:
            return Reply(text=f"OK, {day}. What time would suit you?")
        if when_time:
            return Reply(text=f"OK, {when_time}. Which day would suit you?")
        return Reply(text=ASK_WHEN)

    async def _continue_booking(self, turn: TurnInput, said: str, text: str) -> Reply | None:
        """The next booking step if the agent's last words were a booking question."""
        confirm = _CONFIRM_RE.search(said)
        name_q = _ASK_NAME_RE.search(said)
        time_q = _ASK_TIME_RE.search(said)
        day_q = _ASK_DAY_RE.search(said)
        asking_when = said.endswith(ASK_WHEN)
        if not (confirm or name_q or time_q or day_q or asking_when):
            return None
        if CANCEL.search(text):
            return Reply(text="OK, I've cancelled that booking. " + ANYTHING_ELSE)
        if confirm:
            yes, no = bool(YES.search(text)), bool(NO.search(text))
            if yes and not no:
                return await self._book(turn, confirm.group("when"), confirm.group("name"))
            if no and not yes:
                return Reply(text="OK, I haven't booked anything. " + ANYTHING_ELSE)
            return Reply(text=f"Sorry, was that a yes? {said[confirm.start() :]}")
        if name_q:
            return self._take_name(text, name_q.group("when"), said[name_q.start() :])
        new_day, new_time = find_day(text), find_time(text)
        partial = time_q or day_q
        question = said[partial.start() :] if partial else ASK_WHEN
        # "Are you open on Saturday?" is a question, not a day: answer it, ask again.
        answer = self._tools.lookup(text)
        if answer and QUESTION.search(text) and not (new_day and new_time):
            return Reply(text=f"{answer} {question}")
        if new_day or new_time:
            day = new_day or (time_q.group("day") if time_q else None)
            when_time = new_time or (day_q.group("time") if day_q else None)
            return self._ask_for(day, when_time)
        if answer:
            return Reply(text=f"{answer} {question}")
        return Reply(
            text=f"Sorry, I didn't catch that. For example, you could say Tuesday at 10 am. "
            f"{question}"
        )

    def _take_name(self, text: str, when: str, question: str) -> Reply:
        answer = self._tools.lookup(text) if QUESTION.search(text) else None
        if answer:
            return Reply(text=f"{answer} {question}")
        name = clean_name(text)
        if not name or len(name.split()) > 5 or len(name) > 60:
            return Reply(text=f"Sorry, I didn't catch the name. {ASK_NAME}")
        return Reply(text=f"So that's {when}, for {name}. {CONFIRM}")

    async def _book(self, turn: TurnInput, when: str, name: str) -> Reply:
        try:
            booking = await self._tools.book_appointment(turn.call_sid, name=name, when=when)
        except ToolError:
            return Reply(text="Sorry, I couldn't book that. " + ASK_WHEN)
        return Reply(
            text=f"Done! You're booked for {booking.when}, under the name {booking.name}. "
            f"Your confirmation code is {spell(booking.confirmation)}. {ANYTHING_ELSE}"
        )

    async def _list_bookings(self, turn: TurnInput) -> Reply:
        bookings = await self._tools.list_appointments(turn.call_sid)
        if not bookings:
            return Reply(text="You haven't booked anything on this call yet. " + ANYTHING_ELSE)
        listed = " ".join(
            f"{b.when}, for {b.name}, code {spell(b.confirmation)}." for b in bookings
        )
        return Reply(text=f"On this call you booked: {listed} {ANYTHING_ELSE}")

    def _transfer(self) -> Reply:
        try:
            action = self._tools.transfer("")
        except ToolError:
            return Reply(
                text="I'm only a demo, so there's no one I can transfer you to. " + self._can_do()
            )
        return Reply(text="Of course. I'm transferring you to a person now.", actions=[action])
