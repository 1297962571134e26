"""The authenticated server (deploy/nats-server.conf, the embedded default) for the permission tests:
started with an nkey per user (seeds in <tmp>/secrets/nats/), and connections as each user with its
own seed and reply prefix (as the services connect)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.reads.client import ViewReader
from refbus.services.runtime import identities
from refbus.services.runtime.embedded import DEFAULT_CONFIG, DEPLOY_DIR, EmbeddedNats
from refbus.services.runtime.identities import Credentials
from refbus.services.runtime.settings import Settings

USERS = identities.IDENTITIES
SECURED_CONFIG = DEFAULT_CONFIG
PERMISSIONS_CONFIG = DEPLOY_DIR / "nats-permissions.conf"


def start(data_dir: Path, secrets: Path, **options: object) -> EmbeddedNats:
    """The authenticated server on `data_dir`, its users' seeds in `secrets`/nats/."""
    users = identities.server_env(identities.ensure(secrets / "nats"))
    return EmbeddedNats(data_dir, config=SECURED_CONFIG, env=users, **options).start()  # type: ignore[arg-type]


def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[EmbeddedNats]:
    """The body of each test module's `secured_server` fixture."""
    server = start(tmp_path / "nats", tmp_path / "secrets")
    yield server
    server.stop()


def seed_file(server: EmbeddedNats, user: str) -> Path:
    """`user`'s seed, kept beside the server's data dir by `start`."""
    return identities.seed_path(server.data_dir.parent / "secrets" / "nats", user)


def settings_for(server: EmbeddedNats, user: str, **values: object) -> Settings:
    """Settings of a process that connects to `server` as `user` (REFBUS_NATS_NKEY_SEED_FILE)."""
    return Settings(nats_url=server.url, nats_seed_file=seed_file(server, user), **values)  # type: ignore[arg-type]


def env_for(server: EmbeddedNats, user: str) -> dict[str, str]:
    """The environment of a refbus command that connects to `server` as `user`."""
    return {"REFBUS_NATS_URL": server.url, "REFBUS_NATS_NKEY_SEED_FILE": str(seed_file(server, user))}


async def connect_as(server: EmbeddedNats, user: str, errors: list[Exception] | None = None) -> NATS:
    """A connection as `user`, with its own seed and reply prefix; asynchronous errors (permission
    violations) are appended to `errors`."""
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(exc)

    options = Credentials(user, seed_file(server, user)).connect_options()
    return await nats.connect(server.url, error_cb=on_error, allow_reconnect=False, **options)  # type: ignore[arg-type]


def sector_store(nc: NATS, sector: Sector, **options: Any) -> JetStreamEventStore:
    """A sector's store as its service has it: it reads children through the read service only
    (services/reads/; under these permissions it has no direct read of the log)."""
    return JetStreamEventStore(nc, reader=ViewReader(nc, sector, options.get("timeout", 5.0)), **options)
