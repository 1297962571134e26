"""The sector service's handler on the in-memory event store: milliseconds, no server. The same
behaviours run again on a real server in tests/integration/test_sector_services.py."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from refbus.contracts import codec, subjects
from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralReceived,
    ReferralRequested,
    event_type,
)
from refbus.contracts.vocabulary import CancelReason, Dimension, Outcome, Sector, Status
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.rules.policy import OnwardReferral, Step
from refbus.services.sector.service import SectorService
from tests.factories import answer, new_child, record, request
from tests.services import ScriptedPolicy

KEY = b"unit-test event-id key"
ACCEPT_AND_COMPLETE = [Step(ReferralAccepted), Step(ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED})]


def health(store: InMemoryEventStore, script: list[Step], onward: list[OnwardReferral] | None = None) -> SectorService:
    return SectorService(Sector.HEALTH, ScriptedPolicy(script, onward or []), store, KEY)


async def requested(store: InMemoryEventStore) -> tuple[str, ReferralRequested, int]:
    """A new child with one referral from social to health in the log: (child, request, its sequence)."""
    child = new_child()
    req = request(child)
    seq = await record(store, req)
    assert seq is not None
    return child, req, seq


async def steps_of(store: InMemoryEventStore, child: str, referral: ReferralRequested) -> list[str]:
    events = [h.event for h in await store.history(child) if h.event is not None]
    return [event_type(e) for e in events if getattr(e, "referral_id", None) == referral.referral_id]


async def test_a_referral_is_received_then_worked_to_its_end() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    assert await health(store, ACCEPT_AND_COMPLETE).react(req, seq, first_delivery=True) is None
    assert await steps_of(store, child, req) == [
        "referral.requested", "referral.received", "referral.accepted", "referral.completed"
    ]


async def test_a_redelivery_resumes_and_doubles_nothing() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    service = health(store, ACCEPT_AND_COMPLETE)
    await service.react(req, seq, first_delivery=True)
    await service.react(req, seq, first_delivery=False)  # the ack was lost: the message comes back
    assert await steps_of(store, child, req) == [
        "referral.requested", "referral.received", "referral.accepted", "referral.completed"
    ]


async def test_a_step_not_yet_due_sends_the_message_back_with_its_delay() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    wake_in = await health(store, [Step(ReferralAccepted, delay=60.0)]).react(req, seq, first_delivery=True)
    assert wake_in is not None and 55 < wake_in <= 60
    assert await steps_of(store, child, req) == ["referral.requested", "referral.received"]


async def test_a_cancel_before_the_decision_stops_the_work() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    await record(store, answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED))
    await health(store, ACCEPT_AND_COMPLETE).react(req, seq, first_delivery=True)
    assert (await store.load(child)).referrals[req.referral_id].status is Status.CANCELLED
    assert "referral.accepted" not in await steps_of(store, child, req)


async def test_a_completed_referral_is_sent_onward_once() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    onward = [OnwardReferral(Sector.SOCIAL, "family_counselling", Dimension.FAMILY_AND_SOCIAL)]
    service = health(store, ACCEPT_AND_COMPLETE, onward)
    await service.react(req, seq, first_delivery=True)
    await service.react(req, seq)  # a redelivery after completion
    sent = [r for r in (await store.load(child)).referrals.values() if r.referrer is Sector.HEALTH]
    assert len(sent) == 1 and sent[0].receiver is Sector.SOCIAL


async def test_an_update_that_broke_the_rules_is_refused() -> None:
    store, child = InMemoryEventStore(), new_child()
    req = request(child)
    await record(store, req)
    await record(store, answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED))
    late = answer(ReferralAccepted, req)
    # A raw writer slipped it past the rules: the log holds it after the cancel.
    [late_seq] = await store.append(child, (await store.load(child)).last_seq, [late])
    social = SectorService(Sector.SOCIAL, ScriptedPolicy([]), store, KEY)
    with pytest.raises(IllegalEvent):
        await social.react(late, late_seq)


@dataclass
class _Metadata:
    stream_seq: int
    num_delivered: int = 1

    @property
    def sequence(self) -> Any:
        return type("Seq", (), {"stream": self.stream_seq})()


@dataclass
class FakeMessage:
    """What the handler uses of a delivered JetStream message."""

    subject: str
    data: bytes
    seq: int
    acked: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> _Metadata:
        return _Metadata(self.seq)

    @property
    def reply(self) -> str:  # the ack subject: first delivery of log message `seq`
        return f"$JS.ACK.REFBUS.inbox-health.1.{self.seq}.{self.seq}.1764312345000000000.0"

    async def ack(self) -> None:
        self.acked.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acked.append("nak")


@pytest.mark.parametrize(
    ("subject_of", "reason"),
    [
        (lambda child: subjects.event_subject(child, Sector.EDUCATION, Sector.HEALTH), "misrouted"),
        (lambda child: subjects.event_subject(new_child(), Sector.SOCIAL, Sector.HEALTH), "misrouted"),
    ],
)
async def test_a_message_whose_subject_and_payload_disagree_is_set_aside_at_once(subject_of: Any, reason: str) -> None:
    store, child = InMemoryEventStore(), new_child()
    req = request(child)
    message = FakeMessage(subject_of(child), codec.encode(req), seq=7)
    await health(store, ACCEPT_AND_COMPLETE).handle(message)  # type: ignore[arg-type]
    assert message.acked == ["ack"]
    [letter] = store.dead_letters["health"]
    assert reason in letter.reason and letter.stream_seq == 7
    assert await store.history(child) == []


async def test_bytes_that_are_no_event_are_set_aside_and_acknowledged() -> None:
    store, child = InMemoryEventStore(), new_child()
    message = FakeMessage(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"[" * 100_000, seq=3)
    await health(store, []).handle(message)  # type: ignore[arg-type]
    assert message.acked == ["ack"] and store.dead_letters["health"][0].stream_seq == 3


async def test_the_receipt_is_stated_by_the_receiver_with_a_keyed_id() -> None:
    store = InMemoryEventStore()
    child, req, seq = await requested(store)
    await health(store, []).react(req, seq, first_delivery=True)
    [receipt] = [h.event for h in await store.history(child) if isinstance(h.event, ReferralReceived)]
    assert receipt.from_sector is Sector.HEALTH and receipt.to_sector is Sector.SOCIAL
    other_key = SectorService(Sector.HEALTH, ScriptedPolicy([]), InMemoryEventStore(), b"another key")
    store2 = other_key.store
    seq2 = await record(store2, req)
    assert seq2 is not None
    await other_key.react(req, seq2, first_delivery=True)
    [receipt2] = [h.event for h in await store2.history(child) if isinstance(h.event, ReferralReceived)]
    assert receipt2.event_id != receipt.event_id
