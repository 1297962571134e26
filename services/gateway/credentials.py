"""Each sector system's credentials: generated into the data dir on first start (readable by its
owner only), or given in the environment. Never logged, never committed.

- the bearer token a sector system presents to its gateway over HTTP (REFBUS_GATEWAY_TOKEN_<SECTOR>)
- the secret its webhook deliveries are signed with, Standard Webhooks style `whsec_<base64>`
  (REFBUS_WEBHOOK_SECRET_<SECTOR>)
"""

import base64
import hmac
import os
import secrets
from pathlib import Path

from refbus.contracts.vocabulary import Sector


def _kept(path: Path, make: str) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()  # another service of this process made it meanwhile
        with os.fdopen(fd, "w") as out:
            out.write(make)
    return path.read_text().strip()


def gateway_token(data_dir: Path, sector: Sector) -> str:
    env = os.environ.get(f"REFBUS_GATEWAY_TOKEN_{sector.value.upper()}")
    if env:
        return env
    return _kept(data_dir / "secrets" / f"gateway-{sector.value}.token", secrets.token_urlsafe(32))


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret_file(data_dir: Path, sector: Sector) -> Path | None:
    """Where the sector's webhook secret is kept, or None when the environment sets it."""
    if os.environ.get(f"REFBUS_WEBHOOK_SECRET_{sector.value.upper()}"):
        return None
    return data_dir / "secrets" / f"webhook-{sector.value}.secret"


def webhook_secret(data_dir: Path, sector: Sector) -> str:
    kept = webhook_secret_file(data_dir, sector)
    if kept is None:
        return os.environ[f"REFBUS_WEBHOOK_SECRET_{sector.value.upper()}"]
    return _kept(kept, _new_webhook_secret())


def rotate_webhook_secret(path: Path) -> str:
    """A new secret in place of the one at `path` (written aside, then renamed: never half a secret)."""
    made = _new_webhook_secret()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = path.with_name(path.name + f".{os.getpid()}.new")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(made)
    os.replace(aside, path)
    return made


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (Standard Webhooks: the base64 after the prefix)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, "sha256").digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in header.split())
