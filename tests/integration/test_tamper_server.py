"""Tamper evidence on a real server: the log as refbus writes it (group commit, atomic batches)
verifies, seals and all; forgeries published with the admin identity are named; what an attacker
with the files could do (alter, remove, reorder, truncate, rebuild) is done to a copy of the log in
another server, which `refbus verify` is then pointed at."""

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from refbus.contracts import codec, subjects
from refbus.contracts.events import ReferralAccepted, ReferralCompleted
from refbus.contracts.vocabulary import Outcome, Sector
from refbus.services.audit import keys, proof, seal
from refbus.services.audit.verify import Report, verify_bus
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.reader import LogReader
from refbus.services.eventstore.replay import raw_replay
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import answer, new_child, request

pytestmark = pytest.mark.integration

Stored = tuple[str, dict[str, str], bytes]


@pytest.fixture
def ring(tmp_path: Path) -> keys.Keyring:
    return keys.ensure(tmp_path / "deployment")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    started: list[EmbeddedNats] = []
    yield started
    for server in started:
        server.stop()


async def _bus(servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring) -> NATS:
    server = EmbeddedNats(tmp_path / f"nats{len(servers)}").start()
    servers.append(server)
    nc = await connect(server.url, "tamper")
    await streams.provision(nc.jetstream())
    await keys.publish(nc, ring)
    return nc


async def _write(nc: NATS, ring: keys.Keyring, children: int = 12) -> None:
    store = JetStreamEventStore(nc, ring=ring)

    async def one(child: str) -> None:
        req = request(child)
        await store.transact(child, lambda _s: [req])
        await store.transact(child, lambda _s: [answer(ReferralAccepted, req)])
        await store.transact(child, lambda _s: [answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)])

    await asyncio.gather(*(one(new_child()) for _ in range(children)))  # concurrent: atomic batches form


async def _stored(nc: NATS) -> list[Stored]:
    """The log as stored, each message's own headers (not the server's Nats-* ones)."""
    found = []
    async for _seq, _ns, subject, headers, data in raw_replay(LogReader(nc, 5.0)):
        found.append((subject, {k: v for k, v in headers.items() if not k.startswith("Nats-")}, data))
    return found


async def _copy(nc: NATS, messages: list[Stored], seals: list[seal.Seal] = ()) -> None:  # type: ignore[assignment]
    js = nc.jetstream()
    for subject, headers, data in messages:
        await js.publish(subject, data, headers=headers)
    for made in seals:
        await js.publish(subjects.SEAL_SUBJECT, msgspec.json.encode(made))


def _kinds(report: Report) -> dict[int, str]:
    return {f.seq: f.kind for f in report.findings}


@pytest_asyncio.fixture
async def original(servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring) -> AsyncIterator[NATS]:
    nc = await _bus(servers, tmp_path, ring)
    await _write(nc, ring)
    assert await seal.seal_now(nc, ring) is not None
    yield nc
    await nc.close()


async def test_the_log_as_written_verifies_with_its_seal(original: NATS, ring: keys.Keyring) -> None:
    report = await verify_bus(original, ring)
    assert report.ok and report.events == 36 and report.seals_checked == 1, report.as_dict()
    stored = await _stored(original)
    assert len({h[proof.SIG].split()[1] for _, h, _ in stored}) < len(stored)  # grouped under shared signatures
    child = codec.decode(stored[0][2]).child
    assert (await verify_bus(original, ring, child=child)).ok


