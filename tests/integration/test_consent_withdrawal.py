"""Consent withdrawn while health works on a referral that relies on it, through social's gateway over
NATS, with the sector services running on a real nats-server: the referral ends cancelled with
consent_withdrawn, health stops working on it, and both sectors' inboxes hold the cancellation."""

import json
import uuid
from typing import Any

import msgspec
import pytest

from refbus.contracts import subjects
from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralInProgress,
    event_type,
)
from refbus.contracts.vocabulary import CancelReason, Outcome, Sector, Status
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.gateway.feed import FeedReader
from refbus.services.rules.policy import Step
from refbus.services.runtime.bus import connect
from tests.factories import new_worker
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration

WORK_S = 3.0
"How long health works on a referral before completing it: the withdrawal comes in between."


async def dead_letters_of(eventlog: JetStreamEventStore, sector: Sector) -> set[int]:
    """The log sequences this sector has set aside."""
    letters = subjects.dead_letter_subject(sector)
    info = await eventlog.js.stream_info(subjects.DEAD_LETTER_STREAM, subjects_filter=letters)
    found: set[int] = set()
    if not (info.state.subjects or {}).get(letters):
        return found
    sub = await eventlog.js.subscribe(letters, ordered_consumer=True)
    for _ in range(info.state.subjects[letters]):  # type: ignore[index]
        found.add(json.loads((await sub.next_msg(timeout=5)).data)["stream_seq"])
    await sub.unsubscribe()
    return found


async def test_withdrawn_consent_cancels_the_referral_in_work_and_tells_both_sectors(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    done = Step(ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED}, WORK_S)
    doctor = ScriptedPolicy([Step(ReferralAccepted), Step(ReferralInProgress), done])
    nc = await connect(provisioned, "social-system")
    async with running(provisioned, {Sector.HEALTH: doctor, Sector.SOCIAL: ScriptedPolicy([])}):
        try:

            async def ask(kind: str, **body: Any) -> dict[str, Any]:
                body = {"idempotency_key": str(uuid.uuid4()), "child": child, "actor": new_worker(), **body}
                reply = await nc.request(subjects.command_subject(Sector.SOCIAL, kind), msgspec.json.encode(body), 5)
                answer: dict[str, Any] = msgspec.json.decode(reply.data)
                assert answer["status"] in (200, 201), answer
                return answer

            await ask("record-consent", given_by="parent", sectors=["health"])
            refer = {"to_sector": "health", "dimension": "health", "service": "health_assessment", "urgency": "routine"}
            relied = (await ask("refer", **refer, legal_basis="guardian_consent"))["referral_id"]
            statutory = (await ask("refer", **refer, legal_basis="child_protection_duty"))["referral_id"]
            relied, statutory = uuid.UUID(relied), uuid.UUID(statutory)

            async def both_in_work() -> bool:
                referrals = (await eventlog.load(child)).referrals
                return all(referrals[r].status is Status.IN_PROGRESS for r in (relied, statutory))

            await wait_for(both_in_work)
            withdraw = {"idempotency_key": str(uuid.uuid4()), "child": child, "actor": new_worker(),
                        "withdrawn_by": "parent", "sectors": ["health"]}
            subject = subjects.command_subject(Sector.SOCIAL, "withdraw-consent")
            first = msgspec.json.decode((await nc.request(subject, msgspec.json.encode(withdraw), 5)).data)
            assert first["status"] == 201, first
            stored = len(await eventlog.history(child))
            # A retried command is answered with the first answer and stores nothing.
            again = msgspec.json.decode((await nc.request(subject, msgspec.json.encode(withdraw), 5)).data)
            assert (again["status"], again["seq"]) == (200, first["seq"])

            state = await eventlog.load(child)
            assert state.referrals[relied].status is Status.CANCELLED
            assert state.referrals[statutory].status is Status.IN_PROGRESS  # another legal basis: still open
            assert state.consent == set()

            # Both parties' inboxes hold the cancellation: the feed reads exactly what the inbox is sent.
            feed = FeedReader(nc)
            told: dict[Sector, list[ReferralCancelled]] = {}
            for sector in (Sector.HEALTH, Sector.SOCIAL):
                page = await feed(sector, first["seq"], 100, 0.0)
                told[sector] = [d.event for d in page.events if isinstance(d.event, ReferralCancelled)]
            for sector, cancels in told.items():
                [cancel] = cancels
                assert cancel.referral_id == relied and cancel.reason is CancelReason.CONSENT_WITHDRAWN
                assert cancel.from_sector is Sector.SOCIAL and cancel.to_sector is sector
                assert cancel.causation_id == uuid.UUID(first["event_id"])

            # Health completes the statutory referral when its work is done, and nothing more on the other.
            async def statutory_done() -> bool:
                return (await eventlog.load(child)).referrals[statutory].status is Status.COMPLETED

            await wait_for(statutory_done, within=WORK_S + 20)
            js, parties = eventlog.js, (Sector.HEALTH, Sector.SOCIAL)

            async def inboxes_drained() -> bool:
                infos = [await js.consumer_info(subjects.STREAM, f"inbox-{s.value}") for s in parties]
                return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

            await wait_for(inboxes_drained)
        finally:
            await nc.drain()

    steps = [event_type(e) for e in await referral_events(eventlog, child, relied)]
    assert steps == ["referral.requested", "referral.received", "referral.accepted", "referral.in-progress",
                     "referral.cancelled", "referral.cancelled"]
    assert len(await eventlog.history(child)) == stored + 1  # the statutory referral's completion, nothing else
    cancel_seqs = {h.seq for h in await eventlog.history(child) if isinstance(h.event, ReferralCancelled)}
    for sector in (Sector.HEALTH, Sector.SOCIAL):
        assert not cancel_seqs & await dead_letters_of(eventlog, sector), f"{sector.value} set a cancellation aside"
