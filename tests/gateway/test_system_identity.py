"""Under the secured config (deploy/nats-server.conf): a sector system's own NATS identity,
`health-system`, sends commands to its gateway and gets answers, but cannot publish to the stream, nor
to another sector's gateway; the sector service, as user `health`, runs its gateway (commands, webhook
consumer, events feed) with its own permissions."""

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError

from refbus.contracts import codec, subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.gateway.external import ExternalSector
from refbus.services.gateway.feed import FeedReader
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.runtime.settings import Settings
from refbus.services.sector.app import sector_app
from tests.factories import new_child, new_worker, request
from tests.gateway.systems import NodeSystem, gateway_config, needs_node, ports
from tests.integration import secured
from tests.services import TEST_EVENT_ID_KEY, read_service, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


@needs_node
async def test_a_sector_systems_identity_sends_commands_and_cannot_publish_events(
    secured_server: EmbeddedNats, tmp_path: Path
) -> None:
    admin = await secured.connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    http_port, hook = ports(2)
    system = NodeSystem(Sector.HEALTH, hook, tmp_path / "health.jsonl", f"http://127.0.0.1:{http_port}").start()
    settings = Settings(
        nats_url=secured_server.url, event_id_key_hex=TEST_EVENT_ID_KEY.hex(), data_dir=tmp_path
    )
    config = replace(gateway_config(http_port, system.url, Sector.HEALTH, external=True), nats_commands=True)
    app = sector_app(Sector.HEALTH, ExternalSector(Sector.HEALTH), settings, gateway=config)
    errors: list[Exception] = []
    reads = read_service(secured_server.url, secured.seed_file(secured_server, "pager"))
    await reads.__aenter__()
    await app.start()
    own = await secured.connect_as(secured_server, "health-system", errors)
    try:
        child = new_child()
        # A referral to health, written as social would (admin here): delivered by the webhook consumer.
        referral = request(child, Sector.SOCIAL, Sector.HEALTH)
        await admin.jetstream().publish(
            subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), codec.encode(referral),
            headers={"Nats-Msg-Id": str(referral.event_id)},
        )
        await wait_for(lambda: any(w.get("referral_id") == str(referral.referral_id) for w in system.webhooks()))
        # Its commands, over NATS as health-system: answered.
        accept = {"idempotency_key": str(uuid.uuid4()), "child": child, "actor": new_worker(),
                  "referral_id": str(referral.referral_id)}
        reply = await own.request(subjects.command_subject(Sector.HEALTH, "accept"), msgspec.json.encode(accept), 5)
        assert msgspec.json.decode(reply.data)["status"] == 201
        # The events feed reads through the service's own user, asking the read service.
        feed = await FeedReader(app.broker.connection)(Sector.HEALTH, 0, 10, 0)
        assert [d.event.event_id for d in feed.events][:1] == [referral.event_id]

        # Its direct publish to the stream: refused by the server (no PubAck; a permissions violation).
        forged = request(child, Sector.HEALTH, Sector.SOCIAL)
        with pytest.raises((NoRespondersError, NatsTimeout, NoStreamResponseError, asyncio.TimeoutError)):
            await own.jetstream(timeout=1.0).publish(
                subjects.event_subject(child, Sector.HEALTH, Sector.SOCIAL), codec.encode(forged)
            )
        # Nor may it speak for another sector's gateway.
        await own.publish(subjects.command_subject(Sector.SOCIAL, "refer"), b"{}")
        await own.flush()
        await asyncio.sleep(0.3)
        refused = [str(e) for e in errors if "permissions violation for publish" in str(e).lower()]
        assert any(subjects.event_subject(child, Sector.HEALTH, Sector.SOCIAL) in e for e in refused), errors
        assert any(subjects.command_subject(Sector.SOCIAL, "refer") in e for e in refused), errors
        stored = await admin.jetstream().stream_info(subjects.STREAM)
        assert stored.state.messages == 3  # the referral, its receipt, the acceptance: nothing forged
    finally:
        await own.close()
        await app.stop()
        await reads.__aexit__(None, None, None)
        system.stop()
        await admin.close()
