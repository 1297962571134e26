"""TLS on the bus (issue 17): once `refbus certs` has written the data dir's secrets/tls/, the embedded
server asks every client for TLS, the commands and the services connect over it trusting that CA and
still prove who they are by nkey; a client that does not trust the CA, one that speaks plain text, and
one without credentials are refused; a client that trusts a CA refuses a server that is plain."""

import asyncio
import json
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime import identities
from refbus.services.runtime.bus import BusUnavailable, connect, open_bus
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.runtime.in_process import history_pager
from refbus.services.runtime.settings import Settings
from refbus.services.runtime.tls import client_context, make_certs, upgraded
from tests.factories import new_child, request
from tests.integration.cli_runner import _env, refbus
from tests.services import TEST_EVENT_ID_KEY

pytestmark = pytest.mark.integration


def _json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def _tls_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", event_id_key_hex=TEST_EVENT_ID_KEY.hex())
    make_certs(settings.secrets / "tls")
    return settings


async def test_the_bus_over_tls_appends_and_reads_and_each_service_is_itself(tmp_path: Path) -> None:
    settings = _tls_settings(tmp_path)
    async with open_bus(settings, announce=False) as bus:
        assert bus.url.startswith("tls://") and upgraded(bus.nc)
        eventlog = JetStreamEventStore(bus.nc)
        child = new_child()
        req = request(child)
        assert len((await eventlog.transact(child, lambda _state: [req])).stored) == 1
        assert [h.event for h in await eventlog.history(child)] == [req]
        assert bus.record is not None
        async with history_pager(bus.url, settings):  # a service's broker (FastStream) over TLS
            url = f"{bus.record.monitor_url}/connz?auth=true&limit=100"
            connections = (await asyncio.to_thread(_json, url))["connections"]
        by_name = {c.get("name"): c for c in connections}
        assert by_name["refbus-pager"]["authorized_user"] == identities.load(settings.secrets / "nats")["pager"]
        assert all(c.get("tls_version", "").startswith("1.") for c in connections), connections
        assert _json(f"{bus.record.monitor_url}/varz")["tls_required"]


async def test_a_client_without_the_ca_plain_text_or_no_credentials_is_refused(tmp_path: Path) -> None:
    settings = _tls_settings(tmp_path)
    async with open_bus(settings, announce=False) as bus:
        admin = settings.nats_credentials("admin")
        with pytest.raises(BusUnavailable, match="not signed by the CA this client trusts"):
            await connect(bus.url, "no-ca", 2.0, reconnect=False, credentials=admin)
        stranger_ca = make_certs(tmp_path / "stranger").folder / "ca.pem"
        with pytest.raises(BusUnavailable, match="not signed by the CA"):
            await connect(bus.url, "other-ca", 2.0, reconnect=False, credentials=admin,
                          tls=client_context(stranger_ca))
        with pytest.raises(BusUnavailable, match="authorization refused"):
            await connect(bus.url, "no-seed", 2.0, reconnect=False, tls=settings.tls_context())
        port = urlparse(bus.url).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            reader = plain.makefile("rb")
            assert json.loads(reader.readline()[5:])["tls_required"]
            plain.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            assert b"PONG" not in reader.read()  # no TLS handshake: it hangs up


async def test_a_client_that_trusts_a_ca_refuses_a_plain_server(tmp_path: Path) -> None:
    plain = EmbeddedNats(tmp_path / "plain").start()
    try:
        ca = make_certs(tmp_path / "tls").folder / "ca.pem"
        with pytest.raises(BusUnavailable, match=r"does not ask for TLS.*refusing plain text"):
            await connect(plain.url, "careful", 2.0, reconnect=False, tls=client_context(ca))
        nc = await connect(plain.url, "as-before", 2.0, reconnect=False)  # without a CA: as before
        assert not upgraded(nc)
        await nc.close()
    finally:
        plain.stop()


def test_the_readme_commands_run_over_tls_after_refbus_certs(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    made = refbus("certs", env=env)
    assert made.code == 0, made.err
    assert "runs TLS from its next start" in made.err
    run = refbus("children", "--json", env=env)
    assert run.code == 0, run.err
    assert "started the embedded server" in run.err and "tls://127.0.0.1:" in run.err
    assert "eof_received" not in run.err  # asyncio's TLS noise is kept from the user
    again = refbus("certs", env=env)
    assert again.code == 0 and "keeping the CA" in again.out
