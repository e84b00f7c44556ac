"""Outbound calls: ``POST /calls/outbound`` and Twilio's webhooks for the calls we place.

``POST /calls/outbound`` (admin token) runs the dial guards (:mod:`.dial_guards`), writes an
audit record (no audit, no dial), and asks Twilio to place the call (``calls.create``) with:

- ``url`` = ``PUBLIC_URL/outbound/twiml``: when the callee answers, Twilio fetches our
  ``<Connect><Stream>`` TwiML there; the call's stream token is issued then, for the CallSid;
- ``machine_detection=DetectMessageEnd`` with ``async_amd`` and its callback
  ``/outbound/amd``: Twilio reports ``AnsweredBy`` after a person spoke or a machine's beep;
- ``status_callback`` ``/outbound/status`` for initiated, ringing, answered, completed
  (``busy``/``no-answer``/``failed``/``canceled`` are recorded with their reason).

Every webhook is checked like ``/voice`` (``X-Twilio-Signature`` over the public URL). The
purpose and parameters never travel through Twilio: they are kept server side by CallSid
(:mod:`.outbound_records`) and reach the agent on ``CallStarted.outbound``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import MultiDict
from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import VoiceResponse

from services.gateway.admin import Admin
from services.gateway.call_control import CallControl
from services.gateway.dial_guards import DialGuards, DialRefused
from services.gateway.limits import candidate_urls, forwarded_base, read_form
from services.gateway.outbound_records import OutboundRecord
from services.gateway.runtime import Gateway
from services.gateway.security import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    signature_valid_any,
)
from services.gateway.twiml import PARAM_DIRECTION, busy_twiml, connect_twiml
from shared import subjects
from shared.audit import AuditLog, Outcome
from shared.logging import kv
from shared.messages import AmdResult, event
from shared.outbound import ANSWERED_BY_VALUES, NOT_ANSWERED, OutboundRequest
from shared.redact import phone_tag
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "gateway"
BASE_PATH = "/outbound"
TWIML_PATH = BASE_PATH + "/twiml"
STATUS_PATH = BASE_PATH + "/status"
AMD_PATH = BASE_PATH + "/amd"
RECORD_WAIT_S = 3.0  # Twilio may ask for TwiML before calls.create has returned to us
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
XML = "application/xml"


def hangup_twiml() -> str:
    """End a call we know nothing about."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


