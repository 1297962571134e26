"""A store keeps the children it read or wrote lately (docs/decisions/0014-recent-children.md): what
it may skip reading, and what it must still catch. On the in-memory store, counting its reads."""

import pytest

from refbus.contracts import codec
from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralInProgress
from refbus.contracts.vocabulary import Outcome
from refbus.services.audit import proof
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.eventstore.records import Delivered, StoredEvent
from refbus.services.rules.lifecycle import IllegalEvent
from tests.factories import answer, new_child, request


class CountingStore(InMemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def history(self, child: str, **options: object) -> list[StoredEvent]:  # type: ignore[override]
        self.reads += 1
        return await super().history(child, **options)  # type: ignore[arg-type]


def delivered(store: InMemoryEventStore, seq: int) -> Delivered:
    """The message at `seq` as a consumer gets it: bytes as stored, link from its header."""
    _, _, _, headers, body = store.messages[seq - 1]
    return Delivered(seq, codec.decode(body), body, proof.parse_link(headers[proof.CHAIN]))


async def test_an_event_that_chains_on_the_kept_state_is_folded_without_a_read() -> None:
    store = CountingStore()
    child = new_child()
    req = request(child)
    await store.transact(child, lambda _s: [req])
    [seq] = await store.append(child, 1, [answer(ReferralAccepted, req)])  # another writer's, rules apart
    before = store.reads
    state = await store.load(child, min_seq=seq, fresh=False, legal=delivered(store, seq))
    assert store.reads == before
    assert state.last_seq == seq and state.events_folded == 2


async def test_the_first_event_of_a_child_needs_no_read() -> None:
    store, writer = CountingStore(), InMemoryEventStore()
    store.log, store.messages, store._last, store._ids = writer.log, writer.messages, writer._last, writer._ids
    child = new_child()
    req = request(child)
    await writer.transact(child, lambda _s: [req])
    state = await store.load(child, min_seq=1, fresh=False, legal=delivered(store, 1))
    assert store.reads == 0 and req.referral_id in state.referrals


async def test_an_event_with_another_between_is_read_with_what_came_between() -> None:
    store = CountingStore()
    child = new_child()
    req = request(child)
    await store.transact(child, lambda _s: [req])
    accepted, started = answer(ReferralAccepted, req), answer(ReferralInProgress, req)
    await store.append(child, 1, [accepted])
    [seq] = await store.append(child, 2, [started])
    before = store.reads
    state = await store.load(child, min_seq=seq, fresh=False, legal=delivered(store, seq))
    assert store.reads == before + 1
    assert {accepted.event_id, started.event_id} <= state.event_ids and state.events_folded == 3


async def test_a_delivered_event_whose_bytes_differ_from_its_link_is_read() -> None:
    store = CountingStore()
    child = new_child()
    req = request(child)
    await store.transact(child, lambda _s: [req])
    [seq] = await store.append(child, 1, [answer(ReferralAccepted, req)])
    honest = delivered(store, seq)
    forged = honest._replace(body=honest.body.replace(b"accepted", b"accepted "))
    before = store.reads
    await store.load(child, min_seq=seq, fresh=False, legal=forged)
    assert store.reads == before + 1


async def test_an_illegal_event_is_caught_on_the_shortcut_too() -> None:
    store = CountingStore()
    child = new_child()
    req = request(child)
    await store.transact(child, lambda _s: [req])
    # Completed straight after requested: a raw writer's, past the rules, chained correctly.
    [seq] = await store.append(child, 1, [answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)])
    before = store.reads
    with pytest.raises(IllegalEvent):
        await store.load(child, min_seq=seq, fresh=False, legal=delivered(store, seq))
    assert store.reads == before
    with pytest.raises(IllegalEvent):  # and again, from the state kept with it
        await store.load(child, min_seq=seq, fresh=True, legal=delivered(store, seq))


async def test_a_fresh_load_counts_and_reads_only_when_the_child_moved() -> None:
    store = CountingStore()
    child = new_child()
    req = request(child)
    await store.transact(child, lambda _s: [req])
    before = store.reads
    await store.load(child)
    assert store.reads == before  # the count matched: the kept state
    await store.append(child, 1, [answer(ReferralAccepted, req)])
    before = store.reads
    state = await store.load(child)
    assert store.reads == before + 1 and state.events_folded == 2


async def test_a_state_handed_out_is_a_copy() -> None:
    store = InMemoryEventStore()
    child = new_child()
    req = request(child)
    done = await store.transact(child, lambda _s: [req])
    done.state.referrals.clear()
    done.state.event_ids.clear()
    again = await store.load(child)
    again.referrals[req.referral_id].steps["x"] = 9
    assert (await store.load(child)).referrals[req.referral_id].steps.get("x") is None


def test_a_copy_of_a_state_shares_nothing_mutable_with_it() -> None:
    """The store keeps states and hands out copies that `transact` applies events to tentatively: a
    container shared between the two let a refused write change the kept state (a racing link left a
    reference both source and target: `linked_from` was shared)."""
    import dataclasses

    from refbus.services.rules.state import ChildState

    state = ChildState(child=new_child(), linked_from=["c0123456789abcdef"])
    copied = state.copy()
    containers = [f.name for f in dataclasses.fields(ChildState) if f.default_factory is not dataclasses.MISSING]
    assert "linked_from" in containers
    for name in containers:
        assert getattr(copied, name) is not getattr(state, name), name
        assert getattr(copied, name) == getattr(state, name), name
