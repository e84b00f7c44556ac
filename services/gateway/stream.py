"""``WS /twilio-stream``: Twilio's bidirectional Media Streams protocol on one socket.

Checks the upgrade's signature before accepting, the call token on ``start``, then feeds the
messages to a :class:`~services.gateway.call.CallSession`. A bad frame (malformed, unknown,
oversized, binary, wrong stream) is counted, logged without its content, and dropped: the call
goes on. So are messages beyond the stream's rate limits (``STREAM_MESSAGE_RATE_PER_S``, and
``STREAM_DTMF_RATE_PER_S`` for keys), set above anything a phone sends. A frame over
``WS_MAX_MESSAGE_BYTES`` never gets here: the server closes its socket (1009) unread.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import time

from prometheus_client import Counter
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from services.gateway.call import CallSession
from services.gateway.console.auth import (
    CONSOLE_PROTOCOL,
    is_console_socket,
    redeem_console_upgrade,
)
from services.gateway.limits import TokenBucket, candidate_urls, forwarded_base, parse_networks
from services.gateway.recording import RecordingWriter
from services.gateway.runtime import Gateway
from services.gateway.security import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    signature_valid_any,
)
from services.gateway.twiml import PARAM_CALL_SID, PARAM_DIRECTION, PARAM_TOKEN
from shared.logging import kv
from shared.metrics import BAD_MESSAGES, STREAM_DROPS
from shared.twilio import Connected, DtmfMsg, Mark, Media, Start, Stop, parse_inbound

log = logging.getLogger(__name__)

SERVICE = "gateway"
PATH = "/twilio-stream"
START_TIMEOUT_S = 10.0  # a socket that sends no valid ``start`` by then is closed
BAD_LOG_LIMIT = 5  # bad frames logged per call (all are counted)
POLICY_VIOLATION = 1008

_BAD_TWILIO = BAD_MESSAGES.labels(SERVICE, "twilio")
_DROPPED_MESSAGES = STREAM_DROPS.labels(SERVICE, "message")
_DROPPED_DTMF = STREAM_DROPS.labels(SERVICE, "dtmf")


class _Refused(Exception):
    """Close the socket with 1008 (policy violation)."""


class TwilioStream:
    """One Twilio media-stream WebSocket."""

    def __init__(self, *, ws: WebSocket, gateway: Gateway) -> None:
        self._ws = ws
        self._gw = gateway
        self._session: CallSession | None = None
        self._stream_sid: str | None = None
        self._send_lock = asyncio.Lock()
        self._closed = False
        self.bad_frames = 0
        self._recorder: RecordingWriter | None = None
        self._console_sid: str | None = None  # a console softphone call, admitted for this SID
        st = gateway.settings
        # Floods cost money (turns, ASR time): a stream gets what a phone can send, no more.
        self._messages = TokenBucket(
            rate_per_s=st.stream_message_rate_per_s, burst=st.stream_message_burst
        )
        self._keys = TokenBucket(rate_per_s=st.stream_dtmf_rate_per_s, burst=st.stream_dtmf_burst)
        self.dropped = 0  # messages over the limits (counted, not logged one by one)

    def upgrade_allowed(self) -> bool:
        """Twilio signed this upgrade over our public ``wss://`` URL (or checks are off).

        A console softphone (it offers the console subprotocol) shows a single-use console
        token instead: see :mod:`services.gateway.console.auth`.
        """
        if is_console_socket(self._ws):
            self._console_sid = redeem_console_upgrade(self._ws, self._gw)
            return self._console_sid is not None
        s = self._gw.settings
        if not s.validate_signatures:
            return True
        peer = self._ws.client.host if self._ws.client else None
        trusted = parse_networks(s.trusted_proxies)
        fwd = forwarded_base(peer, self._ws.headers, trusted)
        return signature_valid_any(
            auth_token=s.twilio_auth_token.get_secret_value(),
            urls=candidate_urls(s.public_url, PATH, fwd, ws=True),
            params={},
            signature=self._ws.headers.get(SIGNATURE_HEADER),
            settings_header=self._ws.headers.get(SIGNATURE_SETTINGS_HEADER),
        )

    async def run(self) -> None:
        """Serve the socket until Twilio stops the stream, it drops, or we hang up."""
        if not self.upgrade_allowed():
            log.warning("stream upgrade refused: bad signature")
            await self._ws.close(code=POLICY_VIOLATION)
            return
        await self._ws.accept(subprotocol=CONSOLE_PROTOCOL if self._console_sid else None)
        reason = "disconnected"
        try:
            reason = await self._receive_loop()
        except _Refused:
            reason = "refused"
            await self.close(code=POLICY_VIOLATION)
        except WebSocketDisconnect:
            reason = "disconnected"
        except Exception as e:
            if isinstance(e, RuntimeError) and self._closed:
                reason = "closed"  # a receive after our own close (hangup): the socket is done
            else:
                call = self._session.call_sid if self._session is not None else None
                log.exception("media stream failed", **kv(call=call))
                reason = "error"
                await self.close(code=1011)
        finally:
            session = self._session
            if session is not None:
                try:
                    await session.end(reason)
                finally:
                    self._gw.remove_call(session)
            await self.close()
            await self._save_recording()

    async def _receive_loop(self) -> str:
        limit = self._gw.settings.ws_max_message_bytes
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._session is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._bad("no start")
                    raise _Refused
                try:
                    message = await asyncio.wait_for(self._ws.receive(), remaining)
                except TimeoutError:
                    self._bad("no start")
                    raise _Refused from None
            else:
                message = await self._ws.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return "disconnected"
            if not self._messages.allow():  # before parsing: the flood costs nothing more
                self._drop(_DROPPED_MESSAGES, "message")
                continue
            text = message.get("text")
            if text is None:
                self._bad("binary frame", size=len(message.get("bytes") or b""))
                continue
            if len(text) > limit:
                self._bad("oversized", size=len(text))
                continue
            if await self._dispatch(text):
                return "stop"

    async def _dispatch(self, text: str) -> bool:
        """Handle one text frame; True when the stream is over."""
        try:
            msg = parse_inbound(text)
        except ValidationError as e:
            self._bad("malformed", size=len(text), errors=e.error_count())
            return False
        session = self._session
        if isinstance(msg, Media):
            if session is None or msg.stream_sid != self._stream_sid:
                self._bad("media outside a started stream")
                return False
            if msg.media.track not in ("inbound", "inbound_track"):
                return False
            try:
                frame = msg.audio()
            except (binascii.Error, ValueError):
                self._bad("bad media payload", size=len(msg.media.payload))
                return False
            self._record(frame)
            await session.on_media(
                frame, str(msg.media.chunk or ""), str(msg.media.timestamp or "")
            )
            return False
        if isinstance(msg, Mark):
            if session is not None and msg.stream_sid == self._stream_sid:
                await session.on_mark(msg.mark.name)
            else:
                self._bad("mark outside a started stream")
            return False
        if isinstance(msg, DtmfMsg):
            if session is not None and msg.stream_sid == self._stream_sid:
                if not self._keys.allow():
                    self._drop(_DROPPED_DTMF, "dtmf")
                    return False
                await session.on_dtmf(msg.dtmf.digit)
            else:
                self._bad("dtmf outside a started stream")
            return False
        if isinstance(msg, Start):
            await self._start(msg)
            return False
        if isinstance(msg, Stop):
            if session is not None and msg.stream_sid != self._stream_sid:
                self._bad("stop for another stream")
                return False
            return True
        if isinstance(msg, Connected):
            return False
        return False  # pragma: no cover - the union is exhaustive

    async def _start(self, msg: Start) -> None:
        if self._session is not None:
            self._bad("second start")
            return
        info = msg.start
        params = dict(info.custom_parameters)
        token = params.pop(PARAM_TOKEN, None)
        if params.get(PARAM_CALL_SID) != info.call_sid or msg.stream_sid != info.stream_sid:
            log.warning("stream refused: call sid mismatch", **kv(call=info.call_sid))
            raise _Refused
        if self._console_sid is not None and info.call_sid != self._console_sid:
            log.warning("stream refused: not the console's call", **kv(call=info.call_sid))
            raise _Refused
        if not self._gw.tokens.redeem(token, info.call_sid):
            log.warning("stream refused: bad or reused token", **kv(call=info.call_sid))
            raise _Refused
        ledger = self._gw.token_ledger
        if ledger is not None and token is not None and not await ledger.first_use(token):
            log.warning("stream refused: token used on another gateway", **kv(call=info.call_sid))
            raise _Refused
        nc = self._gw.nc
        if nc is None:
            log.error("stream refused: bus not connected", **kv(call=info.call_sid))
            raise _Refused
        outbound = None
        if params.get(PARAM_DIRECTION) == "outbound":
            record = await self._gw.outbound.get(info.call_sid)
            if record is None:
                log.warning("stream refused: unknown outbound call", **kv(call=info.call_sid))
                raise _Refused
            outbound = record.context()

        async def amd_lookup() -> str | None:
            rec = await self._gw.outbound.get(info.call_sid)
            return rec.answered_by if rec is not None else None

        session = CallSession(
            nc=nc,
            settings=self._gw.settings,
            call_sid=info.call_sid,
            stream_sid=msg.stream_sid,
            gateway_id=self._gw.gateway_id,
            send=self.send,
            close=self.close,
            parameters=params,
            vad_pool=self._gw.vad_pool,
            outbound=outbound,
            amd_lookup=amd_lookup if outbound is not None else None,
        )
        if not self._gw.add_call(session):
            log.warning("stream refused: call already live here", **kv(call=info.call_sid))
            raise _Refused
        self._session = session
        self._stream_sid = msg.stream_sid
        if self._gw.recordings is not None:
            try:
                self._recorder = self._gw.recordings.writer(info.call_sid)
            except OSError as e:  # a full or read-only disk must not cost the call
                log.error("recording not started", **kv(call=info.call_sid, error=type(e).__name__))
        log.info("call started", **kv(call=info.call_sid))
        await session.start()

    def _record(self, frame: bytes) -> None:
        rec = self._recorder
        if rec is None:
            return
        try:
            rec.add(frame)
        except OSError as e:  # disk full: stop recording, the call goes on
            log.error("recording stopped", **kv(call=rec.call_sid, error=type(e).__name__))
            self._recorder = None
            rec.abort()

    async def _save_recording(self) -> None:
        rec = self._recorder
        self._recorder = None
        if rec is None:
            return
        try:
            await asyncio.to_thread(rec.close)
        except Exception as e:
            log.error("recording not saved", **kv(call=rec.call_sid, error=type(e).__name__))

    # ------------------------------------------------------------------ output

    async def send(self, text: str) -> None:
        """One text frame to Twilio (serialized: playback and barge-in both send)."""
        if self._closed:
            return
        async with self._send_lock:
            await self._ws.send_text(text)

    async def close(self, code: int = 1000) -> None:
        """Close the socket (Twilio then runs the next TwiML verb: none, so the call ends)."""
        if self._closed:
            return
        self._closed = True
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code)

    def _drop(self, counter: Counter, kind: str) -> None:
        counter.inc()
        self.dropped += 1
        if self.dropped == 1:  # once per call: the counter has the rest
            call = self._session.call_sid if self._session is not None else None
            log.warning("stream over its rate limit: excess dropped", **kv(kind=kind, call=call))

    def _bad(self, why: str, **fields: object) -> None:
        _BAD_TWILIO.inc()
        self.bad_frames += 1
        if self.bad_frames <= BAD_LOG_LIMIT:
            call = self._session.call_sid if self._session is not None else None
            log.warning("bad twilio frame dropped", **kv(why=why, call=call, **fields))