class Outbound:
    """Places outbound calls and handles their Twilio callbacks (one per gateway process)."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        admin: Admin,
        settings: Settings,
        call_control: CallControl | None = None,
        guards: DialGuards | None = None,
    ) -> None:
        self.gw = gateway
        self.admin = admin
        self.settings = settings
        self.control = call_control or CallControl.from_settings(settings)
        redis = admin.redis() if settings.redis_url else None
        self.guards = guards or DialGuards.from_settings(settings, redis=redis)
        self.records = gateway.outbound
        self._key = settings.twilio_auth_token.get_secret_value().encode()
        self._audit: AuditLog | None = None

    # ------------------------------------------------------------------ helpers

    def tag(self, number: str) -> str:
        return phone_tag(number, key=self._key)

    def signed(self, request: Request, path: str, params: MultiDict) -> bool:
        s = self.settings
        if not s.validate_signatures:
            return True
        peer = request.client.host if request.client else None
        fwd = forwarded_base(peer, request.headers, self.admin.trusted)
        query = request.url.query
        urls = [
            u + (f"?{query}" if query else "")
            for u in candidate_urls(s.public_url, path, fwd, ws=False)
        ]
        return signature_valid_any(
            auth_token=s.twilio_auth_token.get_secret_value(),
            urls=urls,
            params=params,
            signature=request.headers.get(SIGNATURE_HEADER),
            settings_header=request.headers.get(SIGNATURE_SETTINGS_HEADER),
        )

    async def _event(self, call_sid: str, name: str, **data: Any) -> None:
        nc = self.gw.nc
        if nc is None:
            return
        ev = event(call_sid=call_sid, service=SERVICE, name=name, **data)
        try:
            await nc.publish(subjects.events(call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))

    async def _result_audit(self, rec: OutboundRecord, detail: str) -> None:
        """The call's outcome on the audit trail (best effort: the call already happened)."""
        nc = self.gw.nc
        if nc is None or not nc.is_connected:
            log.warning("outbound outcome not audited: bus down", **kv(call=rec.call_sid))
            return
        if self._audit is None:
            self._audit = AuditLog(
                nc=nc, service=SERVICE, max_age_days=self.settings.audit_max_age_days
            )
        try:
            await self._audit.record(
                actor=rec.actor,
                action="outbound.result",
                call_sid=rec.call_sid,
                outcome="ok",
                client="twilio",
                target=rec.to_tag,
                detail=detail,
            )
        except Exception as e:
            log.error("outbound outcome not audited", **kv(error=type(e).__name__))

    # ------------------------------------------------------------------ dialing

    async def dial(self, request: Request, actor: str, req: OutboundRequest) -> JSONResponse:
        """Guards, audit, ``calls.create``, record."""
        s = self.settings
        if not s.outbound_from_number or not self.control.enabled:
            raise HTTPException(status_code=503, detail="outbound calling is not configured")
        tag = self.tag(req.to)

        async def audit(outcome: Outcome, detail: str, call_sid: str | None = None) -> None:
            await self.admin.audit(
                request,
                actor=actor,
                action="outbound.dial",
                call_sid=call_sid,
                outcome=outcome,
                target=tag,
                detail=detail,
            )

        try:
            dest = await self.guards.check(req.to)
        except DialRefused as e:
            await audit("denied", e.reason)
            log.warning("outbound dial refused", **kv(actor=actor, reason=e.reason))
            return JSONResponse({"error": e.reason, "detail": str(e)}, status_code=e.status)
        await audit("ok", "requested")  # no audit, no dial (503 raised above us)
        base = s.outbound_url
        fields: dict[str, Any] = {
            "to": dest.number,
            "from_": s.outbound_from_number,
            "url": base + "/twiml",
            "method": "POST",
            "status_callback": base + "/status",
            "status_callback_method": "POST",
            "status_callback_event": STATUS_EVENTS,
        }
        if req.amd:
            fields |= {
                "machine_detection": "DetectMessageEnd",
                "async_amd": "true",
                "async_amd_status_callback": base + "/amd",
                "async_amd_status_callback_method": "POST",
            }
        try:
            call_sid = await self.control.create_call(**fields)
        except TwilioRestException as e:
            await audit("error", f"twilio:{e.code or e.status}")
            log.warning("outbound dial failed", **kv(status=e.status, code=e.code))
            return JSONResponse(
                {"error": "twilio_refused", "detail": f"Twilio error {e.code}"}, status_code=502
            )
        except Exception as e:
            await audit("error", "twilio_unreachable")
            log.warning("outbound dial failed", **kv(error=type(e).__name__))
            return JSONResponse(
                {"error": "twilio_unreachable", "detail": "Twilio did not answer"}, status_code=502
            )
        rec = OutboundRecord(
            call_sid=call_sid,
            actor=actor,
            to_tag=tag,
            purpose=req.purpose,
            params=req.params,
            amd=req.amd,
        )
        await self.records.put(rec)
        try:
            await audit("ok", "queued", call_sid)
        except HTTPException:
            log.error("outbound dial placed but not audited", **kv(call=call_sid))
        await self._event(call_sid, "outbound.placed", purpose=req.purpose, amd=req.amd, dest=tag)
        log.info("outbound call placed", **kv(call=call_sid, actor=actor, purpose=req.purpose))
        return JSONResponse(
            {"call_sid": call_sid, "status": "queued", "purpose": req.purpose, "amd": req.amd},
            status_code=201,
        )

    # ------------------------------------------------------------------ Twilio's webhooks

    async def twiml(self, request: Request) -> Response:
        """The callee answered: our ``<Connect><Stream>`` with the call's token."""
        params = await self._webhook(request, TWIML_PATH)
        call_sid = params.get("CallSid", "")
        rec = await self.records.wait_for(call_sid, RECORD_WAIT_S)
        if rec is None:
            log.warning("outbound twiml for an unknown call", **kv(call=call_sid))
            return Response(hangup_twiml(), media_type=XML)
        token = await self.gw.admit(call_sid)
        if token is None:
            log.warning("outbound call turned away", **kv(call=call_sid))
            return Response(busy_twiml(), media_type=XML)
        twiml = connect_twiml(
            stream_url=self.settings.stream_url,
            call_sid=call_sid,
            token=token,
            extra={PARAM_DIRECTION: "outbound"},
        )
        return Response(twiml, media_type=XML)

    async def amd(self, request: Request) -> Response:
        """Twilio's AMD answer: stored, and told to the replica holding the stream."""
        params = await self._webhook(request, AMD_PATH)
        call_sid = params.get("CallSid", "")
        answered_by = params.get("AnsweredBy", "")
        if answered_by not in ANSWERED_BY_VALUES:
            raise HTTPException(status_code=400, detail="unknown AnsweredBy")
        duration = params.get("MachineDetectionDuration", "")
        detection_ms = int(duration) if duration.isdigit() else None
        rec = await self.records.get(call_sid)
        if rec is None:
            log.warning("amd result for an unknown call", **kv(call=call_sid))
            return Response(status_code=204)
        rec.answered_by = answered_by
        rec.outcome = "human" if answered_by == "human" else answered_by
        await self.records.put(rec)
        nc = self.gw.nc
        if nc is not None:
            msg = AmdResult(
                call_sid=call_sid,
                answered_by=answered_by,
                detection_ms=detection_ms,
            )
            try:
                await nc.publish(subjects.control(call_sid), msg.to_bytes())
            except Exception as e:
                log.warning("amd result not published", **kv(error=type(e).__name__))
        await self._event(
            call_sid, "outbound.amd", answered_by=answered_by, detection_ms=detection_ms
        )
        await self._result_audit(rec, f"answered_by:{answered_by}")
        log.info("outbound call answered", **kv(call=call_sid, answered_by=answered_by))
        return Response(status_code=204)

    async def status(self, request: Request) -> Response:
        """Call progress; a call nobody answered is recorded with the reason."""
        params = await self._webhook(request, STATUS_PATH)
        call_sid = params.get("CallSid", "")
        status = params.get("CallStatus", "")[:32]
        rec = await self.records.get(call_sid)
        await self._event(call_sid, "outbound.status", call_status=status)
        if rec is None:
            return Response(status_code=204)
        if status in NOT_ANSWERED:
            rec.outcome = "not_answered"
            await self.records.put(rec)
            await self._event(call_sid, "outbound.not_answered", reason=status)
            await self._result_audit(rec, f"not_answered:{status}")
            log.info("outbound call not answered", **kv(call=call_sid, reason=status))
        elif status == "completed":
            await self._result_audit(rec, f"completed:{rec.answered_by or 'no_amd'}")
        return Response(status_code=204)

    async def _webhook(self, request: Request, path: str) -> MultiDict:
        params = await read_form(request)
        if params is None:
            raise HTTPException(status_code=413, detail="request too large")
        if not self.signed(request, path, params):
            log.warning("outbound webhook refused: bad signature", **kv(path=path))
            raise HTTPException(status_code=403, detail="invalid signature")
        call_sid = params.get("CallSid", "")
        try:
            subjects.call_root(call_sid)
        except ValueError:
            raise HTTPException(status_code=400, detail="missing or invalid CallSid") from None
        return params


def outbound_router(outbound: Outbound) -> APIRouter:
    """``POST /calls/outbound`` (admin token) and the three Twilio webhooks."""
    router = APIRouter()
    auth = Depends(outbound.admin.actor)

    @router.post("/calls/outbound")
    async def dial(req: OutboundRequest, request: Request, actor: str = auth) -> JSONResponse:
        return await outbound.dial(request, actor, req)

    @router.post(TWIML_PATH)
    async def twiml(request: Request) -> Response:
        return await outbound.twiml(request)

    @router.post(AMD_PATH)
    async def amd(request: Request) -> Response:
        return await outbound.amd(request)

    @router.post(STATUS_PATH)
    async def status(request: Request) -> Response:
        return await outbound.status(request)

    return router
