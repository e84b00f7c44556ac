"""A local stand-in for Twilio's REST Calls endpoint, for tests and offline demos.

It answers what the ``twilio`` library sends for ``client.calls(sid).update(...)``
(checked against twilio 9.13):

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with HTTP Basic auth
  (account SID : auth token) and a form body (``Status``, ``Twiml``, ``Url``, ...) -> ``200``
  with a Call resource in Twilio's JSON shape. ``Status=completed`` ends the call; ``Twiml``
  makes it ``in-progress`` with the new instructions.
- Errors have Twilio's shape ``{"code", "message", "more_info", "status"}``: ``401`` (bad
  credentials, code 20003), ``404`` (unknown call, code 20404), ``400`` (bad form).

Faults (:meth:`FakeTwilioRest.fail`) make the next requests answer ``401``, ``404`` or ``500``.
Every request is recorded (:attr:`FakeTwilioRest.requests`).

In-process::

    with FakeTwilioRest(account_sid="AC...", auth_token="t") as fake:
        settings = Settings(twilio_api_base_url=fake.base_url, ...)

Standalone: ``python -m voiceagent.fakes.twilio_rest --port 9400 --account-sid AC... --token t``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voiceagent.fakes._server import ThreadedFake, cli_parser

FailKind = Literal[401, 404, 500]
API_VERSION = "2010-04-01"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    account_sid: str
    call_sid: str
    form: dict[str, str]
    authorized: bool
    status: int


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail: FailKind | None = None
    fail_times: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


class FakeTwilioRest(ThreadedFake):
    """A Twilio-REST-compatible Calls endpoint on loopback, with failure injection."""

    what = "fake Twilio REST"
    thread_name = "fake-twilio-rest"

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-token",
        host: str = "127.0.0.1",
        port: int = 0,
        known_calls: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.known_calls = known_calls  # None: every CallSid exists
        self._state = _State()
        self.app = Starlette(
            routes=[
                Route(
                    f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}.json",
                    self._update,
                    methods=["POST"],
                ),
            ]
        )

    # ------------------------------------------------------------------ test controls

    def fail(self, kind: FailKind, times: int = 1) -> None:
        """The next ``times`` requests answer ``kind`` (-1: all until :meth:`reset`)."""
        with self._state.lock:
            self._state.fail, self._state.fail_times = kind, times

    def reset(self) -> None:
        """Forget failures and recorded requests."""
        with self._state.lock:
            self._state.fail, self._state.fail_times = None, 0
            self._state.requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in order."""
        with self._state.lock:
            return list(self._state.requests)

    def call(self, call_sid: str) -> dict[str, Any] | None:
        """The call resource as last updated (None if never touched)."""
        with self._state.lock:
            return self._state.calls.get(call_sid)

    # ------------------------------------------------------------------ endpoint

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.account_sid and password == self.auth_token

    def _take_fault(self) -> FailKind | None:
        st = self._state
        if st.fail is None or st.fail_times == 0:
            return None
        if st.fail_times > 0:
            st.fail_times -= 1
        return st.fail

    async def _update(self, request: Request) -> JSONResponse:
        account = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        form = {k: str(v) for k, v in (await request.form()).items()}
        authorized = self._authorized(request) and account == self.account_sid
        with self._state.lock:
            fault = self._take_fault()
            if fault == 500:
                resp = _error(500, 20500, "Internal Server Error")
            elif fault == 401 or not authorized:
                resp = _error(401, 20003, "Authenticate")
            elif fault == 404 or (
                self.known_calls is not None and call_sid not in self.known_calls
            ):
                resp = _error(
                    404,
                    20404,
                    f"The requested resource /{API_VERSION}/Accounts/{account}"
                    f"/Calls/{call_sid}.json was not found",
                )
            elif not form.keys() & {"Status", "Twiml", "Url"}:
                resp = _error(400, 21218, "Invalid ApplicationSid, Url, or Twiml")
            else:
                resource = self._resource(account, call_sid, form)
                self._state.calls[call_sid] = resource
                resp = JSONResponse(resource)
            self._state.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.url.path,
                    account_sid=account,
                    call_sid=call_sid,
                    form=form,
                    authorized=authorized,
                    status=resp.status_code,
                )
            )
        return resp

    def _resource(self, account: str, call_sid: str, form: dict[str, str]) -> dict[str, Any]:
        now = formatdate(time.time(), usegmt=True)
        prev = self._state.calls.get(call_sid, {})
        status = form.get("Status") or "in-progress"
        uri = f"/{API_VERSION}/Accounts/{account}/Calls/{call_sid}.json"
        return {
            "account_sid": account,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": prev.get("date_created", now),
            "date_updated": now,
            "direction": "inbound",
            "duration": "0" if status == "completed" else None,
            "end_time": now if status == "completed" else None,
            "forwarded_from": None,
            "from": "+15555550100",
            "from_formatted": "(555) 555-0100",
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": "PN" + "0" * 32,
            "price": None,
            "price_unit": "USD",
            "sid": call_sid,
            "start_time": prev.get("start_time", now),
            "status": status,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
            },
            "to": "+15555550199",
            "to_formatted": "(555) 555-0199",
            "trunk_sid": None,
            "uri": uri,
            "queue_time": "0",
        }


def main(argv: list[str] | None = None) -> None:
    """``python -m voiceagent.fakes.twilio_rest``: serve in the foreground."""
    ap = cli_parser(__doc__, port=9400)
    ap.add_argument("--account-sid", default="AC" + "0" * 32)
    ap.add_argument("--token", default="test-token")
    args = ap.parse_args(argv)
    fake = FakeTwilioRest(
        account_sid=args.account_sid, auth_token=args.token, host=args.host, port=args.port
    )
    print(f"fake Twilio REST on {fake.base_url}", flush=True)
    asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
