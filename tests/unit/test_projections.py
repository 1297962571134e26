"""Read models rebuilt from the log: byte-identical across replays, and a replay interrupted and
resumed from its checkpoint ends where a whole one does."""

from pathlib import Path

from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralRejected
from refbus.contracts.vocabulary import Outcome, RejectReason
from refbus.services.audit.projections import rebuild
from refbus.services.eventstore.memory import InMemoryEventStore
from tests.factories import answer, new_child, request


async def _store() -> InMemoryEventStore:
    store = InMemoryEventStore()
    for n in range(30):
        child = new_child()
        req = request(child)
        steps = [req]
        if n % 3 == 0:
            steps += [answer(ReferralAccepted, req), answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)]
        elif n % 3 == 1:
            steps += [answer(ReferralRejected, req, reason=RejectReason.NO_CAPACITY)]
        await store.transact(child, lambda _s, steps=steps: steps)
    return store


async def test_two_replays_give_the_same_bytes_and_a_resumed_one_too(tmp_path: Path) -> None:
    store = await _store()
    first = await rebuild(store.replay, tmp_path / "a")
    await rebuild(store.replay, tmp_path / "b")
    whole = (tmp_path / "a" / "projections.json").read_bytes()
    assert whole == (tmp_path / "b" / "projections.json").read_bytes()
    await rebuild(store.replay, tmp_path / "c", stop_after=17)  # interrupted
    resumed = await rebuild(store.replay, tmp_path / "c")  # from the checkpoint
    assert resumed.events == first.events == len(store.log)
    assert (tmp_path / "c" / "projections.json").read_bytes() == whole
    report = first.report()
    assert report["open_referrals_by_sector"] == {"health": 10}
    assert report["outcomes_by_dimension"] == {"health": {"rejected": 10, "service_delivered": 10}}
    assert report["time_to_decision_by_pair"]["social->health"]["decisions"] == 20  # type: ignore[index]
