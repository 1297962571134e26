"""A sector system registers its own webhook over the gateway (PUT/GET/DELETE /v1/health/webhook),
over real HTTP against a real nats-server: the registered endpoint (a small receiver here) gets
signed deliveries; after DELETE none arrive; registered again, the missed ones arrive, in order,
none lost; the registration survives a restart of the service; the secret is not rotated unless
asked; a URL that is not http(s) is a clear 422; another sector's token is refused."""

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from refbus.contracts.commands import WebhookRecord
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.gateway import credentials
from refbus.services.gateway.external import ExternalSector
from refbus.services.gateway.registration import KvRecords, RegistrationUnavailable
from refbus.services.rules.policy import SimulatedSector
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child, new_worker
from tests.gateway.systems import TOKENS, WebhookReceiver, gateway_config, gateways, ports
from tests.gateway.systems import post as command
from tests.integration import secured
from tests.services import wait_for

pytestmark = pytest.mark.integration




def refer(child: str) -> dict[str, Any]:
    return {
        "idempotency_key": f"refer-{uuid.uuid4()}", "child": child, "actor": new_worker(), "to_sector": "health",
        "dimension": "health", "service": "vaccination", "urgency": "routine", "legal_basis": "child_protection_duty",
    }


async def test_a_system_registers_unregisters_and_registers_again_without_loss(bus: str, tmp_path: Path) -> None:
    social_port, health_port, hook_port = ports(3)
    # The health gateway keeps its secret in the data dir, as deployed without REFBUS_WEBHOOK_SECRET_HEALTH.
    secret_file = credentials.webhook_secret_file(tmp_path, Sector.HEALTH)
    assert secret_file is not None
    secret = credentials.webhook_secret(tmp_path, Sector.HEALTH)
    health_config = dataclasses.replace(
        gateway_config(health_port, None, Sector.HEALTH, external=True),
        webhook_secret=secret, webhook_secret_file=secret_file, registration_poll_s=0.2,
    )
    configs = {Sector.SOCIAL: gateway_config(social_port, None, Sector.SOCIAL), Sector.HEALTH: health_config}
    social, base = f"http://127.0.0.1:{social_port}", f"http://127.0.0.1:{health_port}/v1/health/webhook"
    auth = {"Authorization": f"Bearer {TOKENS[Sector.HEALTH]}"}
    sent: list[str] = []

    async def refer_some(n: int) -> None:
        for _ in range(n):
            sent.append((await command(social, Sector.SOCIAL, "refer", refer(new_child()))).json()["event_id"])

    receiver = WebhookReceiver(hook_port)
    async with (
        gateways(bus, {Sector.SOCIAL: SimulatedSector(Sector.SOCIAL)}, configs, tmp_path),
        receiver.running(),
        httpx.AsyncClient(timeout=30) as client,
    ):
        health = {Sector.HEALTH: ExternalSector(Sector.HEALTH)}
        async with gateways(bus, health, configs, tmp_path):
            shown = (await client.get(base, headers=auth)).json()
            assert shown == {"url": None, "source": "none", "delivering": False, "updated_at": None, "secret": None}
            # Refusals: not http(s), another sector's token, no token.
            bad = await client.put(base, json={"url": "ftp://127.0.0.1/hook"}, headers=auth)
            assert (bad.status_code, bad.json()["code"], bad.json()["field"]) == (422, "invalid", "url")
            assert "http or https" in bad.json()["detail"]
            for wrong in ("http://", "http://system.example/hook\n", "http://a b/hook", "hook"):
                bad = await client.put(base, json={"url": wrong}, headers=auth)
                assert (bad.status_code, bad.json()["field"]) == (422, "url"), wrong
            other = await client.put(base, json={"url": receiver.url},
                                     headers={"Authorization": f"Bearer {TOKENS[Sector.SOCIAL]}"})
            assert other.status_code == 403
            assert (await client.delete(base)).status_code == 401

            registered = await client.put(base, json={"url": receiver.url}, headers=auth)
            assert registered.status_code == 200, registered.text
            assert registered.json()["secret"] == secret and registered.json()["delivering"] is True
            receiver.secret = registered.json()["secret"]
            await refer_some(3)
            await wait_for(lambda: len(receiver.ids()) >= 3, within=20)

            stopped = await client.delete(base, headers=auth)
            assert stopped.status_code == 200
            assert stopped.json()["source"] == "unregistered" and stopped.json()["delivering"] is False
            await refer_some(4)
            await asyncio.sleep(1.5)
            assert sorted(receiver.ids()) == sorted(sent[:3]), "nothing delivered while unregistered"

            again = await client.put(base, json={"url": receiver.url}, headers=auth)
            assert again.json()["secret"] == secret, "registering again keeps the secret"
            await wait_for(lambda: len(receiver.ids()) >= 7, within=20)
            # One child each: delivered concurrently, so in no promised order across children.
            assert sorted(receiver.ids()) == sorted(sent), "the missed ones arrive, none lost"

        # The service restarts: the registration is the bus's, so deliveries resume by themselves.
        await refer_some(2)
        async with gateways(bus, health, configs, tmp_path):
            await wait_for(lambda: len(receiver.ids()) >= 9, within=20)
            shown = (await client.get(base, headers=auth)).json()
            assert (shown["url"], shown["source"], shown["delivering"]) == (receiver.url, "registered", True)
            assert shown["secret"] is None, "GET never shows the secret"
            # Rotation only when asked: the new secret signs what comes next.
            rotated = (await client.put(base, json={"url": receiver.url, "rotate_secret": True}, headers=auth)).json()
            assert rotated["secret"] != secret and secret_file.read_text() == rotated["secret"]
            receiver.secret = rotated["secret"]
            await refer_some(1)
            await wait_for(lambda: len(receiver.ids()) >= 10, within=20)
        assert sorted(receiver.ids()) == sorted(sent)
        assert all(r["valid"] for r in receiver.received), "every delivery signed with the secret then current"
        seqs = [r["seq"] for r in receiver.received]
        assert seqs == sorted(seqs)


