"""A local stand-in for Twilio's REST Calls endpoint, for tests and offline demos.

It answers what the ``twilio`` library sends for ``client.calls(sid).update(...)``
(checked against twilio 9.13):

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with HTTP Basic auth
  (account SID : auth token) and a form body (``Status``, ``Twiml``, ``Url``, ...) -> ``200``
  with a Call resource in Twilio's JSON shape. ``Status=completed`` ends the call; ``Twiml``
  makes it ``in-progress`` with the new instructions.
- Errors have Twilio's shape ``{"code", "message", "more_info", "status"}``: ``401`` (bad
  credentials, code 20003), ``404`` (unknown call, code 20404), ``400`` (bad form).

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` (``client.calls.create(...)``) ->
  ``201`` with a queued Call resource (``direction`` ``outbound-api``); ``400`` without ``To``,
  ``From`` or one of ``Url``/``Twiml`` (code 21201/21213/21205). The fake then *places the
  call back at the gateway as Twilio would* (:class:`Answer` says how the callee answers):
  signed ``StatusCallback`` POSTs (initiated, ringing, answered/in-progress, completed or
  busy/no-answer/failed), the signed ``Url`` webhook, the media stream (the simulator's
  Twilio-faithful client, :class:`devkit.simulator.SimulatedCall`), the signed
  ``AsyncAmdStatusCallback`` with ``AnsweredBy``; a ``Status=completed`` update ends it.

Faults (:meth:`FakeTwilioRest.fail`) make the next requests answer ``401``, ``404`` or ``500``.
Every request is recorded (:attr:`FakeTwilioRest.requests`).

In-process::

    with FakeTwilioRest(account_sid="AC...", auth_token="t") as fake:
        settings = Settings(twilio_api_base_url=fake.base_url, ...)

Standalone: ``python -m devkit.fakes.twilio_rest --port 9400 --account-sid AC... --token t``
(``--gateway-url http://127.0.0.1:8080 --answer machine_end_beep`` for outbound calls).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devkit.fakes._server import ThreadedFake, cli_parser

FailKind = Literal[401, 404, 500]
API_VERSION = "2010-04-01"
AnswerKind = Literal[
    "human", "machine_end_beep", "machine_end_other", "unknown", "busy", "no-answer", "failed"
]


@dataclass(frozen=True, slots=True)
class Answer:
    """How a destination answers a call placed through the fake.

    ``amd_delay_s``: seconds after the stream starts until the AMD callback (a machine's
    greeting and beep take a while; a person's "hello" less). ``talk_s``: how long a person
    stays on the line after the first words before hanging up (``stop``), if the call is
    still up. ``send_amd`` False: the AMD callback never comes (Twilio lost it).
    """

    kind: AnswerKind = "human"
    amd_delay_s: float = 1.5
    talk_s: float = 3.0
    greeting_timeout_s: float = 60.0
    send_amd: bool = True
    turns: Sequence[Any] = ()  # devkit.simulator CallerTurns, spoken after the greeting


@dataclass
class PlacedCall:
    """A call the fake placed, and what happened to it (for tests)."""

    call_sid: str
    to: str
    form: dict[str, str]
    answer: Answer
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    twiml: str = ""
    result: Any = None  # devkit.simulator.CallResult once the stream ran
    done: threading.Event = field(default_factory=threading.Event)
    completed_by_api: bool = False


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
    placed: dict[str, PlacedCall] = field(default_factory=dict)


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
        gateway_url: str = "",
    ) -> None:
        super().__init__()
        self.gateway_url = gateway_url  # where callbacks really go (their signed URL is kept)
        self.answers: dict[str, Answer] = {}
        self.default_answer = Answer()
        self._tasks: set[asyncio.Task[None]] = set()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.known_calls = known_calls  # None: every CallSid exists
        self._state = _State()
        self.app = Starlette(
            routes=[
                Route(
                    f"/{API_VERSION}/Accounts/{{account_sid}}/Calls.json",
                    self._create,
                    methods=["POST"],
                ),
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

    def answer(self, to: str, answer: Answer) -> None:
        """Calls placed to ``to`` are answered like this (others: :attr:`default_answer`)."""
        self.answers[to] = answer

    def placed(self, call_sid: str | None = None) -> PlacedCall | None:
        """A placed call (the latest one without ``call_sid``)."""
        with self._state.lock:
            if call_sid is None:
                return list(self._state.placed.values())[-1] if self._state.placed else None
            return self._state.placed.get(call_sid)

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
                placed_call = self._state.placed.get(call_sid)
                if placed_call is not None and form.get("Status") == "completed":
                    placed_call.completed_by_api = True
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

    async def _create(self, request: Request) -> JSONResponse:
        account = request.path_params["account_sid"]
        form = {k: str(v) for k, v in (await request.form()).items()}
        multi = await request.form()
        form["StatusCallbackEvent"] = " ".join(str(v) for v in multi.getlist("StatusCallbackEvent"))
        authorized = self._authorized(request) and account == self.account_sid
        call_sid = "CA" + uuid.uuid4().hex
        placed: PlacedCall | None = None
        with self._state.lock:
            fault = self._take_fault()
            if fault == 500:
                resp = _error(500, 20500, "Internal Server Error")
            elif fault == 401 or not authorized:
                resp = _error(401, 20003, "Authenticate")
            elif not form.get("To"):
                resp = _error(400, 21201, "No 'To' number is specified")
            elif not form.get("From"):
                resp = _error(400, 21213, "No 'From' number is specified")
            elif not form.keys() & {"Url", "Twiml", "ApplicationSid"}:
                resp = _error(400, 21205, "Url parameter is required")
            else:
                resource = self._resource(account, call_sid, {"Status": "queued"})
                resource |= {"direction": "outbound-api", "to": form["To"], "from": form["From"]}
                self._state.calls[call_sid] = resource
                answer = self.answers.get(form["To"], self.default_answer)
                placed = PlacedCall(call_sid=call_sid, to=form["To"], form=form, answer=answer)
                self._state.placed[call_sid] = placed
                resp = JSONResponse(resource, status_code=201)
            self._state.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.url.path,
                    account_sid=account,
                    call_sid=call_sid if placed else "",
                    form=form,
                    authorized=authorized,
                    status=resp.status_code,
                )
            )
        if placed is not None:
            task = asyncio.get_running_loop().create_task(self._place(placed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return resp

    # ------------------------------------------------------------------ placing the call

    def _real_url(self, url: str) -> str:
        if not self.gateway_url:
            return url
        g, u = urlsplit(self.gateway_url), urlsplit(url)
        return urlunsplit((g.scheme, g.netloc, u.path, u.query, ""))

    async def _post(
        self, client: httpx.AsyncClient, call: PlacedCall, url: str, params: dict[str, str]
    ) -> httpx.Response | None:
        from devkit.simulator import twilio_signature

        if not url:
            return None
        sig = twilio_signature(url, params, self.auth_token)
        try:
            resp = await client.post(
                self._real_url(url), data=params, headers={"X-Twilio-Signature": sig}
            )
        except httpx.HTTPError:
            call.callbacks.append((url, params, 0))
            return None
        call.callbacks.append((url, params, resp.status_code))
        return resp

    def _base_params(self, call: PlacedCall, status: str) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.call_sid,
            "CallStatus": status,
            "Direction": "outbound-api",
            "From": call.form.get("From", ""),
            "To": call.to,
            "Called": call.to,
            "Caller": call.form.get("From", ""),
        }

    async def _status(
        self, client: httpx.AsyncClient, call: PlacedCall, status: str, event: str, **extra: str
    ) -> None:
        events = call.form.get("StatusCallbackEvent", "").split() or ["completed"]
        if event not in events:
            return
        params = self._base_params(call, status) | extra
        params["CallbackSource"] = "call-progress-events"
        params["SequenceNumber"] = str(sum(1 for c in call.callbacks if "CallbackSource" in c[1]))
        await self._post(client, call, call.form.get("StatusCallback", ""), params)

    async def _place(self, call: PlacedCall) -> None:
        """Ring, answer (or not), run the media stream, report AMD and the end."""
        from devkit.simulator import CallRejected, SimulatedCall, parse_twiml

        answer = call.answer
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                await asyncio.sleep(0.05)  # calls.create has returned to the caller by now
                await self._status(client, call, "initiated", "initiated")
                await self._status(client, call, "ringing", "ringing")
                if answer.kind in ("busy", "no-answer", "failed"):
                    self._set_status(call.call_sid, answer.kind)
                    await self._status(client, call, answer.kind, "completed", CallDuration="0")
                    return
                self._set_status(call.call_sid, "in-progress")
                await self._status(client, call, "in-progress", "answered")
                twiml = call.form.get("Twiml", "")
                if call.form.get("Url"):
                    resp = await self._post(
                        client, call, call.form["Url"], self._base_params(call, "in-progress")
                    )
                    twiml = resp.text if resp is not None and resp.status_code == 200 else ""
                call.twiml = twiml
                try:
                    target = parse_twiml(twiml)
                except CallRejected:
                    target = None
                if target is not None:
                    sim = SimulatedCall(
                        gateway_url=self.gateway_url or call.form["Url"],
                        public_url=self.gateway_url or call.form["Url"],
                        auth_token=self.auth_token,
                        account_sid=self.account_sid,
                        call_sid=call.call_sid,
                        from_number=call.form.get("From", ""),
                        to_number=call.to,
                        greeting_timeout_s=answer.greeting_timeout_s,
                        quiet_s=answer.talk_s,
                    )
                    amd = asyncio.create_task(self._amd(client, call))
                    try:
                        call.result = await sim.stream(target, list(answer.turns))
                    finally:
                        amd.cancel()
                        await asyncio.gather(amd, return_exceptions=True)
                duration = str(int(time.monotonic() - started))
                self._set_status(call.call_sid, "completed")
                await self._status(client, call, "completed", "completed", CallDuration=duration)
        finally:
            call.done.set()

    async def _amd(self, client: httpx.AsyncClient, call: PlacedCall) -> None:
        url = call.form.get("AsyncAmdStatusCallback", "")
        if not url or call.form.get("MachineDetection") is None or not call.answer.send_amd:
            return
        await asyncio.sleep(call.answer.amd_delay_s)
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call.call_sid,
            "AnsweredBy": call.answer.kind,
            "MachineDetectionDuration": str(int(call.answer.amd_delay_s * 1000)),
        }
        await self._post(client, call, url, params)

    def _set_status(self, call_sid: str, status: str) -> None:
        with self._state.lock:
            res = self._state.calls.get(call_sid)
            if res is not None:
                res["status"] = status

    def _resource(self, account: str, call_sid: str, form: dict[str, str]) -> dict[str, Any]:
        now = formatdate(time.time(), usegmt=True)
        prev = self._state.calls.get(call_sid, {})
        status = form.get("Status") or "in-progress"
        direction = prev.get("direction", "inbound")
        uri = f"/{API_VERSION}/Accounts/{account}/Calls/{call_sid}.json"
        return {
            "account_sid": account,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": prev.get("date_created", now),
            "date_updated": now,
            "direction": direction,
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
    """``python -m devkit.fakes.twilio_rest``: serve in the foreground."""
    ap = cli_parser(__doc__, port=9400)
    ap.add_argument("--account-sid", default="AC" + "0" * 32)
    ap.add_argument("--token", default="test-token")
    ap.add_argument(
        "--gateway-url", default="", help="where placed calls call back (default: their URLs)"
    )
    ap.add_argument(
        "--answer",
        default="human",
        choices=list(AnswerKind.__args__),  # type: ignore[attr-defined]
        help="how every placed call is answered",
    )
    args = ap.parse_args(argv)
    fake = FakeTwilioRest(
        account_sid=args.account_sid,
        auth_token=args.token,
        host=args.host,
        port=args.port,
        gateway_url=args.gateway_url,
    )
    fake.default_answer = Answer(kind=args.answer)
    print(f"fake Twilio REST on {fake.base_url}", flush=True)
    asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
