"""The built-in call tools every agent provider shares (the demo agent and the LLM ones).

:class:`CallTools` does the work (knowledge lookup, bookings in Redis, hang-up and transfer
actions) and describes each tool as an OpenAI function-calling schema, so an LLM provider
offers exactly these tools and runs them through :meth:`CallTools.run`.

Transfers go only to the targets configured in ``TRANSFER_TARGETS``: a model talked into
"transfer me to +1 900..." by a caller must not be able to dial arbitrary numbers.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from services.agent.digits import DigitCollector, DigitRequest
from services.agent.knowledge import Knowledge
from services.agent.providers.base import HangupAction, TransferAction
from services.agent.store import Store, call_key
from shared.logging import kv
from shared.settings import Settings
from shared.transfer_targets import parse_targets

log = logging.getLogger(__name__)

APPOINTMENTS_TTL_S = 7 * 86400.0  # a demo store: a real deployment books in its own system
_CONFIRMATION_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: easier to spell out
_MAX_FIELD = 120


class ToolError(ValueError):
    """A tool was called with arguments it cannot use (the message is read by the model)."""


@dataclass(frozen=True, kw_only=True)
class ToolOutcome:
    """A tool's result: ``text`` for the model, and the call action it asks for, if any."""

    text: str
    action: HangupAction | TransferAction | None = None


@dataclass(frozen=True, kw_only=True)
class Booking:
    """A stored appointment."""

    confirmation: str
    name: str
    when: str
    booked_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "confirmation": self.confirmation,
            "name": self.name,
            "when": self.when,
            "booked_at": self.booked_at,
        }


def spell(confirmation: str) -> str:
    """A confirmation code as TTS should read it: one character at a time."""
    return " ".join(confirmation)


_SCHEMAS: dict[str, dict[str, Any]] = {
    "hang_up": {
        "description": "End the call. Say a short goodbye first; the call ends once it has played.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
    "transfer": {
        "description": "Transfer the caller to a person. Say that you are transferring first.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string", "description": "who to transfer to"}},
            "required": ["to"],
            "additionalProperties": False,
        },
    },
    "lookup": {
        "description": "Look up the business's own information (opening hours, address, "
        "parking, services, prices) to answer a caller's question.",
        "parameters": {
            "type": "object",
            "properties": {"question": {"type": "string", "description": "the question"}},
            "required": ["question"],
            "additionalProperties": False,
        },
    },
    "book_appointment": {
        "description": "Book an appointment once you have the patient's name and the day and "
        "time, and the caller has confirmed them. Returns a confirmation code.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "the patient's name"},
                "when": {
                    "type": "string",
                    "description": "day and time as the caller said it, e.g. 'Tuesday at 10 am'",
                },
            },
            "required": ["name", "when"],
            "additionalProperties": False,
        },
    },
    "list_appointments": {
        "description": "List the appointments booked during this call.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
    "collect_digits": {
        "description": "Have the caller type a number on the phone keypad (member id, date of "
        "birth, callback number). The keys they press next arrive as one message "
        "'[caller entered ... on the keypad]'. After calling it, say the prompt to the caller.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "what to ask the caller to type"},
                "num_digits": {"type": "integer", "minimum": 1, "maximum": 32},
                "finish_on_key": {
                    "type": "string",
                    "enum": ["#", "*", ""],
                    "description": "key that ends the entry early (default #)",
                },
            },
            "required": ["prompt", "num_digits"],
            "additionalProperties": False,
        },
    },
}


