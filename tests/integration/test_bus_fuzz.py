"""Issue 17: hostile messages published straight onto the event subjects, with the admin identity
(the only user the secured configuration lets publish raw on any subject), while social's and health's
services run: bytes that are not JSON, JSON of the wrong shape, events whose payload claims another
child or sector than its subject, illegal transitions, replays of a stored event (same bytes, or the
same id with other bytes), and headers that try to get past the concurrency check (a wrong expected
sequence, or an expected-sequence subject naming another child).

Each is refused by the server, or set aside in REFBUS_DEAD_LETTERS with a reason by the sector whose
inbox it reached; the child's state as the services load it is unchanged by it; and afterwards the
services handle a good referral. (test_attacks.py tries one example of several of these holes on the
default configuration; here they are generated, on the secured one.)
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from refbus.contracts import codec, subjects
from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCompleted,
    ReferralReceived,
    ReferralRejected,
)
from refbus.contracts.vocabulary import Outcome, RejectReason, Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.state import ChildState
from refbus.services.runtime.embedded import EmbeddedNats
from tests import fuzzcount
from tests.factories import answer, envelope, new_child, record, request
from tests.integration import secured
from tests.integration.test_attacks import set_aside_by
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration

EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
WRONG_LAST_SEQUENCE = 10071


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from secured.secured_server(tmp_path_factory.mktemp("bus-fuzz"), monkeypatch)


class Bus:
    """The admin's raw connection, social's store, and a child with a referral social -> health that
    health has received: the target of every hostile message."""

    admin: NATS
    social: JetStreamEventStore
    child: str
    referral: Any
    baseline: dict[str, Any]

    async def state(self) -> dict[str, Any]:
        """The child as a service loads it, from the log (a store of its own: nothing kept)."""
        return view(await JetStreamEventStore(self.admin).load(self.child))


def view(state: ChildState) -> dict[str, Any]:
    """What a service decides on (not the sequence bookkeeping, which moves past any stored message)."""
    return {
        "events": sorted(map(str, state.event_ids)), "cases": state.open_cases, "consent": state.consent,
        "vulnerabilities": state.vulnerabilities, "linked": (state.linked_to, state.linked_from),
        "referrals": {rid: (r.status, r.received_at, r.steps, r.receiver) for rid, r in state.referrals.items()},
    }


@pytest_asyncio.fixture(scope="module")
async def bus(server: EmbeddedNats) -> AsyncIterator[Bus]:
    admin = await secured.connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    social = await secured.connect_as(server, "social")
    policies = {Sector.SOCIAL: ScriptedPolicy([]), Sector.HEALTH: ScriptedPolicy([])}
    as_health = {"nats_seed_file": secured.seed_file(server, "health")}
    as_social = {"nats_seed_file": secured.seed_file(server, "social")}
    async with running(server.url, {Sector.HEALTH: policies[Sector.HEALTH]}, **as_health), \
            running(server.url, {Sector.SOCIAL: policies[Sector.SOCIAL]}, **as_social):
        found = Bus()
        found.admin, found.social, found.child = admin, secured.sector_store(social, Sector.SOCIAL), new_child()
        found.referral = request(found.child, Sector.SOCIAL, Sector.HEALTH)
        await record(found.social, found.referral)
        await wait_for(lambda: _received(found.social, found.child, found.referral.referral_id))
        found.baseline = await found.state()
        yield found
    await social.drain()
    await admin.drain()


async def _received(store: JetStreamEventStore, child: str, referral_id: uuid.UUID) -> bool:
    return any(isinstance(e, ReferralReceived) for e in await referral_events(store, child, referral_id))


# -- the hostile messages ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
KINDS = ["garbage bytes", "wrong shape", "another child", "another sector", "illegal move", "replay, same bytes",
         "replay, same id other bytes", "wrong expected sequence", "expected subject of another child"]


def hostile(bus: Bus, kind: str, data: st.DataObject) -> tuple[str, bytes, dict[str, str]]:
    """(subject, payload, headers) of one hostile message of `kind` about the bus's child."""
    child, req = bus.child, bus.referral
    to_health = subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH)
    to_social = subjects.event_subject(child, Sector.HEALTH, Sector.SOCIAL)
    illegal = data.draw(st.sampled_from([
        answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED),  # not from status requested
        answer(ReferralRejected, req, by=Sector.SOCIAL, reason=RejectReason.NOT_ELIGIBLE),  # by the referrer
        answer(ReferralReceived, req),  # receipt already acknowledged
        answer(ReferralAccepted, msgspec.structs.replace(req, referral_id=uuid.uuid4())),  # no such referral
    ]))
    subject = subjects.event_subject(child, illegal.from_sector, illegal.to_sector)
    match kind:
        case "garbage bytes":
            return data.draw(st.sampled_from([to_health, to_social])), data.draw(st.binary(max_size=2048)), {}
        case "wrong shape":
            return to_health, json.dumps(data.draw(json_values)).encode(), {}
        case "another child":
            return to_health, codec.encode(request(new_child(), Sector.SOCIAL, Sector.HEALTH)), {}
        case "another sector":
            frm = data.draw(st.sampled_from([Sector.EDUCATION, Sector.JUSTICE]))
            claimed = request(child, frm, Sector.HEALTH, service="vaccination")
            return to_health, codec.encode(claimed), {}
        case "illegal move":
            return subject, codec.encode(illegal), {}
        case "replay, same bytes":
            return to_health, codec.encode(req), {"Nats-Msg-Id": str(req.event_id)}
        case "replay, same id other bytes":
            other = msgspec.structs.replace(req, service="vaccination", occurred_at=envelope(child, req.from_sector,
                                                                                              None)["occurred_at"])
            headers = data.draw(st.sampled_from([{}, {"Nats-Msg-Id": str(req.event_id)},
                                                 {"Nats-Msg-Id": str(uuid.uuid4())}]))
            return to_health, codec.encode(other), headers
        case "wrong expected sequence":
            wrong = str(data.draw(st.integers(0, 2**40)))
            return subject, codec.encode(illegal), {EXPECTED_SEQ: wrong, EXPECTED_SUBJECT: subjects.child_filter(child)}
        case _:  # "expected subject of another child": its last sequence (0: none) passes the server's check
            elsewhere = subjects.child_filter(new_child())
            return subject, codec.encode(illegal), {EXPECTED_SEQ: "0", EXPECTED_SUBJECT: elsewhere}


