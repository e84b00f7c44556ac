"""Our own error types: vendor SDK errors are wrapped in these so services handle one family."""

from __future__ import annotations


class ProviderError(Exception):
    """A speech or language provider failed.

    ``retryable`` says whether trying again may help (timeouts, 429, 5xx, dropped sockets);
    ``retry_after`` is the provider's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = True,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class ProviderTimeout(ProviderError):
    """The provider did not answer within its deadline."""


class ProviderAuthError(ProviderError):
    """Credentials were refused (401/403): retrying will not help."""

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message, provider=provider, retryable=False, status=status)


class ProviderUnavailable(ProviderError):
    """The provider's SDK (an optional extra) is not installed."""

    def __init__(self, *, provider: str, extra: str) -> None:
        super().__init__(
            f"provider {provider!r} needs the '{extra}' extra: pip install 'voiceagent[{extra}]'",
            provider=provider,
            retryable=False,
        )
