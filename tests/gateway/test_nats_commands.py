"""The same commands over NATS request/reply, on a real server: the same answers and refusals."""

import uuid
from pathlib import Path

import msgspec
import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway.config import GatewayConfig
from refbus.services.gateway.external import ExternalSector
from refbus.services.runtime.bus import connect
from tests.factories import new_child, new_worker
from tests.gateway.systems import gateways

pytestmark = pytest.mark.integration


async def test_commands_over_nats_request_reply(provisioned: str, tmp_path: Path) -> None:
    config = GatewayConfig(nats_commands=True)
    policies = {Sector.SOCIAL: ExternalSector(Sector.SOCIAL), Sector.HEALTH: ExternalSector(Sector.HEALTH)}
    async with gateways(provisioned, policies, {Sector.SOCIAL: config, Sector.HEALTH: config}, tmp_path):
        nc = await connect(provisioned, "a-sector-system")
        try:

            async def ask(sector: Sector, kind: str, body: dict[str, object]) -> dict[str, object]:
                reply = await nc.request(subjects.command_subject(sector, kind), msgspec.json.encode(body), timeout=5)
                return msgspec.json.decode(reply.data)  # type: ignore[no-any-return]

            child = new_child()
            refer = {
                "idempotency_key": str(uuid.uuid4()), "child": child, "actor": new_worker(), "to_sector": "health",
                "dimension": "health", "service": "vaccination", "urgency": "routine",
                "legal_basis": "child_protection_duty",
            }
            first = await ask(Sector.SOCIAL, "refer", refer)
            assert first["status"] == 201, first
            again = await ask(Sector.SOCIAL, "refer", refer)
            assert again["status"] == 200 and again["seq"] == first["seq"]
            early = {"idempotency_key": str(uuid.uuid4()), "child": child, "actor": new_worker(),
                     "referral_id": first["referral_id"], "outcome": "service_delivered"}
            refused = await ask(Sector.HEALTH, "complete", early)
            assert refused["status"] == 409
            assert refused["rule"] == "referral.completed is not allowed from status requested"
            wrong = await ask(Sector.HEALTH, "accept", {"idempotency_key": "short"})
            assert wrong["status"] == 422 and wrong["code"] == "invalid"
            unknown = await ask(Sector.HEALTH, "teleport", {})
            assert unknown["status"] == 404
        finally:
            await nc.drain()
