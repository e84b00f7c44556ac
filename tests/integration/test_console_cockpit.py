"""The console as an operator's cockpit, in headless Chromium against the real gateway.

The gateway app is served by uvicorn on a private nats-server with JetStream (so the
``VOICE_EVENTS`` store exists); a scripted call (:mod:`tests.integration.console_script`:
the services' own message models) is published on the bus. The page must show what the
store holds when it opens mid-call, then continue live without duplicates; draw the barge-in
and the resumed false interruption where they happened; split each turn's latency into bars
that add up to its voice-to-voice time; and keep up with 50 live calls.

Screenshots land in ``test-artifacts/console/`` (ignored by git) and the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from shared.settings import Settings
from tests.gatewayserver import Gw, serve_gateway
from tests.integration import console_script as cs
from tests.natsserver import private_nats_server
from voiceagent.stack import free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ADMIN = "cockpit-admin-" + "5" * 20
TOKEN_KEY = "voiceagent-admin-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
BAR_PX_PER_MS = 0.1  # console.js draws a turn's bar at 100 px per second


@pytest.fixture(scope="module")
def js_nats() -> Iterator[str]:
    with private_nats_server(jetstream=True) as url:
        yield url


@pytest.fixture(scope="module")
async def gw(js_nats: str) -> AsyncIterator[Gw]:
    port = free_port()
    settings = Settings(
        nats_url=js_nats,
        twilio_auth_token=SecretStr("cockpit-" + "3" * 24),
        public_url=f"http://127.0.0.1:{port}",
        admin_token=SecretStr(ADMIN),
        redis_url="",
    )
    async with serve_gateway(settings, port=port, use_vad=False) as served:
        assert served.gateway.connected  # the lifespan connected it before serving
        yield served


@pytest.fixture(scope="module")
async def bus(js_nats: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(js_nats)
    try:
        yield nc
    finally:
        await nc.drain()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("Debian's chromium is missing (/usr/bin/chromium): run `make browser`")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--no-first-run",
            ],
            headless=True,
        )
        try:
            yield b
        finally:
            await b.close()


async def open_console(browser: Any, gw: Gw, *, width: int = 1280) -> Any:
    # Playwright's waits evaluate strings, which the console's CSP (rightly) forbids.
    context = await browser.new_context(
        bypass_csp=True, viewport={"width": width, "height": 900}, device_scale_factor=1
    )
    page = await context.new_page()
    await page.goto(gw.base + "/console#token=" + ADMIN)
    await page.wait_for_function("document.body.dataset.history === 'loaded'", timeout=20_000)
    return page


def shot_paths(tmp_path: Path, name: str) -> list[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return [ARTIFACTS / name, tmp_path / name]


async def screenshot(target: Any, tmp_path: Path, name: str) -> None:
    first, *rest = shot_paths(tmp_path, name)
    await target.screenshot(path=str(first))
    for p in rest:
        p.write_bytes(first.read_bytes())


def card(sid: str) -> str:
    return f".call[data-call='{sid}']"


async def timeline_geometry(page: Any, sid: str) -> dict[str, Any]:
    """Where the page drew things: spans per turn and marks, in screen pixels."""
    geo: dict[str, Any] = await page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.right]; };
            const spans = {};
            for (const r of c.querySelectorAll('svg.timeline rect.span.agent')) {
                spans[r.dataset.turn] = box(r);
            }
            const marks = [...c.querySelectorAll('svg.timeline g.mark')].map((g) => {
                const l = g.querySelector('line').getBoundingClientRect();
                return {type: g.classList[1], at: Number(g.dataset.at), x: l.left + l.width / 2,
                        turn: g.dataset.turn};
            });
            const svg = c.querySelector('svg.timeline').getBoundingClientRect();
            const callers = [...c.querySelectorAll('svg.timeline rect.span.caller')].map(
                (r) => ({id: r.dataset.utterance, box: box(r)}));
            return {spans, marks, callers, svg: [svg.left, svg.right]};
        }""",
        card(sid),
    )
    return geo


async def latency_bars(page: Any, sid: str) -> dict[int, dict[str, Any]]:
    return {
        int(k): v
        for k, v in (
            await page.evaluate(
                """(sel) => {
                const out = {};
                for (const row of document.querySelectorAll(sel + ' .line.agent')) {
                    const svg = row.querySelector('svg.latency-bar');
                    if (!svg) continue;
                    const parts = {}; let width = 0;
                    for (const r of svg.querySelectorAll('rect.stage')) {
                        parts[r.dataset.stage] = Number(r.dataset.ms);
                        width += r.getBoundingClientRect().width;
                    }
                    out[row.dataset.turn] = {parts, width, v2v: Number(svg.dataset.v2v)};
                }
                return out;
            }""",
                card(sid),
            )
        ).items()
    }


