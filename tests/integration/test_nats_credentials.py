"""Every documented NATS credential kind gets a service onto a server that demands it.

Each case starts a nats-server that admits only one kind (user/password, token, NKey seed
file, JWT creds file) and connects the way the services do: the gateway through
``bus.connect`` (nats-py), the workers through ``bus.make_broker`` (FastStream). A round trip
crosses the server both ways. Without the credential, the same server refuses the
connection, so the case proves the credential was actually sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import nkeys
import pytest

from shared import bus
from shared.settings import Settings
from tests.natsauth import new_keypair, nkey_server_conf, operator_setup, write_seed
from tests.natsserver import private_nats_server

pytestmark = pytest.mark.integration

KINDS = ("user", "token", "nkey", "creds")


@contextlib.contextmanager
def server_for(kind: str, tmp: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A nats-server admitting only ``kind``; yields (url, the settings that get in)."""
    if kind == "user":
        args: tuple[str, ...] = ("--user", "svc", "--pass", "s3cret-pw")
        creds = {"nats_user": "svc", "nats_password": "s3cret-pw"}
    elif kind == "token":
        args = ("--auth", "t0ken-abc")
        creds = {"nats_token": "t0ken-abc"}
    elif kind == "nkey":
        user = new_keypair(nkeys.PREFIX_BYTE_USER)
        args = ("-c", str(nkey_server_conf(tmp / "nkey.conf", user=user)))
        creds = {"nats_nkey_seed_file": str(write_seed(tmp / "svc.nk", user))}
    else:
        conf, creds_file = operator_setup(tmp)
        args = ("-c", str(conf))
        creds = {"nats_creds_file": str(creds_file)}
    with private_nats_server(args=args) as url:
        yield url, creds


async def _refused(url: str) -> None:
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, connect_timeout=2)


@pytest.mark.parametrize("kind", KINDS)
async def test_gateway_connection_uses_the_credential(kind: str, tmp_path: Path) -> None:
    with server_for(kind, tmp_path) as (url, creds):
        await _refused(url)
        s = Settings(_env_file=None, nats_url=url, **creds)  # type: ignore[arg-type]
        nc = await bus.connect(s, name="gateway")
        try:
            sub = await nc.subscribe("cred.echo")
            await nc.publish("cred.echo", b"hello")
            msg = await sub.next_msg(timeout=2)
            assert msg.data == b"hello"
        finally:
            await nc.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_broker_uses_the_credential(kind: str, tmp_path: Path) -> None:
    with server_for(kind, tmp_path) as (url, creds):
        await _refused(url)
        s = Settings(_env_file=None, nats_url=url, **creds)  # type: ignore[arg-type]
        broker = bus.make_broker(s, name="asr")
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        @broker.subscriber("cred.work")
        async def handle(body: bytes) -> None:
            got.set_result(body)

        await broker.start()
        try:
            await broker.publish(b"work", "cred.work")
            assert await asyncio.wait_for(got, 3) == b"work"
        finally:
            await broker.stop()


def test_two_credential_kinds_are_refused_in_one_line(tmp_path: Path) -> None:
    s = Settings(_env_file=None, nats_user="svc", nats_token="t")
    with pytest.raises(ValueError, match="NATS_USER, NATS_TOKEN") as e:
        bus.connect_options(s, name="asr")
    assert "\n" not in str(e.value)


def test_service_with_an_unusable_nats_url_says_so_in_one_line() -> None:
    """The platform-team report: a cluster list mistyped must not end in a traceback."""
    env = {"NATS_URL": "nats://127.0.0.1:14231,nats://x:port", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.tts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err == [
        "tts: NATS_URL: 'nats://x:port' has no port number in 1-65535 (list several servers "
        "separated by commas: nats://a:4222,nats://b:4222)"
    ], proc.stderr
