"""Linking a random child reference to the derived one (services/rules/child_links.py), written with
`transact_together`: the same contract on the in-memory store and on JetStream (a real nats-server)."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from refbus.contracts.events import ChildReferenceLinked
from refbus.contracts.vocabulary import Sector
from refbus.services.audit import proof
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.eventstore.records import ConcurrencyConflict
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.child_links import link_events
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.runtime.bus import connect
from tests.factories import new_child, new_worker, record, request

KEY = bytes(32)


@pytest_asyncio.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, provisioned: str) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    nc = await connect(provisioned, "contract-links")
    yield JetStreamEventStore(nc)
    await nc.drain()


def _link(old: str, new: str) -> tuple[ChildReferenceLinked, ChildReferenceLinked]:
    return link_events(KEY, old, new, Sector.JUSTICE, new_worker(), datetime.now(UTC))


async def link(store: EventStore, old: str, new: str) -> list[int]:
    events = _link(old, new)
    done = await store.transact_together((old, new), lambda _states: events)
    return [seq for result in done for seq in result.stored]


async def test_a_link_is_stored_on_both_histories_at_once(store: EventStore) -> None:
    old, new = new_child(), new_child()
    await record(store, request(old))
    stored = await link(store, old, new)
    assert len(stored) == 2 and stored[1] == stored[0] + 1
    on_old_side = [(h.seq, h.event) for h in await store.history(old) if isinstance(h.event, ChildReferenceLinked)]
    [(seq_old, on_old)] = on_old_side
    [on_new] = [h.event for h in await store.history(new)]
    assert on_old.child == old and on_new.child == new  # type: ignore[union-attr]
    assert (on_old.linked_from, on_old.linked_to) == (on_new.linked_from, on_new.linked_to) == (old, new)  # type: ignore[union-attr]
    assert (await store.load(old)).linked_to == new
    assert (await store.load(new)).linked_from == [old]
    # Each half is chained on its own child's chain: the old child's second link, the new one's first.
    [new_stored] = await store.history(new)
    assert proof.parse_link(new_stored.chain).pos == 1  # type: ignore[union-attr]
    assert seq_old == stored[0]


async def test_stating_the_same_link_again_stores_nothing(store: EventStore) -> None:
    old, new = new_child(), new_child()
    events = _link(old, new)
    await store.transact_together((old, new), lambda _s: events)
    again = await store.transact_together((old, new), lambda _s: events)
    assert [r.stored for r in again] == [[], []] and [r.duplicates for r in again] == [1, 1]
    assert len(await store.history(old)) == len(await store.history(new)) == 1


async def test_a_reference_is_linked_onward_at_most_once(store: EventStore) -> None:
    old, new, other = new_child(), new_child(), new_child()
    await link(store, old, new)
    with pytest.raises(IllegalEvent, match="at most once"):
        await link(store, old, other)
    assert await store.history(other) == []  # all or nothing: the other half was not stored either


@pytest.mark.parametrize("shape", ["onward from a derived", "into one linked onward", "to itself", "a cycle"])
async def test_links_stay_one_step_long(store: EventStore, shape: str) -> None:
    a, b, c = new_child(), new_child(), new_child()
    if shape == "onward from a derived":
        await link(store, a, b)
        with pytest.raises(IllegalEvent, match="derived reference is never linked onward"):
            await link(store, b, c)
    elif shape == "into one linked onward":
        await link(store, b, c)
        with pytest.raises(IllegalEvent, match=f"itself linked to {c}: link to {c} instead"):
            await link(store, a, b)
    elif shape == "to itself":
        with pytest.raises(IllegalEvent, match="not linked to itself"):
            events = _link(a, a)
            await store.transact_together((a,), lambda _s: events)
    else:
        await link(store, a, b)
        with pytest.raises(IllegalEvent):
            await link(store, b, a)
    assert (await store.load(c)).linked_from in ([], [b])


async def test_racing_links_that_share_a_reference_never_make_a_chain(store: EventStore) -> None:
    for _ in range(5):
        a, b, c = new_child(), new_child(), new_child()
        outcomes = await asyncio.gather(link(store, a, b), link(store, b, c), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, IllegalEvent)]
        assert len(refused) == 1, outcomes
        state_b = await store.load(b)
        assert (state_b.linked_to is None) != (state_b.linked_from == [])  # b is a source or a target, not both


async def test_a_stale_part_refuses_the_whole_write(store: EventStore) -> None:
    old, new = new_child(), new_child()
    await record(store, request(new))
    first, second = _link(old, new)
    with pytest.raises(ConcurrencyConflict):
        await store.append_together([(old, 0, [first], proof.START), (new, 0, [second], proof.START)])
    assert await store.history(old) == []
    assert len(await store.history(new)) == 1
