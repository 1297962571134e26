"""The secured server (deploy/nats-server-secured.conf) for the permission tests, and local copies of
the two changes the services need to run under it (they are not in services/ yet):

- every connection uses its own reply-inbox prefix, `_INBOX.<user>`, the only subjects its user may
  subscribe to (`reply_prefix`, passed as nats.connect(..., inbox_prefix=...) or to NatsBroker);
- the inbox consumer is created on the one subject the permissions allow, the one that carries its
  filter (`create_consumer`; nats-py's add_consumer sends a config with only a durable name to the
  legacy $JS.API.CONSUMER.DURABLE.CREATE subject, which is no longer allowed).
"""

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo
from nats.js.errors import APIError, NotFoundError

from refbus.services.core.natsserver import DEPLOY_DIR, EmbeddedNats

USERS = ("admin", "operator", "social", "health", "education", "justice", "pager")
SECURED_CONFIG = DEPLOY_DIR / "nats-server-secured.conf"
PERMISSIONS_CONFIG = DEPLOY_DIR / "nats-permissions.conf"


def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    """The body of each test module's `secured_server` fixture."""
    for user in USERS:
        monkeypatch.setenv(f"REFBUS_{user.upper()}_PASSWORD", f"pw-{user}")
    server = EmbeddedNats(tmp_path / "nats", config=SECURED_CONFIG).start()
    yield server
    server.stop()


def url_for(server: EmbeddedNats, user: str) -> str:
    return f"nats://{user}:pw-{user}@127.0.0.1:{server.port}"


def reply_prefix(url: str) -> str:
    """The reply-inbox prefix of the user a URL connects as: `_INBOX.<user>` (`_INBOX`, nats-py's
    default, without a user in the URL)."""
    user = urlparse(url.split(",")[0]).username
    return f"_INBOX.{user}" if user else "_INBOX"


async def connect_as(server: EmbeddedNats, user: str, errors: list[Exception] | None = None) -> NATS:
    """A connection as `user`, with its own reply prefix; asynchronous errors (permission
    violations) are appended to `errors`."""
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(exc)

    url = url_for(server, user)
    return await nats.connect(url, inbox_prefix=reply_prefix(url), error_cb=on_error, allow_reconnect=False)


async def create_consumer(nc: NATS, stream: str, config: ConsumerConfig, wait: float = 5.0) -> ConsumerInfo:
    """Create a named consumer with one filter on `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`,
    the subject the permissions allow: the server refuses a config whose filter is not the one in the
    subject (10131) or that has several (10137). Creating it again with the same config is a no-op;
    with another config it fails (10148), since the action is `create`, not update."""
    name = config.name or config.durable_name
    if not name or not config.filter_subject or config.filter_subjects:
        raise ValueError("a consumer created this way needs a name and exactly one filter_subject")
    body = {"stream_name": stream, "config": config.evolve(name=name).as_dict(), "action": "create"}
    msg = await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{config.filter_subject}",
                           json.dumps(body).encode(), timeout=wait)
    resp = json.loads(msg.data)
    if "error" in resp:
        APIError.from_error(resp["error"])  # raises
    return ConsumerInfo.from_response(resp)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """services/core/inbox.py's ensure_consumer with create_consumer in place of js.add_consumer."""
    assert config.durable_name
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await create_consumer(js._nc, stream, config)


def services_use_identity_inboxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until services/ carries the change: the services' broker connects with the user's reply
    prefix, and their inbox consumer is created on the filtered subject."""
    from faststream.nats import NatsBroker

    from refbus.services.core import app, sector_service

    def broker(*args: object, servers: list[str], **kwargs: object) -> NatsBroker:
        return NatsBroker(*args, servers=servers, inbox_prefix=reply_prefix(servers[0]), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "NatsBroker", broker)
    monkeypatch.setattr(sector_service, "ensure_consumer", ensure_consumer)
