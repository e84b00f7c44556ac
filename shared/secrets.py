"""Secrets from the environment, ``.env``, or an AWS Secrets Manager JSON secret.

``ENV_VARS_ARN`` names a secret whose value is a JSON object of ``NAME: value`` pairs (e.g.
``{"TWILIO_AUTH_TOKEN": "...", "OPENAI_API_KEY": "..."}``). :func:`load_into_environ` copies
them into ``os.environ`` before settings are read; a variable already set (environment or
``.env``) wins, so an operator can override one value without editing the secret.

Values never appear in logs or in exception messages: failures name the secret and the kind of
error only (boto3's own messages can quote request data, so they are not passed on).
Region and endpoint come from the ARN and the standard AWS variables (``AWS_ENDPOINT_URL``
points boto3 at an emulator in tests).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import MutableMapping
from typing import Any

from shared.logging import kv

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):")


class SecretsError(RuntimeError):
    """The secret could not be loaded (the message never includes a secret value)."""


def region_of(arn: str) -> str | None:
    """The region inside a Secrets Manager ARN (None for a plain secret name)."""
    m = _ARN_REGION.match(arn)
    return m.group(1) if m else None


# botocore logs whole response bodies (the secret itself) at DEBUG: never let it.
_CHATTY = ("botocore", "boto3", "urllib3", "s3transfer")


def _quiet_sdk_logs() -> None:
    for name in _CHATTY:
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)


def fetch(arn: str, *, client: Any = None) -> dict[str, str]:
    """The secret's ``NAME: value`` pairs (values as strings)."""
    _quiet_sdk_logs()
    if client is None:
        try:
            import boto3
        except ImportError:
            raise SecretsError(
                "ENV_VARS_ARN is set but boto3 is missing: install the aws extra"
            ) from None
        region = (
            region_of(arn) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        )
        client = boto3.client("secretsmanager", region_name=region)
    try:
        resp = client.get_secret_value(SecretId=arn)
    except Exception as e:
        # Not chained: botocore exceptions can carry request parameters.
        raise SecretsError(f"could not read secret {arn}: {type(e).__name__}") from None
    raw = resp.get("SecretString")
    if not isinstance(raw, str):
        raise SecretsError(f"secret {arn} has no SecretString (binary secrets are not supported)")
    try:
        data = json.loads(raw)
    except ValueError:
        raise SecretsError(f"secret {arn} is not a JSON object") from None
    if not isinstance(data, dict):
        raise SecretsError(f"secret {arn} is not a JSON object")
    out: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SecretsError(f"secret {arn} has an invalid variable name")
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        else:
            raise SecretsError(f"secret {arn}: {name} is not a string or number")
    return out


def dotenv_names(path: str = ".env") -> set[str]:
    """Upper-cased names set in a ``.env`` file (which win over the secret)."""
    from dotenv import dotenv_values

    return {k.upper() for k in dotenv_values(path)} if os.path.exists(path) else set()


def load_into_environ(
    arn: str,
    *,
    environ: MutableMapping[str, str] | None = None,
    keep: set[str] | None = None,
    client: Any = None,
) -> list[str]:
    """Copy the secret's variables into ``environ`` unless already set there or named in
    ``keep`` (e.g. :func:`dotenv_names`); returns the names applied."""
    env = os.environ if environ is None else environ
    values = fetch(arn, client=client)
    taken = {k.upper() for k in env} | {k.upper() for k in keep or ()}
    applied = []
    for name, value in values.items():
        if name.upper() in taken:
            continue
        env[name] = value
        applied.append(name)
    # Names only: they are configuration keys, never values.
    log.info("secrets loaded", **kv(count=len(applied), source="aws-secrets-manager"))
    return applied
