"""The sealer under deploy/nats-server.conf: it runs in the pager's process as the NATS user
`pager`, with the bus key alone (provisioned by `refbus keys --out`), reads the log through its own
named consumer, and its seals verify; a sector user cannot append a seal."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.audit import keys
from refbus.services.audit.seal import last_seal, make_seal, read_seals, sealer
from refbus.services.audit.verify import verify_bus
from refbus.services.eventstore import streams
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child, record, request
from tests.integration import secured
from tests.integration.secured import connect_as, sector_store

pytestmark = pytest.mark.integration

# The pager user's allows for the sealer, with their reasons (the matrix in test_permissions_holes.py).
SEALER_PERMISSIONS = {
    ("pub", "$JS.API.STREAM.INFO.REFBUS"): "the sealer: where the log ends before a pass",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS.sealer.refbus.ev.>"):
        "the sealer's reader of the log, named and filtered (the filterless form could repoint an inbox)",
    ("pub", "$JS.API.CONSUMER.DELETE.REFBUS.sealer"): "start that reader again where the newest seal ends",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS.sealer"): "pull requests on that reader",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_SEALS"): "the newest seal, whose hash the next one continues",
    ("pub", "refbus.seal"): "append a seal signed with the bus key (REFBUS_SEALS; no other user may)",
    ("pub", "refbus.keys.*"): "publish the public key records it certifies with the bus key (REFBUS_KEYS)",
}


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


@pytest.fixture
def provisioned_keys(tmp_path: Path) -> Path:
    """One deployment's keys, as `refbus keys --out` writes them: a folder per service."""
    out = tmp_path / "provisioned"
    keys.export(keys.ensure(tmp_path / "key-master"), out, "ab" * 32, "ba" * 32)
    return out


async def _admin(server: EmbeddedNats) -> NATS:
    admin = await connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    return admin


async def _sealed_up_to(nc: NATS, seq: int, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            newest, _ = await last_seal(nc, wait=1.0)
            if newest is not None and newest.last_seq >= seq:
                return
            await asyncio.sleep(0.05)


async def test_the_sealer_runs_as_the_pager_user_and_its_seals_verify(
    secured_server: EmbeddedNats, provisioned_keys: Path
) -> None:
    admin = await _admin(secured_server)
    pager_ring = keys.load_dir(provisioned_keys / "pager" / "keys")
    social_ring = keys.load_dir(provisioned_keys / "social" / "keys")
    assert pager_ring.current(keys.BUS) and not [o for o in keys.OWNERS if o != keys.BUS and pager_ring.current(o)]
    social = await connect_as(secured_server, "social")
    log = sector_store(social, Sector.SOCIAL, timeout=2.0, ring=social_ring)
    first = await record(log, request(new_child(), Sector.SOCIAL, Sector.HEALTH))
    assert first is not None

    errors: list[Exception] = []
    pager = await connect_as(secured_server, "pager", errors)
    task = asyncio.create_task(sealer(pager, pager_ring, interval=0.2))
    try:
        await _sealed_up_to(admin, first)
        second = await record(log, request(new_child(), Sector.SOCIAL, Sector.HEALTH))
        assert second is not None
        await _sealed_up_to(admin, second)  # the next pass continues the hash from the first seal
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert errors == []
    # Its reader is gone after each pass: nothing named `sealer` is left behind.
    assert subjects.SEALER_CONSUMER not in [c.name for c in await admin.jetstream().consumers_info(subjects.STREAM)]

    # An auditor with the public records alone (the verifier's folder) checks every signature and seal.
    verifier = keys.load_dir(provisioned_keys / "verifier" / "keys")
    assert not verifier.files and verifier.anchors()
    report = await verify_bus(admin, verifier)
    assert report.ok, report.findings
    assert report.seals_checked >= 2 and report.last_sealed_seq == second and report.unsealed == 0
    for nc in (pager, social, admin):
        await nc.close()


async def test_a_sector_user_cannot_append_a_seal(secured_server: EmbeddedNats, tmp_path: Path) -> None:
    admin = await _admin(secured_server)
    errors: list[Exception] = []
    health = await connect_as(secured_server, "health", errors)
    # Even with a bus key in hand (stolen): the server refuses the subject itself.
    forged = make_seal(keys.ensure(tmp_path / "stolen"), 1, b"\0" * 32)
    with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
        await health.jetstream().publish(subjects.SEAL_SUBJECT, msgspec.json.encode(forged), timeout=0.5)
    await asyncio.sleep(0.1)
    assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
    assert await read_seals(admin, wait=1.0) == []
    for nc in (health, admin):
        await nc.close()
