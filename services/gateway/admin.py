"""Privileged gateway endpoints: live calls, WebSocket status and metrics, data export.

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>`` (401 without, also when no token is
configured). Exports (``/calls/{sid}/transcript``, ``/calls/{sid}/recording``) first write an
audit record to JetStream and are refused (503) when it cannot be stored: no audit, no export.
Transcripts are read from the agent's Redis history (key layout in ``shared/callstate.py``,
entries in ``shared/history_entry.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from services.gateway import stream_metrics
from services.gateway.auth import AdminAuth
from services.gateway.limits import client_ip, parse_networks
from services.gateway.recording import RecordingStore
from services.gateway.runtime import Gateway
from shared import callstate
from shared.audit import AuditLog, Outcome
from shared.history_entry import BargeInCut, HistoryEntry, read_cuts
from shared.logging import kv
from shared.settings import Settings
from shared.subjects import call_root

log = logging.getLogger(__name__)

SERVICE = "gateway"
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _valid_sid(call_sid: str) -> bool:
    try:
        call_root(call_sid)
    except ValueError:
        return False
    return True


def transcript_from_entries(
    entries: list[HistoryEntry], cuts: dict[int, BargeInCut]
) -> list[dict[str, Any]]:
    """The spoken conversation: user and assistant turns, with where barge-in cut a reply."""
    out: list[dict[str, Any]] = []
    for e in entries:
        if e.role not in ("user", "assistant") or not isinstance(e.content, str) or not e.content:
            continue
        item: dict[str, Any] = {"role": e.role, "turn": e.turn, "text": e.content}
        cut = cuts.get(e.turn) if e.turn is not None else None
        if e.role == "assistant" and cut is not None:
            item["interrupted"] = {"seq": cut.seq, "heard": cut.text}
        out.append(item)
    return out


class Admin:
    """State of the privileged routes (auth, audit writer, Redis reader, recordings)."""

    def __init__(self, *, gateway: Gateway, settings: Settings) -> None:
        self.gw = gateway
        self.settings = settings
        self.auth = AdminAuth.from_setting(settings.admin_token.get_secret_value())
        self.trusted = parse_networks(settings.trusted_proxies)
        self.recordings: RecordingStore | None = gateway.recordings
        self._audit: AuditLog | None = None
        self._redis: Any = None

    def actor(self, request: Request) -> str:
        """The authenticated actor, or 401."""
        who = self.auth.actor(request.headers.get("authorization"))
        if who is None:
            log.warning("privileged request refused", **kv(path=request.url.path))
            raise HTTPException(status_code=401, detail="unauthorized", headers=_UNAUTHORIZED)
        return who

    async def audit(
        self,
        request: Request,
        *,
        actor: str,
        action: str,
        call_sid: str | None,
        outcome: Outcome,
        target: str = "",
        detail: str = "",
    ) -> None:
        """Store the audit record, or 503 (the export does not happen)."""
        nc = self.gw.nc
        if nc is None or not nc.is_connected:
            raise HTTPException(status_code=503, detail="audit trail unavailable")
        if self._audit is None:
            self._audit = AuditLog(
                nc=nc, service=SERVICE, max_age_days=self.settings.audit_max_age_days
            )
        peer = request.client.host if request.client else None
        try:
            await self._audit.record(
                actor=actor,
                action=action,
                call_sid=call_sid,
                outcome=outcome,
                client=client_ip(peer, request.headers.get("x-forwarded-for"), self.trusted),
                target=target,
                detail=detail,
            )
        except Exception as e:
            log.error("audit record not stored; export refused", **kv(error=type(e).__name__))
            raise HTTPException(status_code=503, detail="audit trail unavailable") from None

    def redis(self) -> Any:
        if self._redis is None:
            self._redis = callstate.redis_client(
                self.settings.redis_url,
                settings=self.settings,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
            )
        return self._redis

    async def read_transcript(self, call_sid: str) -> list[dict[str, Any]] | None:
        r = self.redis()
        raw = await r.lrange(callstate.call_key(callstate.HISTORY, call_sid), 0, -1)
        heard = await r.hgetall(callstate.call_key(callstate.HEARD, call_sid))
        if not raw:
            return None
        entries: list[HistoryEntry] = []
        for item in raw:
            try:
                entries.append(HistoryEntry.from_stored(item))
            except ValueError:
                continue
        return transcript_from_entries(entries, read_cuts(heard))

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def admin_router(admin: Admin) -> APIRouter:
    """The privileged routes, all behind the bearer token."""
    router = APIRouter()
    auth = Depends(admin.actor)

    @router.get("/calls")
    async def calls(actor: str = auth) -> JSONResponse:
        live = [
            {
                "call_sid": s.call_sid,
                "stream_sid": s.stream_sid,
                "age_s": round(s.age_s, 1),
                "interrupts": s.interrupts,
            }
            for s in list(admin.gw.calls.values())
        ]
        return JSONResponse({"gateway": admin.gw.gateway_id, "calls": live})

    @router.get("/websocket-status")
    async def websocket_status(actor: str = auth) -> JSONResponse:
        gw = admin.gw
        return JSONResponse(
            {
                "gateway": gw.gateway_id,
                "connected": gw.connected,
                "draining": gw.draining,
                "calls": len(gw.calls),
                "sockets": len(gw.streams),
                "pending_starts": gw.tokens.pending,
                "max_calls": admin.settings.max_calls,
            }
        )

    @router.get("/websocket-metrics")
    async def websocket_metrics(actor: str = auth) -> Response:
        gw = admin.gw
        body = stream_metrics.render(streams=lambda: len(gw.streams), calls=lambda: len(gw.calls))
        return Response(content=body, media_type=stream_metrics.CONTENT_TYPE)

    @router.get("/calls/{call_sid}/transcript")
    async def transcript(call_sid: str, request: Request, actor: str = auth) -> JSONResponse:
        if not _valid_sid(call_sid):
            raise HTTPException(status_code=400, detail="invalid call sid")
        if not admin.settings.redis_url:
            raise HTTPException(status_code=503, detail="no history store configured")
        try:
            turns = await admin.read_transcript(call_sid)
        except Exception as e:
            log.error("transcript read failed", **kv(call=call_sid, error=type(e).__name__))
            raise HTTPException(status_code=503, detail="history store unavailable") from None
        outcome: Outcome = "ok" if turns is not None else "not_found"
        await admin.audit(
            request, actor=actor, action="transcript.export", call_sid=call_sid, outcome=outcome
        )
        log.info("transcript exported", **kv(call=call_sid, actor=actor, outcome=outcome))
        if turns is None:
            raise HTTPException(status_code=404, detail="no transcript")
        return JSONResponse({"call_sid": call_sid, "turns": turns})

    @router.get("/calls/{call_sid}/recording")
    async def recording(call_sid: str, request: Request, actor: str = auth) -> Response:
        if not _valid_sid(call_sid):
            raise HTTPException(status_code=400, detail="invalid call sid")
        store = admin.recordings
        if store is None:
            raise HTTPException(status_code=404, detail="recordings are off")
        audio = await asyncio.to_thread(store.load, call_sid)
        outcome: Outcome = "ok" if audio is not None else "not_found"
        await admin.audit(
            request, actor=actor, action="recording.export", call_sid=call_sid, outcome=outcome
        )
        log.info("recording exported", **kv(call=call_sid, actor=actor, outcome=outcome))
        if audio is None:
            raise HTTPException(status_code=404, detail="no recording")
        return Response(audio, media_type="audio/basic")

    return router