async def test_a_default_from_the_environment_until_a_system_unregisters(bus: str, tmp_path: Path) -> None:
    """REFBUS_WEBHOOK_<SECTOR> stays the default: delivered to while nothing is registered; once
    the system unregisters, nothing is delivered even though the default is still set."""
    social_port, health_port, hook_port = ports(3)
    receiver = WebhookReceiver(hook_port)
    health_config = dataclasses.replace(
        gateway_config(health_port, receiver.url, Sector.HEALTH, external=True), registration_poll_s=0.2
    )
    receiver.secret = health_config.webhook_secret
    configs = {Sector.SOCIAL: gateway_config(social_port, None, Sector.SOCIAL), Sector.HEALTH: health_config}
    base = f"http://127.0.0.1:{health_port}/v1/health/webhook"
    auth = {"Authorization": f"Bearer {TOKENS[Sector.HEALTH]}"}
    policies = {Sector.SOCIAL: SimulatedSector(Sector.SOCIAL), Sector.HEALTH: ExternalSector(Sector.HEALTH)}
    async with gateways(bus, policies, configs, tmp_path), receiver.running(), httpx.AsyncClient() as client:
        shown = (await client.get(base, headers=auth)).json()
        assert (shown["url"], shown["source"], shown["delivering"]) == (receiver.url, "environment", True)
        answer = await command(f"http://127.0.0.1:{social_port}", Sector.SOCIAL, "refer", refer(new_child()))
        await wait_for(lambda: receiver.ids() == [answer.json()["event_id"]], within=20)
        # The secret is the deployment's (not in a data dir here): it cannot be rotated over HTTP.
        refused = await client.put(base, json={"url": receiver.url, "rotate_secret": True}, headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (409, "secret_managed_elsewhere")
        assert (await client.delete(base, headers=auth)).json()["source"] == "unregistered"
        await command(f"http://127.0.0.1:{social_port}", Sector.SOCIAL, "refer", refer(new_child()))
        await asyncio.sleep(1.0)
        assert len(receiver.ids()) == 1


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


async def test_under_the_secured_config_a_sector_keeps_its_own_registration_only(
    secured_server: EmbeddedNats,
) -> None:
    admin = await secured.connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    errors: list[Exception] = []
    health = await secured.connect_as(secured_server, "health", errors)
    try:
        records = KvRecords(health, timeout=1.0)
        mine = WebhookRecord(url="https://health.example/hook", updated_at=dt.datetime.now(dt.UTC))
        await records.write(Sector.HEALTH, mine)
        assert await records.read(Sector.HEALTH) == mine
        with pytest.raises(RegistrationUnavailable):
            await records.write(Sector.SOCIAL, mine)
        with pytest.raises(RegistrationUnavailable):
            await records.read(Sector.SOCIAL)
        assert await KvRecords(admin).read(Sector.SOCIAL) is None, "social's key untouched"
        assert any("permissions violation" in str(e).lower() for e in errors)
    finally:
        await health.close()
        await admin.close()
