"""Call control through Twilio's REST API (the ``twilio`` library): end and transfer calls.

Closing the media stream already ends a ``<Connect><Stream>`` call (no TwiML verb follows), so
hang-up works without credentials; with ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN`` the
gateway also completes the call through the REST API (``Status=completed``), which ends it even
if Twilio and the gateway disagree about the socket. A transfer needs the REST API: the call is
updated with ``<Dial>`` TwiML, and Twilio stops the media stream itself.

The twilio client is synchronous: every request runs in a worker thread (``asyncio.to_thread``)
with a deadline, never on the event loop. ``TWILIO_API_BASE_URL`` points the client at another
host (tests use :mod:`devkit.fakes.twilio_rest`).

A transfer goes only to a number of ``TRANSFER_TARGETS`` (:mod:`shared.transfer_targets`),
checked here, where the REST request is made: whoever can publish ``Transfer`` on the bus
cannot redirect a call anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from shared.logging import kv
from shared.metrics import BAD_MESSAGES
from shared.settings import Settings
from shared.transfer_targets import parse_targets

log = logging.getLogger(__name__)

REST_TIMEOUT_S = 5.0


def dial_twiml(to: str, *, caller_id: str | None = None) -> str:
    """TwiML that connects the caller to ``to`` (a number or SIP URI) with ``<Dial>``."""
    response = VoiceResponse()
    if caller_id:
        response.dial(to, caller_id=caller_id)
    else:
        response.dial(to)
    return str(response)


class CallControl:
    """Ends and transfers calls through Twilio's REST API (one per gateway process)."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        base_url: str = "",
        timeout_s: float = 5.0,
        targets: frozenset[str] = frozenset(),
    ) -> None:
        self._targets = targets
        self._sid = account_sid
        self._token = auth_token
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_s
        self._client: Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CallControl:
        """Built from ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``TWILIO_API_BASE_URL``
        and ``TRANSFER_TARGETS`` (the only numbers :meth:`transfer` dials)."""
        return cls(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_api_base_url,
            timeout_s=REST_TIMEOUT_S,
            targets=frozenset(parse_targets(settings.transfer_targets).values()),
        )

    @property
    def enabled(self) -> bool:
        """Credentials are configured: the REST API can be used."""
        return bool(self._sid and self._token)

    def _rest(self) -> Client:
        if self._client is None:
            client = Client(
                self._sid, self._token, http_client=TwilioHttpClient(timeout=self._timeout)
            )
            if self._base_url:
                # Every /2010-04-01 resource hangs off the ``api`` domain's base URL.
                client.api.base_url = self._base_url
            self._client = client
        return self._client

    def _update(self, call_sid: str, **fields: Any) -> None:
        self._rest().api.v2010.account.calls(call_sid).update(**fields)

    async def _request(self, what: str, call_sid: str, **fields: Any) -> bool:
        if not self.enabled:
            return False
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._update, call_sid, **fields), self._timeout + 1.0
            )
        except TwilioRestException as e:
            log.warning(
                "twilio rest request failed",
                **kv(call=call_sid, op=what, status=e.status, code=e.code),
            )
            return False
        except (TwilioException, OSError, TimeoutError, ValueError) as e:
            log.warning(
                "twilio rest request failed", **kv(call=call_sid, op=what, error=type(e).__name__)
            )
            return False
        except Exception as e:  # requests' own errors and anything else: never crash a call
            log.warning(
                "twilio rest request failed", **kv(call=call_sid, op=what, error=type(e).__name__)
            )
            return False
        log.info("twilio rest request done", **kv(call=call_sid, op=what))
        return True

    def _create(self, **fields: Any) -> str:
        call = self._rest().api.v2010.account.calls.create(**fields)
        return str(call.sid)

    async def create_call(self, **fields: Any) -> str:
        """Place a call (``calls.create``); the new CallSid. Raises ``TwilioRestException``
        (Twilio refused), ``TwilioException``/``OSError``/``TimeoutError`` (unreachable)."""
        if not self.enabled:
            raise TwilioException("no Twilio credentials")
        return await asyncio.wait_for(
            asyncio.to_thread(self._create, **fields), self._timeout + 1.0
        )

    async def hangup(self, call_sid: str) -> bool:
        """Complete the call via REST; False without credentials or on failure (logged)."""
        return await self._request("hangup", call_sid, status="completed")

    async def transfer(self, call_sid: str, to: str, *, caller_id: str | None = None) -> bool:
        """Redirect the call to ``<Dial>to</Dial>``; False without credentials, on failure, or
        when ``to`` is not one of ``TRANSFER_TARGETS`` (refused without a request)."""
        if to not in self._targets:
            BAD_MESSAGES.labels("gateway", "transfer_target").inc()
            log.warning("transfer refused: not in TRANSFER_TARGETS", **kv(call=call_sid))
            return False
        return await self._request("transfer", call_sid, twiml=dial_twiml(to, caller_id=caller_id))
