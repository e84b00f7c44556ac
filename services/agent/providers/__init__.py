"""Agent providers: one module each, behind :class:`services.agent.providers.base.AgentProvider`."""
