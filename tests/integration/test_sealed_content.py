"""A referral's content, sealed, over a real nats-server and real HTTP: the receiving sector's system
gets it in clear (webhook and feed) while no stored byte holds it; a sector not party to the referral
cannot open it; `refbus erase` makes it unreadable everywhere, the history still verifies, and the
erasure is in it; a second erase is refused."""

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from refbus.contracts import subjects
from refbus.contracts.commands import Applied
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway.external import ExternalSector
from refbus.services.runtime.bus import connect
from tests.factories import new_child, new_worker
from tests.gateway.systems import SECRETS, TOKENS, WebhookReceiver, gateway_config, gateways, ports
from tests.gateway.systems import post as command
from tests.integration.cli_runner import _env, failure, refbus
from tests.services import wait_for

pytestmark = pytest.mark.integration

NAME = "Ilinca Zamfirescu-Oprea"
CONTENT = {
    "name": NAME, "date_of_birth": "2017-04-09", "guardian_contact": "Mirela Oprea, +40 722 000 111",
    "address": "Strada Fabricii 12, Cluj-Napoca", "note": "Misses school since March; the mother asks for help.",
}




def refer(child: str, key: str, content: dict[str, Any] | None = CONTENT) -> dict[str, Any]:
    body = {"idempotency_key": key, "child": child, "actor": new_worker(), "to_sector": "health",
            "dimension": "health", "service": "vaccination", "urgency": "routine",
            "legal_basis": "child_protection_duty"}
    return body if content is None else {**body, "content": content}


async def stored_bytes(url: str) -> bytes:
    """Every message of the log, its child index and the keys bucket, as the server stores them."""
    nc = await connect(url, "test")
    js = nc.jetstream()
    found = b""
    for stream in (subjects.STREAM, subjects.CHILD_INDEX_STREAM, subjects.CHILD_KEYS_STREAM):
        state = (await js.stream_info(stream)).state
        for seq in range(state.first_seq, state.last_seq + 1):
            with contextlib.suppress(Exception):  # erased messages are gone
                found += (await js.get_msg(stream, seq)).data or b""
    await nc.drain()
    return found


async def test_content_sealed_delivered_in_clear_to_the_receiver_and_erased(bus: str, tmp_path: Path) -> None:
    social_port, health_port, justice_port, hook_port = ports(4)
    receiver = WebhookReceiver(hook_port, SECRETS[Sector.HEALTH])
    configs = {
        Sector.SOCIAL: gateway_config(social_port, None, Sector.SOCIAL),
        Sector.HEALTH: gateway_config(health_port, f"http://127.0.0.1:{hook_port}/hook", Sector.HEALTH),
        Sector.JUSTICE: gateway_config(justice_port, None, Sector.JUSTICE),
    }
    policies = {s: ExternalSector(s) for s in configs}
    social, health = f"http://127.0.0.1:{social_port}", f"http://127.0.0.1:{health_port}"
    child, key = new_child(), f"refer-{uuid.uuid4()}"
    env = _env(tmp_path, REFBUS_NATS_URL=bus)
    async with receiver.running(), gateways(bus, policies, configs, tmp_path) as apps:
        body = refer(child, key)
        answer = await command(social, Sector.SOCIAL, "refer", body)
        assert answer.status_code == 201, answer.text
        applied = msgspec.json.decode(answer.content, type=Applied)
        assert answer.json()["content"] == {"state": "clear", "content": CONTENT}, "the referrer reads its own"
        assert "content" not in answer.json()["event"] and applied.event.sealed is not None  # type: ignore[union-attr]

        # The receiving system gets it in clear, by webhook (signed) and in the feed.
        await wait_for(lambda: len(receiver.received) >= 1, within=20)
        hooked = receiver.received[0]
        assert hooked["valid"] and hooked["body"]["content"] == {"state": "clear", "content": CONTENT}
        assert hooked["body"]["event_id"] == str(applied.event_id)
        auth = {"Authorization": f"Bearer {TOKENS[Sector.HEALTH]}"}
        async with httpx.AsyncClient(timeout=10) as client:
            feed = (await client.get(f"{health}/v1/health/events", params={"after": 0}, headers=auth)).json()
        assert [d["content"] for d in feed["events"]] == [{"state": "clear", "content": CONTENT}]

        # No stored byte holds the content: the log and its index hold ciphertext, the bucket wrapped keys.
        raw = await stored_bytes(bus)
        for clear in (NAME, "Fabricii", "+40 722", "2017-04-09", "Misses school"):
            assert clear.encode() not in raw, clear

        # A sector that is no party to the referral has no key to open it with.
        justice = apps[Sector.JUSTICE].gateways[0].gateway  # type: ignore[attr-defined]
        assert (await justice.view(applied.event)).state == "withheld"

        # The auditors read it, with their key, for a recorded purpose.
        shown = refbus("history", child, "--json", "--purpose", "audit", env=env)
        assert shown.code == 0, shown.err
        assert json.loads(shown.out)[0]["content"] == {"state": "clear", "content": CONTENT}

        erased = refbus("erase", child, "--reason", "the guardian asked for erasure (GDPR art. 17)", env=env)
        assert erased.code == 0, erased.err
        assert "erased 3 data key wraps" in erased.out

        # Unreadable everywhere, as `erased`, not as an error: the feed, a retried command, history.
        async with httpx.AsyncClient(timeout=10) as client:
            feed = (await client.get(f"{health}/v1/health/events", params={"after": 0}, headers=auth)).json()
        assert [d["content"] for d in feed["events"]] == [{"state": "erased"}]
        again = await command(social, Sector.SOCIAL, "refer", body)
        assert (again.status_code, again.json()["content"]) == (200, {"state": "erased"})
        shown = refbus("history", child, "--json", "--purpose", "audit", env=env)
        records = json.loads(shown.out)
        assert records[0]["content"] == {"state": "erased"}
        assert records[-1]["event"]["type"] == "child.content-erased"
        assert records[-1]["event"]["reason"].startswith("the guardian asked")
        assert records[-1]["event"]["keys_destroyed"] == 3
        text = refbus("history", child, "--purpose", "audit", env=env)
        assert "content erased" in text.out and NAME not in text.out

        # The history's structure stays and verifies: signatures cover the ciphertext, which stays.
        verified = refbus("verify", "--child", child, env=env)
        assert verified.code == 0, verified.out + verified.err
        # And nothing readable of the keys is left in the bucket: each wrap was erased, a marker stands.
        nc = await connect(bus, "test")
        info = await nc.jetstream().stream_info(subjects.CHILD_KEYS_STREAM)
        await nc.drain()
        assert info.state.messages == 3 and info.state.bytes < 3 * 200, "three empty markers, no wraps"

        failure(refbus("erase", child, "--reason", "again", env=env), 1, "no readable content")


async def test_a_referral_without_content_carries_none(bus: str, tmp_path: Path) -> None:
    (social_port,) = ports(1)
    configs = {Sector.SOCIAL: gateway_config(social_port, None, Sector.SOCIAL)}
    async with gateways(bus, {Sector.SOCIAL: ExternalSector(Sector.SOCIAL)}, configs, tmp_path):
        answer = await command(f"http://127.0.0.1:{social_port}", Sector.SOCIAL, "refer",
                               refer(new_child(), f"refer-{uuid.uuid4()}", content=None))
    assert answer.status_code == 201, answer.text
    assert answer.json()["content"] is None and answer.json()["event"]["sealed"] is None
