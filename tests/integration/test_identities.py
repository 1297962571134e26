"""Authentication on by default (issue 17): the embedded default that `refbus up` and every command
start refuses a connection without credentials, each process connects as its own nkey identity,
and the seeds are kept owner-only in the data dir (services/runtime/identities.py)."""

import asyncio
import json
import stat
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from refbus.contracts.vocabulary import Sector
from refbus.services.runtime import identities
from refbus.services.runtime.bus import open_bus
from refbus.services.runtime.in_process import deadline_service, history_pager, sector_services
from refbus.services.runtime.settings import Settings
from tests.services import TEST_EVENT_ID_KEY

pytestmark = pytest.mark.integration


def _json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


async def test_the_default_bus_refuses_a_connection_without_credentials(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", event_id_key_hex=TEST_EVENT_ID_KEY.hex())
    async with open_bus(settings, announce=False) as bus:
        with pytest.raises(nats.errors.Error) as refused:
            await nats.connect(bus.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        assert "authorization" in str(refused.value).lower()
        # A seed the server was not told about: refused too.
        stranger = tmp_path / "stranger"
        identities.ensure(stranger, ("admin",))
        with pytest.raises((nats.errors.Error, NoServersError)):
            await nats.connect(bus.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2,
                               nkeys_seed=str(identities.seed_path(stranger, "admin")))
    folder = settings.secrets / "nats"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for identity in identities.IDENTITIES:
        seed = identities.seed_path(folder, identity)
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600, identity
        assert seed.read_bytes().startswith(b"SU")  # a user seed


async def test_each_in_process_service_connects_as_its_own_identity(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", event_id_key_hex=TEST_EVENT_ID_KEY.hex())
    async with open_bus(settings, announce=False) as bus:
        assert bus.record is not None
        public = identities.load(settings.secrets / "nats")
        async with sector_services(bus.url, settings), history_pager(bus.url, settings), \
                deadline_service(bus.url, settings):
            url = f"{bus.record.monitor_url}/connz?auth=true&limit=100"
            connections = (await asyncio.to_thread(_json, url))["connections"]
        by_name = {c.get("name"): c.get("authorized_user") for c in connections}
        for service in (*(s.value for s in Sector), "pager", "deadlines"):
            assert by_name[f"refbus-{service}"] == public[service], service
        assert by_name["refbus"] == public["admin"]  # the command itself (up, demo): the admin
