"""Helpers for the agent's bus tests: a private NATS server and a per-call message recorder.

A private server keeps these tests' queue group ``agent`` to themselves: an agent worker
someone else runs on the machine's NATS would otherwise take some of our turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import uuid4

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects
from shared.messages import (
    BusMessage,
    parse_control,
    parse_event,
    parse_reply,
)
from tests.natsserver import private_nats_server

__all__ = ["CallTap", "connect", "new_sid", "private_nats_server"]

M = TypeVar("M")


def new_sid() -> str:
    return "CA" + uuid4().hex


class CallTap:
    """Records every message of one call (``voice.<call>.>``), parsed by subject."""

    def __init__(self, nc: NATS, call_sid: str) -> None:
        self.nc = nc
        self.sid = call_sid
        self.messages: list[Any] = []
        self._changed = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> CallTap:
        self._sub = await self.nc.subscribe(subjects.call_all(self.sid), cb=self._on)
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        parse: dict[str, Callable[[bytes], Any]] = {
            "reply": parse_reply,
            "control": parse_control,
            "events": parse_event,
        }
        if kind in parse:
            try:
                self.messages.append(parse[kind](msg.data))
            except ValueError:
                return
            self._changed.set()

    async def send(self, subject: str, message: BusMessage | bytes) -> None:
        data = message if isinstance(message, bytes) else message.to_bytes()
        await self.nc.publish(subject, data)
        await self.nc.flush()

    def of(self, kind: type[M], **match: Any) -> list[M]:
        return [
            m
            for m in self.messages
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in match.items())
        ]

    async def wait_for(
        self, pred: Callable[[], bool], *, within: float = 5.0, what: str = "condition"
    ) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not pred():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages!r}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))


async def connect(url: str) -> NATS:
    nc: NATS = await nats.connect(url)
    return nc
