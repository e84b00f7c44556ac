"""NATS credentials made here, offline: NKey users and a JWT ``.creds`` file (no ``nsc``).

The operator, account and user JWTs are signed with nkeys exactly as ``nsc`` signs them
(header ``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url, ed25519 over ``header.body``), so
a stock nats-server in operator mode (``resolver: MEMORY``) accepts the creds file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeyPair:
    """An NKey: ``seed`` (secret, ``S...``) and ``public`` (``U...``/``A...``/``O...``)."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        """ed25519 signature of ``data``."""
        signed: bytes = nkeys.from_seed(self.seed.encode()).sign(data)
        return signed


def new_keypair(prefix: int) -> KeyPair:
    """A fresh NKey of kind ``prefix`` (``nkeys.PREFIX_BYTE_USER`` etc.)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return KeyPair(seed=seed.decode(), public=nkeys.from_seed(seed).public_key.decode())


def _jwt(signer: KeyPair, *, subject: str, name: str, claims: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": signer.public,
        "name": name,
        "sub": subject,
        "nats": claims,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


def nkey_server_conf(path: Path, *, user: KeyPair) -> Path:
    """A nats-server config that admits only the NKey user ``user``."""
    path.write_text(f'authorization {{ users = [ {{ nkey: "{user.public}" }} ] }}\n')
    return path


def write_seed(path: Path, key: KeyPair) -> Path:
    """The seed file ``NATS_NKEY_SEED_FILE`` points at."""
    path.write_text(key.seed + "\n")
    path.chmod(0o600)
    return path


def operator_setup(directory: Path) -> tuple[Path, Path]:
    """(server config, user creds file): an operator-mode server and one user it trusts."""
    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1}
    op_jwt = _jwt(
        operator, subject=operator.public, name="op", claims={"type": "operator", "version": 2}
    )
    acc_jwt = _jwt(
        operator,
        subject=account.public,
        name="voice",
        claims={
            "limits": {**unlimited, "wildcards": True, "conn": -1, "leaf": -1},
            "type": "account",
            "version": 2,
        },
    )
    user_jwt = _jwt(
        account,
        subject=user.public,
        name="svc",
        claims={"pub": {}, "sub": {}, **unlimited, "type": "user", "version": 2},
    )
    conf = directory / "operator.conf"
    conf.write_text(
        f'operator: "{op_jwt}"\nresolver: MEMORY\n'
        f'resolver_preload: {{ {account.public}: "{acc_jwt}" }}\n'
    )
    creds = directory / "svc.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    return conf, creds
