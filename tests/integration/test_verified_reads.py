"""A forged history page does not change what an auditor is shown: it is refused and reported, and
the child's events come from the index, verified."""

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from refbus.contracts import codec, pages, subjects
from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralFailed
from refbus.contracts.vocabulary import FailReason, Outcome
from refbus.services.audit import keys
from refbus.services.audit.reads import verified_history
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import answer, new_child, request

pytestmark = pytest.mark.integration


async def test_a_forged_page_is_refused_and_the_verified_index_shown(own_server: EmbeddedNats, tmp_path: Path) -> None:
    ring = keys.ensure(tmp_path)
    nc: NATS = await connect(own_server.url, "auditor")
    await streams.provision(nc.jetstream())
    store = JetStreamEventStore(nc, ring=ring)
    child = new_child()
    req = request(child)
    done = answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)
    stored = (await store.transact(child, lambda _s: [req, answer(ReferralAccepted, req), done])).stored
    await store.index_missing(stored[-1])
    clean = await verified_history(nc, child, ring.records)
    assert clean.ok and [e.event for e in clean.events][2] == done, clean.report.as_dict()

    # The page forger (who may write REFBUS_PAGES) says the referral failed instead.
    history = await store.history(child, paged=False)
    failed = answer(ReferralFailed, req, reason=next(iter(FailReason)))
    forged_events = [
        (h.seq, int(h.stored_at.timestamp() * 1e6) * 1000, codec.encode(failed if h.seq == stored[-1] else h.event))
        for h in history
    ]
    manifest = pages.HistoryPage(events=forged_events, covered_index_seq=10**9, runs=[[]], run_events=[3])
    await nc.jetstream().publish(subjects.page_subject(child), pages.encode_page(manifest))
    shown_plain = await store.history(child)
    assert isinstance(shown_plain[-1].event, ReferralFailed)  # what a plain paged read would show

    checked = await verified_history(nc, child, ring.records)
    assert not checked.ok and checked.refused_pages, checked.report.as_dict()
    assert [e.event for e in checked.events] == [h.event for h in history]
    assert checked.report.counts == {"page-refused": 1}
    await nc.close()