def receiver_of(subject: str) -> Sector:
    return Sector(subject.rsplit(".", 1)[1])


@settings(max_examples=45, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(kind=st.sampled_from(KINDS), data=st.data())
async def test_a_hostile_message_is_refused_or_set_aside_and_changes_no_state(bus: Bus, kind: str, data: Any) -> None:
    subject, payload, headers = hostile(bus, kind, data)
    js = bus.admin.jetstream()
    try:
        ack = await js.publish(subject, payload, headers=headers or None)
    except APIError as exc:
        assert exc.err_code == WRONG_LAST_SEQUENCE, exc
        outcome = "refused by the server (wrong last sequence)"
    else:
        if ack.duplicate:
            assert kind.startswith("replay") and headers.get("Nats-Msg-Id") == str(bus.referral.event_id)
            outcome = "dropped by the server (duplicate)"
        else:
            letter = await set_aside_by(js, receiver_of(subject), ack.seq)
            assert letter["reason"], letter
            outcome = "set aside: " + str(letter["reason"]).split(":")[0][:40]
    assert await bus.state() == bus.baseline, f"{kind} changed the child's state"
    fuzzcount.ran("bus: hostile messages on event subjects", f"{kind} -> {outcome}")


async def test_the_services_still_work_a_good_referral_afterwards(bus: Bus) -> None:
    child = new_child()
    good = request(child, Sector.SOCIAL, Sector.HEALTH)
    await record(bus.social, good)
    await wait_for(lambda: _received(bus.social, child, good.referral_id), within=15)
    assert await bus.state() == bus.baseline


async def test_every_kind_of_hostile_message_was_tried() -> None:
    tried = {outcome.split(" -> ")[0] for (suite, outcome) in fuzzcount.CASES if suite.startswith("bus:")}
    assert tried == set(KINDS), set(KINDS) - tried
    await asyncio.sleep(0)
