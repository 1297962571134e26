"""A consent withdrawal and the cancellations of what relied on it, as one append: the same contract on
the in-memory store and on JetStream (a real nats-server), through `transact` and the gateway command."""

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from refbus.contracts import commands as c
from refbus.contracts.events import ConsentWithdrawn, ReferralAccepted, ReferralCancelled, event_type
from refbus.contracts.vocabulary import CancelReason, Guardian, LegalBasis, Sector, Status
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.eventstore.store import EventStore
from refbus.services.gateway.core import Gateway
from refbus.services.rules.decisions import consent_withdrawal
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.runtime.bus import connect
from tests.factories import answer, consent, envelope, new_child, new_worker, record, request

KEY = b"contract consent key"


@pytest_asyncio.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, provisioned: str) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    nc = await connect(provisioned, "contract-consent")
    yield JetStreamEventStore(nc)
    await nc.drain()


async def consent_based_referral_in_work(store: EventStore, child: str) -> object:
    await record(store, consent(child, (Sector.HEALTH,)))
    relied = request(child, legal_basis=LegalBasis.GUARDIAN_CONSENT)
    for event in (relied, answer(ReferralAccepted, relied)):
        await record(store, event)
    return relied


def withdrawn(child: str, by: Sector = Sector.SOCIAL) -> ConsentWithdrawn:
    return ConsentWithdrawn(**envelope(child, by, None), withdrawn_by=Guardian.PARENT, sectors=(Sector.HEALTH,))


async def test_the_withdrawal_and_its_cancellations_are_one_append(store: EventStore) -> None:
    child = new_child()
    relied = await consent_based_referral_in_work(store, child)
    statutory = request(child)
    await record(store, statutory)
    before = len(await store.history(child))
    decided_before = consent_withdrawal(KEY, await store.load(child), withdrawal := withdrawn(child))
    done = await store.transact(child, lambda state: consent_withdrawal(KEY, state, withdrawal))
    assert len(done.stored) == 3 and done.stored == list(range(done.stored[0], done.stored[0] + 3))
    history = [h.event for h in await store.history(child)][before:]
    assert [event_type(e) for e in history if e] == [
        "case.consent-withdrawn", "referral.cancelled", "referral.cancelled"]
    assert {(e.from_sector, e.to_sector) for e in history[1:] if e} == {
        (Sector.SOCIAL, Sector.HEALTH), (Sector.SOCIAL, Sector.SOCIAL)}
    state = await store.load(child)
    assert state.referrals[relied.referral_id].status is Status.CANCELLED  # type: ignore[attr-defined]
    assert state.referrals[statutory.referral_id].status is Status.REQUESTED
    # A retry that decided on the child before the first attempt landed makes the same events (derived
    # ids): nothing is stored twice.
    again = await store.transact(child, lambda _state: decided_before)
    assert again.stored == [] and again.duplicates == 3
    assert (await store.transact(child, lambda state: consent_withdrawal(KEY, state, withdrawal))).stored == []
    assert len(await store.history(child)) == before + 3


async def test_a_withdrawal_without_its_cancellations_stores_nothing(store: EventStore) -> None:
    child = new_child()
    await consent_based_referral_in_work(store, child)
    before = await store.history(child)
    with pytest.raises(IllegalEvent, match="must be cancelled in the same append"):
        await store.transact(child, lambda _state: [withdrawn(child)])
    assert await store.history(child) == before
    assert (await store.load(child)).consent == {Sector.HEALTH}


async def test_a_step_decided_before_the_withdrawal_cannot_land_after_it(store: EventStore) -> None:
    child = new_child()
    relied = await consent_based_referral_in_work(store, child)
    stale = await store.load(child)  # the receiver read the child, then the guardian withdrew
    withdrawal = withdrawn(child, by=Sector.EDUCATION)  # recorded by a sector that is no party
    await store.transact(child, lambda state: consent_withdrawal(KEY, state, withdrawal))
    step = answer(ReferralCancelled, relied, reason=CancelReason.NO_LONGER_NEEDED)  # type: ignore[arg-type]
    with pytest.raises(IllegalEvent, match="not allowed from status cancelled"):
        await store.transact(child, lambda _state: [step], state=stale)


async def test_a_retried_withdraw_consent_command_stores_nothing_twice(store: EventStore) -> None:
    child = new_child()
    relied = await consent_based_referral_in_work(store, child)
    gateway = Gateway(Sector.SOCIAL, store, KEY)
    command = c.WithdrawConsent(idempotency_key=str(uuid.uuid4()), child=child, actor=new_worker(),
                                withdrawn_by=Guardian.PARENT, sectors=(Sector.HEALTH,))
    first = await gateway.execute(command)
    assert isinstance(first, c.Applied) and first.status == 201, first
    count = len(await store.history(child))
    second = await Gateway(Sector.SOCIAL, store, KEY).execute(command)  # a fresh gateway: no memory of the first
    assert isinstance(second, c.Applied) and (second.status, second.seq) == (200, first.seq)
    assert len(await store.history(child)) == count
    cancels = [h.event for h in await store.history(child) if isinstance(h.event, ReferralCancelled)]
    assert len(cancels) == 2 and {e.causation_id for e in cancels} == {first.event_id}
    assert (await store.load(child)).referrals[relied.referral_id].status is Status.CANCELLED  # type: ignore[attr-defined]
