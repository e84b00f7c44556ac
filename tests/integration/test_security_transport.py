"""Data in transit and at rest, with the files in deploy/: NATS over TLS with JetStream
encrypted at rest (deploy/nats/tls.conf), cluster routes only between servers of the cluster's
CA ($ROUTE_TLS of deploy/nats/auth.conf), Redis over TLS with one ACL user per service
(deploy/redis/). Throw-away CAs and certificates are made here with ``cryptography``."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import shutil
import string
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from services.agent.history import History, user_message
from services.agent.store import Store
from shared import bus, callevents, subjects
from shared.callstate import call_key
from shared.messages import Transcript
from shared.settings import Settings
from tests.natsserver import free_port, nats_server_binary, private_nats_server, wait_listening

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "nats"
REDIS_DIR = ROOT / "deploy" / "redis"
USERS = ("gateway", "asr", "agent", "tts", "operator")
PASSWORDS = {u: f"pw-{u}-{uuid.uuid4().hex[:8]}" for u in USERS}


# ------------------------------------------------------------------ throw-away PKI


@dataclass(frozen=True)
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, cert_path: Path, key_path: Path) -> None:
        """A server-and-client certificate for 127.0.0.1 / localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="va-transport-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _nats_files(dest: Path, tls_dir: Path, store: Path) -> None:
    """The shipped NATS files, verbatim but for where certificates and the store live."""
    for name in ("nats-server.conf", "auth.conf", "tls.conf", "routes.conf"):
        text = (NATS_DIR / name).read_text()
        text = text.replace("/etc/nats/tls/", f"{tls_dir}/").replace("/data/nats", str(store))
        (dest / name).write_text(text)


def _nats_env(**extra: str) -> dict[str, str]:
    env = {f"{u.upper()}_NATS_PASSWORD": p for u, p in PASSWORDS.items()}
    return dict(os.environ, **env, **extra)


def _blocks_contain(store: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in store.rglob("*") if p.is_file())


async def _store_a_transcript(url: str, ca: Path | None, words: str) -> None:
    """The gateway makes the event store, ASR publishes a transcript, operator reads it back."""

    async def connect(user: str) -> nats.NATS:
        s = Settings(
            _env_file=None,
            nats_url=url,
            nats_user=user,
            nats_password=SecretStr(PASSWORDS[user]),
            nats_inbox_prefix=f"_INBOX_{user}",
            nats_tls_ca_file=str(ca) if ca else "",
        )
        opts = bus.connect_options(s, name=user)
        opts.update(max_reconnect_attempts=0, allow_reconnect=False)
        return await nats.connect(url, **opts)

    gw, asr, op = await connect("gateway"), await connect("asr"), await connect("operator")
    try:
        assert await callevents.ensure_stream(gw, Settings(_env_file=None, events_retention_h=1))
        call = "CA" + uuid.uuid4().hex
        said = Transcript(call_sid=call, utterance_id=1, text=words, is_final=True)
        await asr.publish(subjects.transcript(call), said.to_bytes())
        await asr.flush()
        for _ in range(100):
            stored = await callevents.read_call(op, call)
            if stored:
                break
            await asyncio.sleep(0.05)
        assert [words in m.data.decode() for m in stored] == [True]
    finally:
        for nc in (gw, asr, op):
            await nc.close()


# ------------------------------------------------------------------ NATS


async def test_nats_takes_tls_clients_only_and_encrypts_transcripts_at_rest(
    workdir: Path,
) -> None:
    ca = Ca.make("voiceagent test CA")
    tls_dir = workdir / "tls"
    tls_dir.mkdir()
    ca.write(tls_dir / "ca.crt")
    ca.issue(tls_dir / "server.crt", tls_dir / "server.key")
    conf, store = workdir / "conf", workdir / "store"
    conf.mkdir()
    _nats_files(conf, tls_dir, store)
    words = f"my member number is {uuid.uuid4().hex}"
    port = free_port()
    env = _nats_env(NATS_JS_KEY=uuid.uuid4().hex + uuid.uuid4().hex)
    with private_nats_server(args=("-c", str(conf / "tls.conf")), env=env, port=port):
        url = f"tls://127.0.0.1:{port}"
        await _store_a_transcript(url, tls_dir / "ca.crt", words)
        # Without TLS, no connection at all.
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises various errors here
            await nats.connect(
                f"nats://127.0.0.1:{port}",
                user="gateway",
                password=PASSWORDS["gateway"],
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=1,
            )
    # The server has stopped (its files flushed): the words are nowhere in its store.
    assert store.exists() and not _blocks_contain(store, words.encode())

    # The same traffic through the shipped plain config keeps them readable on disk: the
    # check above would see them.
    plain_store = workdir / "plain-store"
    _nats_files(conf, tls_dir, plain_store)
    with private_nats_server(args=("-c", str(conf / "nats-server.conf")), env=_nats_env()) as url:
        await _store_a_transcript(url, None, words)
    assert _blocks_contain(plain_store, words.encode())


