"""The secured server (deploy/nats-server-secured.conf) for the permission tests: started with a
password per user, and connections as each user with its own reply prefix (as the services connect)."""

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from refbus.services.runtime.bus import reply_prefix
from refbus.services.runtime.embedded import DEPLOY_DIR, EmbeddedNats

USERS = (
    "admin", "operator", "social", "health", "education", "justice", "pager", "deadlines",
    "social-system", "health-system", "education-system", "justice-system",
)
SECURED_CONFIG = DEPLOY_DIR / "nats-server-secured.conf"
PERMISSIONS_CONFIG = DEPLOY_DIR / "nats-permissions.conf"


def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    """The body of each test module's `secured_server` fixture."""
    for user in USERS:
        monkeypatch.setenv(f"REFBUS_{user.upper().replace('-', '_')}_PASSWORD", f"pw-{user}")
    server = EmbeddedNats(tmp_path / "nats", config=SECURED_CONFIG).start()
    yield server
    server.stop()


def url_for(server: EmbeddedNats, user: str) -> str:
    return f"nats://{user}:pw-{user}@127.0.0.1:{server.port}"


async def connect_as(server: EmbeddedNats, user: str, errors: list[Exception] | None = None) -> NATS:
    """A connection as `user`, with its own reply prefix; asynchronous errors (permission
    violations) are appended to `errors`."""
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(exc)

    url = url_for(server, user)
    return await nats.connect(url, inbox_prefix=reply_prefix(url), error_cb=on_error, allow_reconnect=False)