async def test_forgeries_published_on_the_server_are_named(original: NATS, ring: keys.Keyring) -> None:
    js = original.jetstream()
    # Unsigned: a raw publish without proof.
    lone = request(new_child())
    route = subjects.event_subject(lone.child, lone.from_sector, lone.to_sector)
    unsigned = await js.publish(route, codec.encode(lone))
    # Forged sender: health's key signs an event that says social sent it.
    fake = request(new_child(), frm=Sector.SOCIAL)
    data = codec.encode(fake)
    headers = {proof.CHAIN: proof.format_link(proof.next_link(proof.START, data)), proof.KEY: ring.current("health")}
    messages = [(subjects.event_subject(fake.child, Sector.SOCIAL, Sector.HEALTH), data, headers)]
    proof.sign_messages(messages, ring.private)  # type: ignore[arg-type]
    forged = await js.publish(messages[0][0], data, headers=headers)
    # A stored event's proof replayed on an altered payload: its chain position comes again.
    subject, headers, data = (await _stored(original))[0]
    replayed = await js.publish(subject, data.replace(b'"routine"', b'"urgent"'), headers=headers)
    report = await verify_bus(original, ring)
    kinds = _kinds(report)
    assert kinds[unsigned.seq] == "unsigned"
    assert kinds[forged.seq] == "forged-sender"
    assert kinds[replayed.seq] == "duplicate"
    assert report.first is not None and report.first.seq == unsigned.seq


async def test_an_altered_copy_is_caught(
    original: NATS, servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring
) -> None:
    messages = await _stored(original)
    subject, headers, data = messages[5]
    messages[5] = (subject, headers, data.replace(b'"routine"', b'"urgent"').replace(b'"health"', b'"health"'))
    event = msgspec.json.decode(data)
    event["actor"] = "w00000000"
    messages[5] = (subject, headers, msgspec.json.encode(event))
    copy = await _bus(servers, tmp_path, ring)
    await _copy(copy, messages, await seal.read_seals(original))
    report = await verify_bus(copy, ring)
    assert report.first is not None and (report.first.seq, report.first.kind) == (6, "altered"), report.as_dict()
    assert "seal-mismatch" in report.counts
    await copy.close()


async def test_a_removed_event_is_caught_on_a_deletable_copy(
    servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring
) -> None:
    """A store whose log allows deletes (created by the attacker): one event deleted."""
    server = EmbeddedNats(tmp_path / "deletable").start()
    servers.append(server)
    nc = await connect(server.url, "deletable")
    config = streams.log_config()
    config.deny_delete = False
    await nc.jetstream().add_stream(config)
    for extra in (streams.seals_config(), streams.keys_config(), streams.access_config(), streams.child_index_config()):
        await nc.jetstream().add_stream(extra)
    await _write(nc, ring, children=4)
    await seal.seal_now(nc, ring)
    await nc.jetstream().delete_msg(subjects.STREAM, 5)
    report = await verify_bus(nc, ring)
    assert report.first is not None and (report.first.seq, report.first.kind) == (6, "removed"), report.as_dict()
    await nc.close()


async def test_reordered_events_in_a_copy_are_caught(
    original: NATS, servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring
) -> None:
    messages = await _stored(original)
    child_of = [codec.decode(data).child for _, _, data in messages]
    first = 0
    second = next(i for i in range(1, len(messages)) if child_of[i] == child_of[first])
    messages[first], messages[second] = messages[second], messages[first]
    copy = await _bus(servers, tmp_path, ring)
    await _copy(copy, messages)
    report = await verify_bus(copy, ring)
    assert report.first is not None and (report.first.seq, report.first.kind) == (1, "reordered"), report.as_dict()
    await copy.close()


async def test_a_truncated_tail_is_caught(
    original: NATS, servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring
) -> None:
    messages = await _stored(original)
    copy = await _bus(servers, tmp_path, ring)
    await _copy(copy, messages[:-3], await seal.read_seals(original))  # an older backup restored, seals and all
    report = await verify_bus(copy, ring)
    assert report.first is not None and report.first.kind == "truncated", report.as_dict()
    assert report.first.seq == len(messages) - 2
    await copy.close()


async def test_a_store_rebuilt_from_scratch_is_caught(
    original: NATS, servers: list[EmbeddedNats], tmp_path: Path, ring: keys.Keyring
) -> None:
    [witnessed] = await seal.read_seals(original)
    rebuilt = await _bus(servers, tmp_path, ring)
    await _write(rebuilt, ring, children=12)  # another history, even signed with the sectors' own keys
    report = await verify_bus(rebuilt, ring, witness=witnessed)
    assert "rebuilt" in report.counts and not report.ok, report.as_dict()
    await rebuilt.close()


