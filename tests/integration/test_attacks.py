"""The holes an outside attacker found (issue 12, items 3-7), each tried with a raw publisher on the
default configuration, against the real services, history reads and audit. Items 1-2 (permissions)
are in test_permissions_holes.py, on the secured configuration."""

import json
import uuid
from uuid import uuid5

import msgspec
import pytest
from nats.js.client import JetStreamContext

from refbus.contracts import codec, subjects
from refbus.contracts.events import ReferralAccepted, ReferralCancelled, ReferralReceived
from refbus.contracts.vocabulary import CancelReason, Sector, Status
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.records import EventIdTaken
from refbus.services.rules.audit import audit_replay
from refbus.services.rules.policy import SimulatedSector
from tests.factories import answer, new_child, record, request
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration


async def dead_letters(js: JetStreamContext, sector: Sector) -> dict[int, dict[str, object]]:
    """What `sector`'s service has set aside, by log sequence."""
    found: dict[int, dict[str, object]] = {}
    info = await js.stream_info(subjects.DEAD_LETTER_STREAM, subjects_filter=subjects.dead_letter_subject(sector))
    count = sum((info.state.subjects or {}).values())
    if not count:
        return found
    sub = await js.subscribe(subjects.dead_letter_subject(sector), ordered_consumer=True)
    for _ in range(count):
        letter = json.loads((await sub.next_msg(timeout=5)).data)
        found[letter["stream_seq"]] = letter
    await sub.unsubscribe()
    return found


async def set_aside_by(js: JetStreamContext, sector: Sector, seq: int) -> dict[str, object]:
    async def kept() -> bool:
        return seq in await dead_letters(js, sector)

    await wait_for(kept, within=15)
    return (await dead_letters(js, sector))[seq]


def wire(event: object, **changes: object) -> bytes:
    """The event's JSON with fields changed or added, as a foreign writer would send it."""
    raw = msgspec.to_builtins(event)
    raw.update(changes)
    return json.dumps(raw).encode()


async def test_a_payload_whose_sender_is_not_its_subjects_is_set_aside_flagged_and_not_worked(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    js = eventlog.js
    forged = request(child, Sector.SOCIAL, Sector.JUSTICE, service="birth_registration")
    # Health may publish on refbus.ev.*.health.*: it claims the referral comes from social.
    subject = subjects.event_subject(child, Sector.HEALTH, Sector.JUSTICE)
    ack = await js.publish(subject, codec.encode(forged))
    async with running(provisioned, {Sector.JUSTICE: ScriptedPolicy([])}):
        letter = await set_aside_by(js, Sector.JUSTICE, ack.seq)
    assert "misrouted" in str(letter["reason"]) and "from health" in str(letter["reason"])
    assert await referral_events(eventlog, child, forged.referral_id) == [], "justice did not work it"
    history = await eventlog.history(child)
    assert [h.event for h in history] == [None] and "misrouted" in (history[0].error or "")
    report = await audit_replay(eventlog.replay(), now=forged.occurred_at)
    assert any(f.kind == "misrouted" and f.seq == ack.seq for f in report.findings)


async def test_a_subject_for_another_child_is_set_aside_at_once_not_retried(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    js = eventlog.js
    elsewhere = request(new_child())
    ack = await js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), codec.encode(elsewhere))
    async with running(provisioned, {Sector.HEALTH: ScriptedPolicy([])}):
        letter = await set_aside_by(js, Sector.HEALTH, ack.seq)
    assert "child" in str(letter["reason"])
    consumer = await js.consumer_info(subjects.STREAM, "inbox-health")
    assert consumer.num_redelivered == 0 or consumer.num_ack_pending == 0


async def test_a_squatted_event_id_is_never_taken_for_our_own_write(eventlog: JetStreamEventStore) -> None:
    victim, squatter = request(new_child()), request(new_child())
    # Another writer stores a message under the id the victim's event will have.
    ack = await eventlog.js.publish(
        subjects.event_subject(squatter.child, Sector.SOCIAL, Sector.HEALTH),
        codec.encode(squatter),
        headers={"Nats-Msg-Id": str(victim.event_id)},
    )
    with pytest.raises(EventIdTaken) as taken:
        await record(eventlog, victim)
    assert taken.value.seq == ack.seq
    assert await eventlog.history(victim.child) == [], "nothing claimed as stored that is not"