async def test_page_opened_mid_call_shows_the_call_so_far_then_continues_live(
    browser: Any, gw: Gw, bus: NATS, tmp_path: Path
) -> None:
    sid = "CA" + uuid.uuid4().hex
    steps = cs.script(sid)
    t0 = time.time() - cs.MIDPOINT
    await cs.publish(bus, sid, [s for s in steps if s.t < cs.MIDPOINT], t0=t0)
    await asyncio.sleep(0.5)  # stored by JetStream
    page = await open_console(browser, gw)
    try:
        # The earlier turns, both sides, from the store (the page joined after them).
        await page.wait_for_selector(card(sid) + " .line.agent", timeout=10_000)
        callers = await page.eval_on_selector_all(
            card(sid) + " .line.caller:not(.interim) .text", "els => els.map(e => e.textContent)"
        )
        assert callers == [t.caller for t in cs.TURNS[:1]] + ["mm-hm"] + [
            t.caller for t in cs.TURNS[1:]
        ]
        for t in cs.TURNS:
            text = await page.text_content(f"{card(sid)} .line.agent[data-turn='{t.turn}'] .text")
            assert text == " ".join(t.agent)
        timings = await page.text_content(f"{card(sid)} .line.caller .lat")
        assert timings == "endpointing 200 ms · ASR final 250 ms"  # each turn's timings too
        assert await page.text_content(card(sid) + " .status") == "live"

        # The timeline: the false interruption (turn 1, resumed) and the barge-in (turn 2,
        # real) at the times they happened, on the turns they interrupted.
        await page.wait_for_selector(card(sid) + " g.mark.barge-in", timeout=5_000)
        geo = await timeline_geometry(page, sid)
        marks = {m["type"]: m for m in geo["marks"]}
        false_int, barge = marks["false-interruption"], marks["barge-in"]
        assert false_int["at"] == pytest.approx(t0 + cs.FALSE_INTERRUPTION_AT, abs=0.01)
        assert barge["at"] == pytest.approx(t0 + cs.BARGE_IN_AT, abs=0.01)
        assert (false_int["turn"], barge["turn"]) == ("1", "2")
        turn1, turn2 = geo["spans"]["1"], geo["spans"]["2"]
        assert turn1[0] < false_int["x"] < turn1[1], "the agent went on after the false one"
        assert barge["x"] == pytest.approx(turn2[1], abs=2.0), "turn 2 stops at the barge-in"
        # The axis is linear in time: the marks' distance matches their 11 s apart.
        left, right = geo["svg"]
        per_s = (barge["x"] - false_int["x"]) / (cs.BARGE_IN_AT - cs.FALSE_INTERRUPTION_AT)
        assert per_s > 0 and (right - left) > 0

        # Latency bars: the stages add up to the measured voice-to-voice time.
        bars = await latency_bars(page, sid)
        assert sorted(bars) == [1, 2, 3]
        for t in cs.TURNS:
            bar = bars[t.turn]
            assert bar["v2v"] == t.v2v_ms
            assert bar["parts"] == pytest.approx(t.parts, abs=0.05)
            assert sum(bar["parts"].values()) == pytest.approx(t.v2v_ms, abs=0.05)
            assert bar["width"] == pytest.approx(t.v2v_ms * BAR_PX_PER_MS, abs=1.0)

        # Clicking a turn shows its text and timings: on the timeline (the caller's speech
        # opens the turn that answered it) or on its line.
        await page.click(f"{card(sid)} svg.timeline rect.span.caller[data-utterance='1']")
        first = await page.text_content(card(sid) + " .detail") or ""
        assert first.startswith("turn 1") and cs.TURNS[0].caller in first
        await page.click(f"{card(sid)} .line.agent[data-turn='2']")
        detail = await page.text_content(card(sid) + " .detail")
        assert detail is not None
        assert cs.TURNS[1].caller in detail and cs.TURNS[1].agent[0] in detail
        assert "our overhead190 ms" in detail and "voice-to-voice1250 ms" in detail
        await screenshot(page.locator(card(sid)), tmp_path, "call-mid.png")

        # Then live: the rest of the call, nothing twice.
        await cs.publish(bus, sid, [s for s in steps if s.t >= cs.MIDPOINT], t0=t0)
        await page.wait_for_selector(card(sid) + ".ended", timeout=10_000)
        await page.wait_for_selector(card(sid) + " g.mark.hangup", state="attached", timeout=5_000)
        await asyncio.sleep(0.5)
        counts = await page.evaluate(
            """(sel) => {
                const c = document.querySelector(sel), n = {};
                for (const g of c.querySelectorAll('g.mark')) {
                    n[g.classList[1]] = (n[g.classList[1]] || 0) + 1;
                }
                n.caller = c.querySelectorAll('.line.caller').length;
                n.agent = c.querySelectorAll('.line.agent').length;
                return n;
            }""",
            card(sid),
        )
        assert counts == {
            "false-interruption": 1,
            "barge-in": 1,
            "key": 1,
            "worker-lost": 1,
            "reclaimed": 1,
            "prompt": 1,
            "hangup": 1,
            "ended": 1,
            "caller": 4,
            "agent": 5,
        }
        head = await page.text_content(card(sid) + " .call-head") or ""
        assert "ended (hangup:agent)" in head and "41.0 s" in head
        assert "$0.0421" in head  # the final event's cost, when it carries one
        await screenshot(page.locator(card(sid)), tmp_path, "call-timeline.png")  # turn 2 open
        await screenshot(page.locator(card(sid) + " .detail"), tmp_path, "turn-detail.png")

        # The system view: this call's three measured turns over the last five minutes.
        await page.wait_for_function(
            "document.querySelector(\"#sys-stages tr[data-stage='voice_to_voice'] .n\")"
            "?.textContent === '3'",
            timeout=10_000,
        )
        v2v_p50 = await page.text_content("#sys-stages tr[data-stage='voice_to_voice'] .p50")
        assert v2v_p50 == "1100 ms"  # median of 1000, 1250, 1100
        over_p95 = await page.text_content("#sys-stages tr[data-stage='overhead'] .p95")
        assert over_p95 == "190 ms"
        await screenshot(page.locator("#system"), tmp_path, "system.png")
        await screenshot(page, tmp_path, "console.png")

        # A call's start parameters (its stream token) never reach the page.
        assert "secret-token" not in await page.content()
        # No transcript text outside the page: not in the URL, not in storage.
        assert page.url == gw.base + "/console"
        stored = await page.evaluate(
            "() => [Object.keys(sessionStorage), Object.keys(localStorage)]"
        )
        assert stored == [[TOKEN_KEY], []]
    finally:
        await page.context.close()