def test_refbus_verify_exits_0_then_names_the_first_bad_event(tmp_path: Path, servers: list[EmbeddedNats]) -> None:
    data_dir = tmp_path / "cli"
    server = EmbeddedNats(tmp_path / "cli-nats").start()
    servers.append(server)
    base = [sys.executable, "-m", "refbus.cli", "--nats-url", server.url, "--data-dir", str(data_dir)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)

    assert run("keys").returncode == 0
    child = new_child()
    referred = run("refer", "--child", child, "--from", "social", "--to", "health",
                   "--service", "family_doctor_registration", "--dimension", "health")
    assert referred.returncode == 0, referred.stderr
    assert run("seal").returncode == 0
    clean = run("verify", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["seals_checked"] == 1

    async def forge() -> int:
        nc = await connect(server.url)
        lone = request(new_child())
        ack = await nc.jetstream().publish(
            subjects.event_subject(lone.child, lone.from_sector, lone.to_sector), codec.encode(lone))
        await nc.close()
        return ack.seq

    seq = asyncio.run(forge())
    bad = run("verify")
    assert bad.returncode == 1 and f"FIRST BAD EVENT: seq {seq}: unsigned" in bad.stdout, bad.stdout + bad.stderr


async def test_verify_since_starts_at_the_newest_seal_before_it(original: NATS, ring: keys.Keyring) -> None:
    [first] = await seal.read_seals(original)
    await _write(original, ring, children=4)
    second = await seal.seal_now(original, ring)
    assert second is not None and second.last_seq == first.last_seq + 12
    report = await verify_bus(original, ring, since=first.last_seq + 5)
    assert report.ok and report.first_seq == first.last_seq + 1 and report.events == 12, report.as_dict()
    assert report.seals_checked == 1 and report.unsealed == 0


async def test_an_auditor_with_only_the_bus_key_learns_keys_and_revocations_from_the_bus(
    original: NATS, ring: keys.Keyring, tmp_path: Path
) -> None:
    """The sectors' public keys come from REFBUS_KEYS, certified by the bus; a revocation published
    there (signed by the bus) makes the revoked key's later signatures fail; a key record that the
    bus did not certify is ignored."""
    auditor_dir = tmp_path / "auditor"
    bus_kid = ring.current(keys.BUS)
    assert bus_kid is not None
    keys.keys_dir(auditor_dir).mkdir(parents=True)
    for path in keys.keys_dir(tmp_path / "deployment").glob(f"{bus_kid}.key"):
        (keys.keys_dir(auditor_dir) / path.name).write_bytes(path.read_bytes())
    auditor = keys.load(auditor_dir)
    assert set(auditor.records) == {bus_kid}
    assert (await verify_bus(original, auditor)).ok

    # A record no bus key certified (an attacker's own key for social) changes nothing.
    rogue = keys.new_key(tmp_path / "rogue", "social").record
    await original.jetstream().publish(subjects.key_subject(rogue.key_id), msgspec.json.encode(rogue))
    assert rogue.key_id not in await keys.trusted_records(original, auditor)

    social = ring.current("social")
    assert social is not None
    stored = await _stored(original)
    keys.revoke(tmp_path / "deployment", social, at=datetime(2000, 1, 1, tzinfo=UTC))
    await keys.publish(original, keys.load(tmp_path / "deployment"))
    report = await verify_bus(original, auditor)
    assert report.first is not None and report.first.kind == "revoked-key", report.as_dict()
    assert report.counts["revoked-key"] == sum(1 for _, h, _ in stored if h.get(proof.KEY) == social)
    # The valid record replayed after the revocation does not undo it.
    valid = next(r for r in ring.public_records() if r.key_id == social)
    await original.jetstream().publish(subjects.key_subject(social), msgspec.json.encode(valid))
    assert (await keys.trusted_records(original, auditor))[social].revoked_at is not None
