"""What the agent says on calls it placed: the opening, the voicemail message, the model's note.

The words depend on the call's purpose and parameters (``CallStarted.outbound``). The opening
is spoken only to a person (AMD ``human``, or AMD off); a machine, a fax or an ``unknown``
answer gets the short message and the call ends: a voicemail is never conversed with.
"""

from __future__ import annotations

from shared.outbound import OutboundContext

CONFIRM_QUESTION = "Is that still good for you?"
CONFIRMED = "Great, thank you. We look forward to seeing you. Goodbye!"
DECLINED = "OK, thank you for letting us know. Please call us to find another time. Goodbye!"


def _about(ctx: OutboundContext) -> str:
    booking = ctx.params.get("booking", "").strip()
    if ctx.purpose == "reminder":
        return f"to confirm your appointment {booking}".rstrip()
    if ctx.purpose == "follow_up" or ctx.purpose == "follow-up":
        return "to follow up on your recent visit"
    return f"about your {ctx.purpose.replace('_', ' ')}"


def opening(ctx: OutboundContext, *, org: str) -> str:
    """First words to a person who answered."""
    if ctx.purpose == "reminder":
        return f"Hello, this is {org} calling {_about(ctx)}. {CONFIRM_QUESTION}"
    return f"Hello, this is {org} calling {_about(ctx)}. Do you have a moment?"


def voicemail(ctx: OutboundContext, *, org: str) -> str:
    """The message left after the beep (then the call ends)."""
    return (
        f"Hello, this is {org} calling {_about(ctx)}. "
        "Please call us back if anything needs to change. Thank you, goodbye."
    )


def system_note(ctx: OutboundContext) -> str:
    """For a language model: this call is ours, why, with what, and who answered."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(ctx.params.items())) or "none"
    who = ctx.answered_by or ("not checked" if not ctx.amd else "not known yet")
    return (
        "This is an OUTBOUND call: you called the person, they did not call you. "
        f"Purpose: {ctx.purpose}. Parameters: {params}. Answered by: {who}. "
        "Open by saying who you are and why you are calling, in one or two short sentences, "
        "then let them answer."
    )
