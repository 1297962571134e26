"""The four sector services on a real nats-server: delivery, decisions, closed loop, bad input."""

import hashlib
import json
from collections import Counter

import pytest

from refbus.contracts import subjects
from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralEnteredInError,
    ReferralFailed,
    ReferralInProgress,
    ReferralOnHold,
    ReferralReceived,
    ReferralRejected,
    event_type,
)
from refbus.contracts.vocabulary import (
    CancelReason,
    ErrorReason,
    FailReason,
    HoldReason,
    Outcome,
    RejectReason,
    Sector,
    Status,
)
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.policy import SimulatedSector, Step
from tests.factories import answer, new_child, record, request
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration

SCRIPTS = {
    # health: the long way round, through a hold
    Sector.HEALTH: [
        Step(ReferralAccepted),
        Step(ReferralInProgress),
        Step(ReferralOnHold, {"reason": HoldReason.WAITING_FOR_DOCUMENTS}),
        Step(ReferralInProgress),
        Step(ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED}),
    ],
    Sector.EDUCATION: [Step(ReferralRejected, {"reason": RejectReason.NO_CAPACITY})],
    Sector.JUSTICE: [Step(ReferralAccepted), Step(ReferralFailed, {"reason": FailReason.FAMILY_MOVED})],
    Sector.SOCIAL: [Step(ReferralAccepted)],  # then waits: the referrer will cancel
}


async def status_of(eventlog: JetStreamEventStore, child: str, referral_id: object) -> Status:
    return (await eventlog.load(child)).referrals[referral_id].status


async def test_a_referral_through_every_state_across_all_four_sectors(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    policies = {sector: ScriptedPolicy(script) for sector, script in SCRIPTS.items()}
    async with running(provisioned, policies):
        to_health = request(child, Sector.SOCIAL, Sector.HEALTH, "health_assessment")
        to_education = request(child, Sector.JUSTICE, Sector.EDUCATION, "school_enrolment")
        to_justice = request(child, Sector.HEALTH, Sector.JUSTICE, "birth_registration")
        to_social = request(child, Sector.EDUCATION, Sector.SOCIAL, "family_counselling")
        mistaken = request(child, Sector.SOCIAL, Sector.EDUCATION, "remedial_education")
        for event in (to_health, to_education, to_justice, to_social):
            await record(eventlog, event)

        async def settled() -> bool:
            state = await eventlog.load(child)
            return (
                state.referrals[to_health.referral_id].status is Status.COMPLETED
                and state.referrals[to_education.referral_id].status is Status.REJECTED
                and state.referrals[to_justice.referral_id].status is Status.FAILED
                and state.referrals[to_social.referral_id].status is Status.ACCEPTED
            )

        await wait_for(settled)
        # The referrer cancels what social accepted; a referral sent in error is marked so.
        await record(
            eventlog, answer(ReferralCancelled, to_social, by=Sector.EDUCATION, reason=CancelReason.NO_LONGER_NEEDED)
        )
        await record(eventlog, mistaken)
        await record(
            eventlog, answer(ReferralEnteredInError, mistaken, by=Sector.SOCIAL, reason=ErrorReason.WRONG_CHILD)
        )

        history = [h.event for h in await eventlog.history(child)]
        types = [event_type(e) for e in history if e is not None]
        for expected in (
            "referral.requested",
            "referral.received",
            "referral.accepted",
            "referral.rejected",
            "referral.in-progress",
            "referral.on-hold",
            "referral.completed",
            "referral.failed",
            "referral.cancelled",
            "referral.entered-in-error",
        ):
            assert expected in types, expected
        health_steps = [event_type(e) for e in await referral_events(eventlog, child, to_health.referral_id)]
        assert health_steps == [
            "referral.requested",
            "referral.received",
            "referral.accepted",
            "referral.in-progress",
            "referral.on-hold",
            "referral.in-progress",
            "referral.completed",
        ]
        crossed = {(e.from_sector, e.to_sector) for e in history if e is not None}
        assert len({s for pair in crossed for s in pair}) == 4

        # Closed loop: every update addressed to a referrer reached its inbox and was handled.
        js = eventlog.js

        async def inboxes_drained() -> bool:
            infos = [await js.consumer_info(subjects.STREAM, f"inbox-{s.value}") for s in Sector]
            return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

        await wait_for(inboxes_drained)


async def test_received_is_automatic_and_separate_from_the_decision(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    async with running(provisioned, {Sector.HEALTH: ScriptedPolicy([])}):  # a sector that never decides
        req = request(child)
        await record(eventlog, req)

        async def received() -> bool:
            return any(isinstance(e, ReferralReceived) for e in await referral_events(eventlog, child, req.referral_id))

        await wait_for(received)
        assert await status_of(eventlog, child, req.referral_id) is Status.REQUESTED


async def test_a_malformed_message_is_set_aside_and_the_service_goes_on(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    js = eventlog.js
    garbage = b'{"type": "referral.requested", "child": "Ion Popescu", "note": "not a valid event"}'
    ack = await js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), garbage)
    unknown = await js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"\x00\x01binary")
    async with running(provisioned, {Sector.HEALTH: SimulatedSector(Sector.HEALTH, speed=1000)}):
        good = request(child)
        await record(eventlog, good)

        async def closed() -> bool:
            return not (await eventlog.load(child)).referrals[good.referral_id].is_open

        await wait_for(closed)

    dead = {}
    sub = await js.subscribe(subjects.dead_letter_subject(Sector.HEALTH), ordered_consumer=True)
    health_letters = subjects.dead_letter_subject(Sector.HEALTH)
    info = await js.stream_info(subjects.DEAD_LETTER_STREAM, subjects_filter=health_letters)
    for _ in range(sum((info.state.subjects or {}).values())):
        msg = await sub.next_msg(timeout=5)
        letter = json.loads(msg.data)
        dead[letter["stream_seq"]] = letter
    await sub.unsubscribe()
    assert {ack.seq, unknown.seq} <= set(dead)
    assert "invalid referral.requested" in dead[ack.seq]["reason"]
    assert "not JSON" in dead[unknown.seq]["reason"]
    assert dead[ack.seq]["sha256"] == hashlib.sha256(garbage).hexdigest()
    assert "Ion" not in json.dumps(dead[ack.seq]), "dead letters must not copy personal data"
    # Nothing was lost: the bytes are still in the append-only log.
    assert (await js.get_msg(subjects.STREAM, ack.seq)).data == garbage


