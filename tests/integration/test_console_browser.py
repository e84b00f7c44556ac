"""The console and its softphone in headless Chromium (Debian's package), end to end.

A stack (gateway, ASR, agent, TTS on a private nats-server) runs as processes; Chromium opens
the console with the admin token, presses Call with a fake microphone that plays a Piper WAV,
and the page must show the caller's words as a transcript, receive reply audio and echo a mark
once that audio has played. The page's G.711 codec is checked against ours bit for bit.
"""

from __future__ import annotations

import os
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.audio import pcm16_to_ulaw, ulaw_to_pcm16
from tests.speech import synthesize_pcm16
from voiceagent.stack import Stack, free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ADMIN = "console-admin-" + "7" * 20
SENTENCE = "What are your opening hours?"
KNOWLEDGE = """# Test Clinic

## opening hours, open, hours, time
We open at nine.
"""


def chromium_args(wav: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
    ]


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


@pytest.fixture(scope="module")
def caller_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rate = 48000
    speech = synthesize_pcm16(SENTENCE, rate=rate)
    before = b"\0\0" * int(rate * 1.0)
    after = b"\0\0" * int(rate * 4.0)
    path = tmp_path_factory.mktemp("console") / "caller.wav"
    write_wav(path, before + speech + after, rate)
    return path


@pytest.fixture(scope="module")
async def browser(caller_wav: Path) -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            "Debian's chromium is missing (/usr/bin/chromium): run `make browser` "
            "(apt-get install chromium) before this test"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(caller_wav), headless=True
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    port = free_port()
    knowledge = tmp_path_factory.mktemp("console-stack") / "knowledge.md"
    knowledge.write_text(KNOWLEDGE)
    env = {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # not running: the stack starts its own
        "REDIS_URL": "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": "console-" + "3" * 24,
        "ADMIN_TOKEN": ADMIN,
        "ASR_PROVIDER": "local",
        "AGENT_PROVIDER": "local",
        "TTS_PROVIDER": "local",
        "LOG_FORMAT": "text",
        "KNOWLEDGE_FILE": str(knowledge),
    }
    st = Stack(env=env, output=None, service_output=None)
    await st.start()
    try:
        await st.wait_ready(timeout_s=120)
        yield st
    finally:
        await st.stop()


async def new_page(browser: Any) -> Any:
    # Playwright's waits evaluate strings, which the console's CSP (rightly) forbids.
    context = await browser.new_context(bypass_csp=True)
    return await context.new_page()


async def test_page_codec_matches_g711(browser: Any, stack: Stack) -> None:
    assert stack.info is not None
    page = await new_page(browser)
    try:
        await page.goto(stack.info.gateway_url + "/console#token=" + ADMIN)
        encoded, decoded = await page.evaluate(
            """() => {
                const G = window.VoiceagentSoftphone.G711;
                const enc = [], dec = [];
                for (let i = -32768; i < 32768; i++) enc.push(G.encode(i));
                for (let b = 0; b < 256; b++) dec.push(G.decode(b));
                return [enc, dec];
            }"""
        )
    finally:
        await page.context.close()
    pcm = np.arange(-32768, 32768, dtype=np.int16).tobytes()
    assert bytes(encoded) == pcm16_to_ulaw(pcm)
    assert np.array_equal(
        np.array(decoded, dtype=np.int16), np.frombuffer(ulaw_to_pcm16(bytes(range(256))), np.int16)
    )


async def test_softphone_call_shows_transcript_and_plays_reply(browser: Any, stack: Stack) -> None:
    assert stack.info is not None
    page = await new_page(browser)
    try:
        await page.goto(stack.info.gateway_url + "/console#token=" + ADMIN)
        await page.wait_for_function(
            "document.getElementById('feed-state').textContent === 'live'", timeout=10_000
        )
        assert "token=" not in page.url  # the token left the address bar
        await page.click("#call-btn")
        await page.wait_for_function(
            "document.getElementById('sp-state').textContent === 'in call'", timeout=10_000
        )
        call_sid = await page.text_content("#sp-call")
        assert call_sid and call_sid.startswith("CA")
        # The caller's words, recognized by the ASR worker, appear on the console.
        await page.wait_for_function(
            """() => [...document.querySelectorAll('.line.caller:not(.interim) .text')]
                 .some(e => /opening|hours/i.test(e.textContent))""",
            timeout=30_000,
        )
        # Reply audio arrived and at least one mark was echoed after its audio played.
        await page.wait_for_function(
            """() => Number(document.getElementById('sp-rx').textContent) > 8000
                 && Number(document.getElementById('sp-marks').textContent) > 0""",
            timeout=20_000,
        )
        sent = int(await page.text_content("#sp-tx") or "0")
        assert sent >= 8000, "the microphone audio did not flow"
        agent_text = await page.text_content(f".call[data-call='{call_sid}'] .line.agent .text")
        assert agent_text, "the agent's reply is not on the console"
        # A second viewer opening now sees this call's conversation so far, from the store,
        # with the turn's latency split into stages that add up to its voice-to-voice time.
        late = await new_page(browser)
        try:
            await late.goto(stack.info.gateway_url + "/console#token=" + ADMIN)
            sel = f".call[data-call='{call_sid}']"
            await late.wait_for_function(
                f"""() => {{
                    const c = document.querySelector("{sel}");
                    return c && c.querySelector('.line.caller:not(.interim)')
                        && c.querySelector('.line.agent svg.latency-bar');
                }}""",
                timeout=20_000,  # the answer's first audio may still be on its way
            )
            heard = await late.text_content(f"{sel} .line.caller:not(.interim) .text") or ""
            assert re.search("opening|hours", heard, re.I)
            assert await late.text_content(f"{sel} .line.agent .text") == agent_text
            bar = await late.evaluate(
                f"""() => {{
                    const svg = document.querySelector("{sel} .line.agent svg.latency-bar");
                    const rects = [...svg.querySelectorAll('rect.stage')];
                    const ms = rects.map(r => Number(r.dataset.ms));
                    return [Number(svg.dataset.v2v), ms];
                }}"""
            )
            v2v, parts = bar
            assert v2v > 0 and len(parts) == 5 and min(parts) >= 0
            assert sum(parts) == pytest.approx(v2v, abs=0.05)
        finally:
            await late.context.close()
        await page.click("#hangup-btn")
        await page.wait_for_function(
            f"""() => {{
                const c = document.querySelector(".call[data-call='{call_sid}']");
                return c && c.classList.contains('ended');
            }}""",
            timeout=10_000,
        )
    finally:
        await page.context.close()


async def test_console_refuses_a_wrong_token(browser: Any, stack: Stack) -> None:
    assert stack.info is not None
    page = await new_page(browser)
    try:
        await page.goto(stack.info.gateway_url + "/console#token=wrong")
        await page.wait_for_selector("#login:not([hidden])", timeout=10_000)
        assert await page.is_hidden("#app")
        assert "admin token" in (await page.text_content("#feed-state") or "")
    finally:
        await page.context.close()