async def test_the_services_event_ids_cannot_be_predicted_by_another_writer(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    """The receipt's id used to be uuid5(referral, "referral.received#1"): squatting it dropped the
    receipt. Now it is keyed with the deployment's secret."""
    js = eventlog.js
    req = request(child, Sector.SOCIAL, Sector.HEALTH)
    guessed = uuid5(req.referral_id, "referral.received#1")
    await js.publish(
        subjects.event_subject(new_child(), Sector.HEALTH, Sector.SOCIAL),
        codec.encode(request(new_child(), Sector.HEALTH, Sector.SOCIAL)),
        headers={"Nats-Msg-Id": str(guessed)},
    )
    async with running(provisioned, {Sector.HEALTH: ScriptedPolicy([])}):
        await record(eventlog, req)

        async def received() -> bool:
            return any(isinstance(e, ReferralReceived) for e in await referral_events(eventlog, child, req.referral_id))

        await wait_for(received, within=15)
    events = await referral_events(eventlog, child, req.referral_id)
    assert [e.event_id for e in events if isinstance(e, ReferralReceived)] != [guessed]


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
async def test_deeply_nested_json_is_set_aside_and_the_audit_and_history_go_on(
    eventlog: JetStreamEventStore, provisioned: str, child: str, depth: int
) -> None:
    js = eventlog.js
    good = request(child)
    await record(eventlog, good)
    poison = b"[" * depth + b"]" * depth
    ack = await js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), poison[: 900 * 1024])
    async with running(provisioned, {Sector.HEALTH: SimulatedSector(Sector.HEALTH, speed=1000)}):
        letter = await set_aside_by(js, Sector.HEALTH, ack.seq)

        async def closed() -> bool:
            return not (await eventlog.load(child)).referrals[good.referral_id].is_open

        await wait_for(closed, within=30)
    assert letter["reason"]
    history = await eventlog.history(child)
    assert [h.seq for h in history if h.event is None] == [ack.seq]
    report = await audit_replay(eventlog.replay(), now=good.occurred_at)
    assert any(f.kind == "unreadable" and f.seq == ack.seq for f in report.findings)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"notes": "Ion Popescu, born 2015-03-02, Strada Mare 4"}, "unknown field"),
        ({"padding": "x" * 900_000}, "too large"),
    ],
)
async def test_fields_outside_the_contract_are_set_aside_not_processed(
    eventlog: JetStreamEventStore, provisioned: str, child: str, extra: dict[str, str], expected: str
) -> None:
    js = eventlog.js
    smuggler = request(child)
    ack = await js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), wire(smuggler, **extra))
    async with running(provisioned, {Sector.HEALTH: ScriptedPolicy([])}):
        letter = await set_aside_by(js, Sector.HEALTH, ack.seq)
    assert expected in str(letter["reason"]).lower()
    assert "Popescu" not in json.dumps(letter)
    assert await referral_events(eventlog, child, smuggler.referral_id) == []


async def test_an_illegal_event_slipped_in_by_a_raw_writer_is_set_aside_by_its_receiver(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    js = eventlog.js
    req = request(child, Sector.SOCIAL, Sector.HEALTH)
    await record(eventlog, req)
    await record(eventlog, answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED))
    # Health publishes an acceptance after the cancel, past the rules (no expected-sequence header).
    late = answer(ReferralAccepted, req)
    ack = await js.publish(subjects.event_subject(child, Sector.HEALTH, Sector.SOCIAL), codec.encode(late))
    async with running(provisioned, {Sector.SOCIAL: ScriptedPolicy([])}):
        letter = await set_aside_by(js, Sector.SOCIAL, ack.seq)
    assert "refused" in str(letter["reason"]) and "cancelled" in str(letter["reason"])
    report = await audit_replay(eventlog.replay(), now=req.occurred_at)
    assert any(f.kind == "illegal" and f.seq == ack.seq for f in report.findings)
    # The services decide on the legal history: the slipped-in acceptance is not folded (decision 0019).
    assert (await eventlog.load(child)).referrals[req.referral_id].status is Status.CANCELLED


def test_a_guessable_id_is_not_what_the_services_mint() -> None:
    from refbus.services.rules.decisions import derived_id

    rid = uuid.uuid4()
    assert derived_id(b"k1", rid, "x") == derived_id(b"k1", rid, "x")
    assert derived_id(b"k1", rid, "x") != derived_id(b"k2", rid, "x")
    assert derived_id(b"k1", rid, "x") != uuid5(rid, "x")
