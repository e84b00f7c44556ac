"""What the agent says on calls it placed (services/agent/outbound_script.py)."""

from __future__ import annotations


async def test_the_demo_agent_takes_a_late_yes_to_the_reminder() -> None:
    """A silence reprompt between the reminder and the answer does not lose the question."""
    from services.agent.providers.base import HangupAction, TurnInput
    from services.agent.providers.demo import DemoAgent
    from services.agent.tools import CallTools
    from shared.outbound import OutboundContext
    from shared.settings import Settings

    settings = Settings(redis_url="")
    agent = DemoAgent(settings=settings, tools=CallTools(settings=settings, store=None))
    ctx = OutboundContext(purpose="reminder", params={"booking": "on Tuesday"}, answered_by="human")
    opening = await agent.reply(TurnInput(call_sid="CA1", kind="call_started", outbound=ctx))
    assert opening.text.endswith(
        "to confirm your appointment on Tuesday. Is that still good for you?"
    )
    history = [
        {"role": "assistant", "content": opening.text},
        {"role": "assistant", "content": "Are you still there? I can book an appointment."},
    ]
    yes = await agent.reply(
        TurnInput(call_sid="CA1", kind="utterance", text="Yes.", history=history)
    )
    assert "look forward" in yes.text and isinstance(yes.actions[0], HangupAction)
    machine = ctx.model_copy(update={"answered_by": "machine_end_beep"})
    message = await agent.reply(TurnInput(call_sid="CA1", kind="call_started", outbound=machine))
    assert "?" not in message.text and message.actions[0] == HangupAction(reason="voicemail")