async def test_ended_call_shows_outcome_and_duration_but_no_text(
    browser: Any, gw: Gw, bus: NATS
) -> None:
    sid = "CA" + uuid.uuid4().hex
    await cs.publish(bus, sid, cs.script(sid), t0=time.time() - 600)
    await asyncio.sleep(0.5)
    page = await open_console(browser, gw)
    try:
        await page.wait_for_selector(card(sid) + ".ended", timeout=10_000)
        head = await page.text_content(card(sid) + " .call-head") or ""
        assert "ended (hangup:agent)" in head and "41.0 s" in head and "$0.0421" in head
        assert "1 barge-in" in head
        assert await page.query_selector_all(card(sid) + " .line") == []  # outcome, not text
    finally:
        await page.context.close()


async def test_fifty_live_calls_render_in_time(
    browser: Any, gw: Gw, bus: NATS, tmp_path: Path
) -> None:
    n_calls, call_s, bound_s = 50, 10.0, 2.0
    page = await open_console(browser, gw)
    try:
        # When each card turns "ended" (its last event), by the page's own clock.
        await page.evaluate(
            """() => {
                window.__ended = {};
                new MutationObserver((muts) => {
                    for (const m of muts) {
                        const c = m.target;
                        const sid = c.dataset && c.dataset.call;
                        if (sid && c.classList.contains('ended') && !(sid in window.__ended)) {
                            window.__ended[sid] = Date.now();
                        }
                    }
                }).observe(document.getElementById('calls'),
                           {subtree: true, attributes: true, attributeFilter: ['class']});
            }"""
        )
        sids = ["CA" + uuid.uuid4().hex for _ in range(n_calls)]
        published: dict[str, float] = {}
        scale = call_s / cs.ENDED_AT
        start = time.time() + 0.5

        async def run(sid: str, offset: float) -> None:
            t0 = start + offset
            for step in cs.script(sid):
                wait = t0 + step.t * scale - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await cs.publish(bus, sid, [step], t0=t0, scale=scale)
            published[sid] = time.time()

        await asyncio.gather(*(run(sid, i * 0.05) for i, sid in enumerate(sids)))
        await page.wait_for_function(
            f"Object.keys(window.__ended).length >= {n_calls}", timeout=30_000
        )
        ended = await page.evaluate("() => window.__ended")
        lags = sorted(ended[sid] / 1000 - published[sid] for sid in sids)
        assert lags[-1] < bound_s, f"slowest call's last event shown {lags[-1]:.2f} s late"
        # Every call's whole conversation made it (the feed lost nothing).
        counts = await page.evaluate(
            """(sids) => sids.map((s) => {
                const c = document.querySelector(`.call[data-call='${s}']`);
                const n = (sel) => c.querySelectorAll(sel).length;
                return [n('.line.agent'), n('.line.caller')];
            })""",
            sids,
        )
        assert counts == [[5, 4]] * n_calls
        await page.wait_for_function(
            "document.getElementById('sys-dropped').textContent === '0'", timeout=5_000
        )
        await page.wait_for_function(
            "document.getElementById('sys-live').textContent === '0'", timeout=5_000
        )
        await screenshot(page, tmp_path, "fifty-calls.png")
        p50, worst = lags[len(lags) // 2], lags[-1]
        print(f"50 calls: last event shown after p50 {p50:.3f} s, max {worst:.3f} s")
    finally:
        await page.context.close()