class CallTools:
    """Built-in tools of a call. Stateless between turns: bookings live in the store."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store | None = None,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.store = store if store is not None else Store(url="")
        if knowledge is None:
            knowledge = Knowledge.load(settings.knowledge_file)
        self.knowledge = knowledge
        self.transfer_targets = parse_targets(settings.transfer_targets)
        self.digits = DigitCollector(store=self.store)

    # ------------------------------------------------------------------ the tools

    def hang_up(self, reason: str = "agent") -> HangupAction:
        """End the call after the current turn has played."""
        return HangupAction(reason=reason)

    def transfer(self, to: str) -> TransferAction:
        """Transfer to a configured target, by name or number; :class:`ToolError` otherwise."""
        if not self.transfer_targets:
            raise ToolError("Transfers are not available on this line.")
        key = to.strip().lower()
        if key in self.transfer_targets:
            return TransferAction(to=self.transfer_targets[key])
        for number in self.transfer_targets.values():
            if number == to.strip():
                return TransferAction(to=number)
        if len(self.transfer_targets) == 1 or not key:
            # One destination (or none named): "a person" means that one.
            return TransferAction(to=next(iter(self.transfer_targets.values())))
        names = ", ".join(self.transfer_targets)
        raise ToolError(f"Unknown transfer target. Available: {names}.")

    def lookup(self, question: str) -> str | None:
        """The knowledge file's answer to ``question``, or ``None``."""
        return self.knowledge.answer(question)

    async def book_appointment(self, call_sid: str, *, name: str, when: str) -> Booking:
        """Store an appointment for this call; returns it with its confirmation code."""
        name, when = " ".join(name.split()), " ".join(when.split())
        if not name or not when:
            raise ToolError("Both the patient's name and the day and time are needed.")
        if len(name) > _MAX_FIELD or len(when) > _MAX_FIELD:
            raise ToolError("The name or the time is too long.")
        booking = Booking(
            confirmation="".join(secrets.choice(_CONFIRMATION_ALPHABET) for _ in range(6)),
            name=name,
            when=when,
            booked_at=time.time(),
        )
        await self.store.hset(
            call_key("appt", call_sid),
            booking.confirmation,
            json.dumps(booking.to_dict()),
            ttl_s=APPOINTMENTS_TTL_S,
        )
        log.info("appointment booked", **kv(call=call_sid))
        return booking

    async def collect_digits(
        self, call_sid: str, *, num_digits: int, finish_on_key: str = "#"
    ) -> DigitRequest:
        """Gather the caller's next keys into one ``digits`` turn (see :mod:`.digits`)."""
        try:
            request = DigitRequest(num_digits=num_digits, finish_on_key=finish_on_key)
        except ValueError as e:
            raise ToolError(str(e)) from e
        await self.digits.start(call_sid, request)
        return request

    async def list_appointments(self, call_sid: str) -> list[Booking]:
        """Appointments booked during this call, oldest first."""
        out: list[Booking] = []
        for conf, data in (await self.store.hgetall(call_key("appt", call_sid))).items():
            try:
                d = json.loads(data)
                out.append(
                    Booking(
                        confirmation=conf,
                        name=str(d["name"]),
                        when=str(d["when"]),
                        booked_at=float(d["booked_at"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda b: b.booked_at)

    # ------------------------------------------------------------------ function calling

    @property
    def names(self) -> list[str]:
        """Names of the tools offered (``transfer`` only when targets are configured)."""
        return [n for n in _SCHEMAS if n != "transfer" or self.transfer_targets]

    def has(self, name: str) -> bool:
        """Whether ``name`` is one of the offered built-in tools."""
        return name in self.names

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI chat-completions tool definitions (``{"type": "function", "function": ...}``)."""
        out: list[dict[str, Any]] = []
        for name in self.names:
            spec = json.loads(json.dumps(_SCHEMAS[name]))  # a copy callers may modify
            if name == "transfer":
                spec["parameters"]["properties"]["to"]["enum"] = list(self.transfer_targets)
            out.append({"type": "function", "function": {"name": name, **spec}})
        return out

    def responses_schemas(self) -> list[dict[str, Any]]:
        """The same tools in the Responses API's flat shape (``{"type": "function", "name"}``)."""
        return [{"type": "function", **s["function"]} for s in self.schemas()]

    async def run(self, name: str, args: dict[str, Any], *, call_sid: str) -> ToolOutcome:
        """Run a tool by name with model-supplied arguments. Never raises for bad input."""
        try:
            return await self._run(name, args, call_sid=call_sid)
        except ToolError as e:
            return ToolOutcome(text=f"Tool error: {e}")
        except Exception:
            log.exception("tool failed", **kv(call=call_sid, tool=name))
            return ToolOutcome(text="Tool error: the tool failed; apologize and offer help.")

    async def _run(self, name: str, args: dict[str, Any], *, call_sid: str) -> ToolOutcome:
        if not self.has(name):
            raise ToolError(f"there is no tool named {name}")
        if name == "hang_up":
            return ToolOutcome(text="The call will end after your goodbye.", action=self.hang_up())
        if name == "transfer":
            action = self.transfer(_str_arg(args, "to", required=False))
            return ToolOutcome(text="Transferring after your next sentence.", action=action)
        if name == "lookup":
            answer = self.lookup(_str_arg(args, "question"))
            return ToolOutcome(text=answer or "No answer in the knowledge base.")
        if name == "book_appointment":
            b = await self.book_appointment(
                call_sid, name=_str_arg(args, "name"), when=_str_arg(args, "when")
            )
            return ToolOutcome(
                text=json.dumps(
                    {"booked": True, "confirmation": spell(b.confirmation), "when": b.when}
                )
            )
        if name == "collect_digits":
            prompt = _str_arg(args, "prompt")
            n = args.get("num_digits")
            if not isinstance(n, int) or isinstance(n, bool):
                raise ToolError("'num_digits' must be an integer")
            finish = args.get("finish_on_key", "#")
            req = await self.collect_digits(
                call_sid, num_digits=n, finish_on_key=finish if isinstance(finish, str) else "#"
            )
            end = f" or when they press {req.finish_on_key}" if req.finish_on_key else ""
            return ToolOutcome(
                text=f"Keypad entry started: up to {req.num_digits} digits, ending after "
                f"{req.num_digits}{end}. Now say to the caller: {prompt}"
            )
        bookings = await self.list_appointments(call_sid)
        return ToolOutcome(
            text=json.dumps(
                [{"confirmation": spell(b.confirmation), "when": b.when} for b in bookings]
            )
        )


def _str_arg(args: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = args.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolError(f"'{key}' must be a non-empty string")
    return value
