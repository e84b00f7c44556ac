"""Retries with backoff inside a deadline, for provider calls (tenacity underneath).

Streams are retried only until their first item: once output has been used (audio played,
text spoken) a replay would duplicate it, so later failures propagate to the caller, which
speaks its fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared.errors import ProviderError, ProviderTimeout
from shared.metrics import PROVIDER_ERRORS, PROVIDER_RETRIES

T = TypeVar("T")

_backoff = wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.1)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ProviderError) and exc.retry_after is not None:
        return min(exc.retry_after, 5.0)
    return float(_backoff(state))


def _retrying(*, service: str, provider: str, attempts: int, deadline_s: float) -> AsyncRetrying:
    def before_sleep(state: RetryCallState) -> None:
        PROVIDER_RETRIES.labels(service, provider).inc()

    return AsyncRetrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline_s),
        wait=_wait,
        retry=retry_if_exception(_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


def _count(exc: BaseException, *, service: str, provider: str) -> None:
    kind = type(exc).__name__ if isinstance(exc, ProviderError) else "unexpected"
    PROVIDER_ERRORS.labels(service, provider, kind).inc()


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    service: str,
    provider: str,
    attempts: int = 3,
    deadline_s: float = 8.0,
    timeout_s: float = 5.0,
) -> T:
    """Await ``fn()`` with a per-attempt timeout, retrying retryable ProviderErrors."""
    async for attempt in _retrying(
        service=service, provider=provider, attempts=attempts, deadline_s=deadline_s
    ):
        with attempt:
            try:
                return await asyncio.wait_for(fn(), timeout_s)
            except TimeoutError as e:
                _count(e, service=service, provider=provider)
                raise ProviderTimeout("provider timed out", provider=provider) from e
            except ProviderError as e:
                _count(e, service=service, provider=provider)
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def stream_with_retries(
    make: Callable[[], AsyncIterator[T]],
    *,
    service: str,
    provider: str,
    attempts: int = 3,
    deadline_s: float = 8.0,
    first_item_timeout_s: float = 5.0,
    idle_timeout_s: float = 10.0,
) -> AsyncIterator[T]:
    """Iterate ``make()``, retrying until the first item arrives; then time out idle gaps.

    Raises :class:`ProviderError` (or :class:`ProviderTimeout`) when retries are exhausted
    or the stream fails after output began.
    """
    stream: AsyncIterator[T] | None = None
    first: T | None = None
    async for attempt in _retrying(
        service=service, provider=provider, attempts=attempts, deadline_s=deadline_s
    ):
        with attempt:
            stream = make()
            try:
                first = await asyncio.wait_for(anext(stream), first_item_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError as e:
                _count(e, service=service, provider=provider)
                await _close(stream)
                raise ProviderTimeout("no output before deadline", provider=provider) from e
            except ProviderError as e:
                _count(e, service=service, provider=provider)
                await _close(stream)
                raise
    assert stream is not None
    yield first  # type: ignore[misc]
    try:
        while True:
            try:
                item = await asyncio.wait_for(anext(stream), idle_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError as e:
                _count(e, service=service, provider=provider)
                raise ProviderTimeout("provider stalled mid-stream", provider=provider) from e
            except ProviderError as e:
                _count(e, service=service, provider=provider)
                raise
            yield item
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken provider stream must not mask the cause
            pass