def _routes(monitor_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/routez", timeout=2) as r:
        return int(json.load(r)["num_routes"])


def test_cluster_routes_only_between_servers_of_the_cluster_ca(workdir: Path) -> None:
    """Two servers with deploy/nats/routes.conf form a cluster; a third with another CA's
    certificate cannot join (its routes fail the TLS handshake)."""
    cluster_ca, other_ca = Ca.make("cluster CA"), Ca.make("someone else's CA")
    ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    monitor = [free_port() for _ in range(3)]
    routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in route_ports)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            node = workdir / f"n{i}"
            tls_dir = node / "tls"
            tls_dir.mkdir(parents=True)
            ca = cluster_ca if i < 2 else other_ca
            ca.write(tls_dir / "route-ca.crt")
            ca.issue(tls_dir / "route.crt", tls_dir / "route.key")
            _nats_files(node, tls_dir, node / "store")
            # A minimal stand-in for deploy/nats/cluster.conf: the shipped users and routes.conf.
            (node / "cluster.conf").write_text(
                "include ./auth.conf\n"
                f"server_name: n{i}\n"
                f"cluster {{\n  name: va\n  listen: 127.0.0.1:{route_ports[i]}\n"
                f"  routes: [{routes}]\n  include ./routes.conf\n}}\n"
            )
            argv = [
                *("-c", str(node / "cluster.conf")),
                *("-a", "127.0.0.1", "-p", str(ports[i]), "-m", str(monitor[i])),
            ]
            procs.append(
                subprocess.Popen(
                    [nats_server_binary(), *argv],
                    env=_nats_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for p, proc in zip(monitor, procs, strict=True):
            wait_listening(p, proc=proc)
        deadline = time.monotonic() + 10
        while _routes(monitor[0]) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the outsider has retried its routes meanwhile
        assert _routes(monitor[0]) >= 1 and _routes(monitor[1]) >= 1  # n0 <-> n1
        assert _routes(monitor[2]) == 0  # n2 never joined
        # n0 and n1 see only each other.
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor[0]}/routez", timeout=2) as r:
            peers = {route["remote_name"] for route in json.load(r)["routes"]}
        assert peers == {"n1"}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


# ------------------------------------------------------------------ Redis


@pytest.fixture
def redis_tls(workdir: Path) -> Iterator[tuple[int, Path]]:
    """redis-server with deploy/redis/redis.conf and the rendered users.acl.template."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    ca = Ca.make("redis test CA")
    tls_dir = workdir / "redis-tls"
    tls_dir.mkdir()
    ca.write(tls_dir / "ca.crt")
    ca.issue(tls_dir / "redis.crt", tls_dir / "redis.key")
    # As documented: grep -v '^#' users.acl.template | envsubst > users.acl
    rules = [
        line
        for line in (REDIS_DIR / "users.acl.template").read_text().splitlines(keepends=True)
        if not line.startswith("#")
    ]
    acl = string.Template("".join(rules)).substitute(
        {f"{u.upper()}_REDIS_PASSWORD": PASSWORDS[u] for u in ("agent", "gateway", "tts")}
    )
    (workdir / "users.acl").write_text(acl)
    port = free_port()
    conf = (REDIS_DIR / "redis.conf").read_text()
    conf = conf.replace("/etc/redis/tls/", f"{tls_dir}/").replace(
        "/etc/redis/users.acl", str(workdir / "users.acl")
    )
    conf = conf.replace("tls-port 6379", f"tls-port {port}") + f"\ndir {workdir}\nbind 127.0.0.1\n"
    (workdir / "redis.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, str(workdir / "redis.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc=proc, what="redis-server")
        yield port, tls_dir / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _url(user: str, port: int, ca: Path) -> str:
    return f"rediss://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"


async def test_redis_users_each_reach_only_their_keys_over_tls(
    redis_tls: tuple[int, Path],
) -> None:
    port, ca = redis_tls
    call = "CA" + uuid.uuid4().hex
    hist = call_key("hist", call)

    # The agent, through its own store, keeps a history in Redis (not the memory fallback).
    store = Store(url=_url("agent", port, ca))
    history = History(store=store)
    try:
        await history.append(call, [user_message("my date of birth is 1 May", turn=1)])
        assert store.redis_up
        assert [m["content"] for m in await history.load(call)] == ["my date of birth is 1 May"]
    finally:
        await store.aclose()

    tts = aioredis.Redis.from_url(_url("tts", port, ca))
    gw = aioredis.Redis.from_url(_url("gateway", port, ca))
    try:
        # TTS: its prompt cache yes, a caller's history no.
        await tts.set("va:tts:1:probe", b"audio", ex=60)
        assert await tts.get("va:tts:1:probe") == b"audio"
        for read in (tts.lrange(hist, 0, -1), tts.get(hist), tts.type(hist)):
            with pytest.raises(NoPermissionError):
                await read
        with pytest.raises(NoPermissionError):
            await tts.keys("va:*")
        # The gateway reads a history (transcript export) but cannot change it.
        assert len(await gw.lrange(hist, 0, -1)) == 1
        with pytest.raises(NoPermissionError):
            await gw.rpush(hist, "forged")
        assert await gw.set(f"va:tok:{uuid.uuid4().hex}", b"1", nx=True, ex=60)
    finally:
        await tts.aclose()
        await gw.aclose()

    # No anonymous user, no wrong password, no plain TCP.
    for url in (
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}",
        f"rediss://agent:wrong@127.0.0.1:{port}/0?ssl_ca_certs={ca}",
    ):
        anon = aioredis.Redis.from_url(url)
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await anon.get(hist)
        finally:
            await anon.aclose()
    plain = aioredis.Redis.from_url(
        f"redis://agent:{PASSWORDS['agent']}@127.0.0.1:{port}/0", socket_timeout=1
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - the TLS port drops a plain client
            await plain.get(hist)
    finally:
        await plain.aclose()
