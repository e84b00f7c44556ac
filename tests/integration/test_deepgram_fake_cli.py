"""`python -m devkit.fakes.deepgram` as a command: the SDK-based provider talks to it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.asr.providers.deepgram import DeepgramAsr
from shared.audio import frames
from shared.errors import ProviderAuthError
from shared.settings import Settings
from tests.conftest import _free_port
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Fake:
    """The command's URL and its log (one ``listen:`` line per connection attempt)."""

    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.log: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.fakes.deepgram",
            "--port",
            str(port),
            "--api-key",
            "cli-key",
            "--fault",
            "429:1",
            "--retry-after",
            "0.2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"ws://127.0.0.1:{port}/v1/listen" in line, line
        yield Fake(f"ws://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def chunks(audio: bytes) -> AsyncIterator[bytes]:
    for f in frames(audio, size=1600):  # 200 ms pieces: the pace does not matter here
        yield f


async def test_the_command_refuses_a_wrong_key(fake: Fake) -> None:
    asr = DeepgramAsr(settings=Settings(deepgram_url=fake.url, deepgram_api_key="nope"))
    with pytest.raises(ProviderAuthError):
        async for _ in asr.stream(chunks(silence_mulaw(500))):
            pass


async def test_the_command_rate_limits_once_then_transcribes(fake: Fake) -> None:
    settings = Settings(deepgram_url=fake.url, deepgram_api_key="cli-key", provider_timeout_s=20)
    asr = DeepgramAsr(settings=settings)
    audio = silence_mulaw(500) + synthesize_mulaw("Can I speak to the pharmacy please?")
    t0 = time.monotonic()
    finals = [
        e.text async for e in asr.stream(chunks(audio + silence_mulaw(1500))) if e.kind == "final"
    ]
    assert time.monotonic() - t0 >= 0.2  # the 429's Retry-After was honoured
    assert "pharmacy" in " ".join(finals).lower()
    attempts = [ln.split("listen: ")[1].split()[0] for ln in fake.log if "listen: " in ln]
    assert attempts == ["401", "429", "101"]  # wrong key; then the one injected 429, then served