async def test_a_handler_crashing_after_its_append_is_redelivered_without_a_duplicate(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    policy = ScriptedPolicy([Step(ReferralAccepted), Step(ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED})])
    async with running(provisioned, {Sector.HEALTH: policy}) as apps:
        service = apps[Sector.HEALTH].services[0]  # type: ignore[attr-defined]
        real_transact = service.store.transact
        crashes = []

        async def crash_once_after_accepting(child_ref, decide, **kw):
            result = await real_transact(child_ref, decide, **kw)
            accepted = any(r.status is Status.ACCEPTED for r in result.state.referrals.values())
            if result.stored and not crashes and accepted:
                crashes.append(result.stored)
                raise ConnectionError("simulated crash between append and ack")
            return result

        service.store.transact = crash_once_after_accepting
        req = request(child)
        await record(eventlog, req)

        async def completed() -> bool:
            return await status_of(eventlog, child, req.referral_id) is Status.COMPLETED

        await wait_for(completed)
    assert crashes, "the crash was never triggered"
    counts = Counter(event_type(e) for e in await referral_events(eventlog, child, req.referral_id))
    assert counts == {"referral.requested": 1, "referral.received": 1, "referral.accepted": 1, "referral.completed": 1}


async def test_sectors_send_their_own_referrals_onward(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    from refbus.contracts.vocabulary import Dimension
    from refbus.services.rules.policy import OnwardReferral

    doctor = ScriptedPolicy(
        [Step(ReferralAccepted), Step(ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED})],
        [OnwardReferral(Sector.SOCIAL, "child_protection_assessment", Dimension.FAMILY_AND_SOCIAL)],
    )
    async with running(provisioned, {Sector.HEALTH: doctor, Sector.SOCIAL: ScriptedPolicy([])}):
        req = request(child, Sector.EDUCATION, Sector.HEALTH, "health_assessment")
        await record(eventlog, req)

        async def referred_on() -> bool:
            state = await eventlog.load(child)
            onward = [r for r in state.referrals.values() if r.referrer is Sector.HEALTH]
            return bool(onward) and onward[0].received_at is not None

        await wait_for(referred_on)
        state = await eventlog.load(child)
        onward = [r for r in state.referrals.values() if r.referrer is Sector.HEALTH]
        assert len(onward) == 1 and onward[0].receiver is Sector.SOCIAL
        assert onward[0].correlation_id == req.correlation_id


async def test_the_receipt_goes_out_before_any_read_only_while_the_request_is_the_childs_newest_event(
    own_log: JetStreamEventStore,
) -> None:
    from refbus.services.sector.service import SectorService

    eventlog, child = own_log, new_child()  # a server of its own: no sector service takes these
    service = SectorService(Sector.HEALTH, ScriptedPolicy([]), eventlog, b"test event-id key")
    first = request(child)
    first_seq = await record(eventlog, first)
    assert first_seq is not None
    seen = await service.acknowledge_receipt(first, first_seq)
    assert seen is not None and seen.referrals[first.referral_id].received_at is not None
    # The child moves on before the second request is handled: the receipt is not sent unread.
    second = request(child)
    second_seq = await record(eventlog, second)
    assert second_seq is not None
    await record(eventlog, answer(ReferralCancelled, first, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED))
    assert await service.acknowledge_receipt(second, second_seq) is None
    assert [event_type(e) for e in await referral_events(eventlog, child, first.referral_id)] == [
        "referral.requested",
        "referral.received",
        "referral.cancelled",
    ]
    assert [event_type(e) for e in await referral_events(eventlog, child, second.referral_id)] == ["referral.requested"]
