"""The history pager on a real server: pages hold each of a child's events once, in order, merged
into few runs; histories read through them equal the log; a restart resumes without loss or
doubles; and reads stay right while the pager is behind or stopped."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
from nats.aio.client import Client as NATS

from refbus.contracts import subjects
from refbus.contracts.events import ReferralReceived
from refbus.contracts.pages import HistoryPage, decode_page
from refbus.registry import pilot_events
from refbus.services.eventstore import streams
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.pager.pager import MAX_RUNS, WHOLE_HISTORY_EVENTS, HistoryPager, pager_checkpoint
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import answer, new_child, record, request
from tests.services import wait_for

pytestmark = pytest.mark.integration


async def record_referrals(eventlog: JetStreamEventStore, child: str, count: int) -> list[int]:
    """`count` referrals for the child, each requested and received: 2 * count events."""
    seqs = []
    for _ in range(count):
        req = request(child)
        for event in (req, answer(ReferralReceived, req)):
            seq = await record(eventlog, event)
            assert seq is not None
            seqs.append(seq)
    return seqs


async def provisioned_log(server: EmbeddedNats) -> JetStreamEventStore:
    nc = await connect(server.url)
    await streams.provision(nc.jetstream())
    return JetStreamEventStore(nc)


@asynccontextmanager
async def running_pager(
    nc: NATS, flush_after: float = 0.05, request_timeout: float = 10.0
) -> AsyncIterator[HistoryPager]:
    pager = HistoryPager(nc, flush_after=flush_after, timeout=request_timeout)
    await pager.start()
    try:
        yield pager
    finally:
        await pager.stop()


async def manifest_of(eventlog: JetStreamEventStore, child: str) -> HistoryPage:
    found = await eventlog.reader.read_page({"last_by_subj": subjects.page_subject(child)})
    assert found is not None
    return decode_page(found.data)


async def paged_up_to_the_index(eventlog: JetStreamEventStore) -> None:
    # The index first copies all that the log holds: read before it has, its last sequence is too
    # early a mark (the pager would be "caught up" before it saw the newest events).
    log_last = (await eventlog.js.stream_info(subjects.STREAM)).state.last_seq
    assert await eventlog.index_missing(log_last, wait=20) == 0
    index_last = (await eventlog.js.stream_info(subjects.CHILD_INDEX_STREAM)).state.last_seq

    async def caught_up() -> bool:
        return await pager_checkpoint(eventlog.nc) >= index_last

    await wait_for(caught_up, within=20)


async def test_pages_hold_every_event_once_in_few_runs_and_survive_a_restart(own_server: EmbeddedNats) -> None:
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    busy, quiet = new_child(), new_child()
    recorded: dict[str, list[int]] = {busy: [], quiet: []}
    async with running_pager(nc):
        # Rounds of writes, each paged before the next: the busy child gets a run per round,
        # and merges keep its runs few.
        for round_ in range(12):
            recorded[busy] += await record_referrals(eventlog, busy, 3 + round_)
            if round_ % 4 == 0:
                recorded[quiet] += await record_referrals(eventlog, quiet, 1)
            await paged_up_to_the_index(eventlog)

    for child, seqs in recorded.items():
        paged, rest_from = await eventlog.reader.history_pages(child)
        assert [e.seq for e in paged] == seqs, "the pages hold each event once, in log order"
        assert rest_from > 1
        history = await eventlog.history(child)
        assert [e.seq for e in history] == seqs
        assert all(e.event is not None and e.event.child == child for e in history)
    runs = (await manifest_of(eventlog, busy)).runs
    assert 1 <= len(runs) <= MAX_RUNS, runs
    # Superseded pages were deleted: the stream holds the busy child's live pages, not 12 rounds' worth.
    info = await nc.jetstream().stream_info(subjects.PAGES_STREAM, subjects_filter=subjects.page_subject(busy))
    assert info.state.subjects is not None and info.state.subjects[subjects.page_subject(busy)] <= MAX_RUNS

    # Written while no pager runs: read from the index, then paged by a new pager that resumes.
    recorded[busy] += await record_referrals(eventlog, busy, 5)
    assert [e.seq for e in await eventlog.history(busy)] == recorded[busy]
    async with running_pager(nc):  # resumes from the checkpoint
        await paged_up_to_the_index(eventlog)
    paged, _ = await eventlog.reader.history_pages(busy)
    assert [e.seq for e in paged] == recorded[busy], "resumed: nothing lost, nothing paged twice"
    assert [e.seq for e in await eventlog.history(busy)] == recorded[busy]
    await nc.close()


async def test_a_short_history_is_kept_whole_in_its_manifest(own_server: EmbeddedNats) -> None:
    """A typical child's first read then loads one message: no runs, every event in the manifest."""
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    child = new_child()
    seqs: list[int] = []
    async with running_pager(nc):
        for _ in range(4):  # four flushes, each of which alone would start a run of its own
            seqs += await record_referrals(eventlog, child, 2)
            await paged_up_to_the_index(eventlog)
        whole = await manifest_of(eventlog, child)
        assert whole.runs == [[]] and [seq for seq, _, _ in whole.events] == seqs, whole.runs

        # Past WHOLE_HISTORY_EVENTS the runs come back: each new event is no longer a rewrite of all.
        seqs += await record_referrals(eventlog, child, WHOLE_HISTORY_EVENTS // 2)
        await paged_up_to_the_index(eventlog)
        seqs += await record_referrals(eventlog, child, 1)
        await paged_up_to_the_index(eventlog)
    runs = (await manifest_of(eventlog, child)).runs
    assert len(runs) == 2, runs
    assert [e.seq for e in (await eventlog.reader.history_pages(child))[0]] == seqs
    await nc.close()


async def test_reads_are_right_while_the_pager_is_behind(own_server: EmbeddedNats) -> None:
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    child = new_child()
    async with running_pager(nc, flush_after=3600):  # holds everything back; pages it when stopped
        seqs = await record_referrals(eventlog, child, 4)
        await asyncio.sleep(0.3)
        assert (await eventlog.reader.history_pages(child))[0] == []
        assert [e.seq for e in await eventlog.history(child)] == seqs
        assert await pager_checkpoint(nc) < seqs[0], "the checkpoint waits for the events held back"
    paged, _ = await eventlog.reader.history_pages(child)
    assert [e.seq for e in paged] == seqs
    await nc.close()


async def test_a_pager_stopped_while_it_deletes_superseded_pages_pages_nothing_twice(own_server: EmbeddedNats) -> None:
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    child = new_child()
    seqs = await record_referrals(eventlog, child, 2)
    async with running_pager(nc):
        await paged_up_to_the_index(eventlog)
    deleting = asyncio.Event()

    class StoppedWhileDeleting(HistoryPager):
        async def _delete(self, seqs: list[int]) -> None:
            if seqs and not deleting.is_set():
                deleting.set()
                await asyncio.Event().wait()  # until the stop cancels it
            await super()._delete(seqs)

    seqs += await record_referrals(eventlog, child, 3)  # paged as one new run, which absorbs the first
    pager = StoppedWhileDeleting(nc, flush_after=0.05)
    await pager.start()
    await asyncio.wait_for(deleting.wait(), 10)
    await pager.stop()  # pages what it holds on the way out

    paged, _ = await eventlog.reader.history_pages(child)
    assert [e.seq for e in paged] == seqs, "each event paged once"
    async with running_pager(nc):  # and a pager resuming after it extends the same pages
        seqs += await record_referrals(eventlog, child, 1)
        await paged_up_to_the_index(eventlog)
    paged, _ = await eventlog.reader.history_pages(child)
    assert [e.seq for e in paged] == seqs
    await nc.close()


async def test_a_pager_stops_when_a_cancel_is_lost(own_server: EmbeddedNats) -> None:
    """nats-py awaits its replies with asyncio.wait_for, which on Python 3.11 loses a cancel that
    comes with the reply: a stop must not rest on the cancel alone, and still pages what it holds."""
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    child = new_child()
    seqs = await record_referrals(eventlog, child, 2)
    asked = asyncio.Event()

    class LosesACancel(HistoryPager):
        async def _write_checkpoint(self) -> None:
            if self._dirty and not asked.is_set():  # once the events are read and held
                asked.set()
                with suppress(asyncio.CancelledError):  # as wait_for may lose it
                    await asyncio.sleep(30)
            await super()._write_checkpoint()

    pager = LosesACancel(nc, flush_after=60)  # nothing is due before the stop
    await pager.start()
    await asyncio.wait_for(asked.wait(), 10)
    async with asyncio.timeout(10):
        await pager.stop()

    paged, _ = await eventlog.reader.history_pages(child)
    assert [e.seq for e in paged] == seqs, "held events paged on the way out"
    index_last = (await nc.jetstream().stream_info(subjects.CHILD_INDEX_STREAM)).state.last_seq
    assert await pager_checkpoint(nc) == index_last
    await nc.close()


async def test_a_backlog_is_paged_whole_from_scratch_and_after_a_restart(own_server: EmbeddedNats) -> None:
    """Thousands of events over hundreds of children, written while no pager runs: a new pager
    pages them all, and after more are written, a pager resuming from the checkpoint completes them."""
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    events = pilot_events(children=300, total=8000, seed=11)
    children = {e.child for e in events}
    writer = BulkWriter(eventlog)
    for part in (events[:4000], events[4000:]):
        report = await writer.write(part)
        assert report.stored == len(part) and not report.refused
        async with running_pager(nc, flush_after=0.1):
            await paged_up_to_the_index(eventlog)
    incomplete = []
    for child in children:
        paged, _ = await eventlog.reader.history_pages(child)
        indexed = await eventlog.history(child, paged=False)
        if [(e.seq, e.stored_at, e.event) for e in paged] != [(e.seq, e.stored_at, e.event) for e in indexed]:
            incomplete.append(child)
    assert not incomplete, f"{len(incomplete)} of {len(children)} children not paged exactly"
    await nc.close()


async def test_a_page_lost_from_under_a_manifest_is_noticed_and_rebuilt(own_server: EmbeddedNats) -> None:
    """As after a crash that loses a server's last unsynced writes: a page a manifest names is
    gone. Readers notice and read the index; after the server's restart the pager checks the
    child's pages, finds the hole and starts the child over from the index."""
    eventlog = await provisioned_log(own_server)
    nc = eventlog.nc
    child = new_child()
    async with running_pager(nc, request_timeout=2.0):
        seqs = []
        # A run too long to be kept whole, then one of 2 events beside it (not merged: longer > 2).
        for count in (WHOLE_HISTORY_EVENTS // 2 + 1, 1):
            seqs += await record_referrals(eventlog, child, count)
            await paged_up_to_the_index(eventlog)
        manifest = await manifest_of(eventlog, child)
        assert len(manifest.runs) == 2 and manifest.runs[0], manifest.runs
        await nc.jetstream().delete_msg(subjects.PAGES_STREAM, manifest.runs[0][0])

        assert (await eventlog.reader.history_pages(child))[0] == [], "an incomplete set of pages is not used"
        assert [e.seq for e in await eventlog.history(child)] == seqs, "the index answers instead"

        own_server.kill()
        await asyncio.to_thread(own_server.start)

        async def written() -> bool:
            try:
                seqs.extend(await record_referrals(eventlog, child, 1))
                return True
            except Exception:  # reconnecting
                return False

        await wait_for(written, within=20)
        await paged_up_to_the_index(eventlog)
    paged, _ = await eventlog.reader.history_pages(child)
    assert [e.seq for e in paged] == seqs, "rebuilt from the index"
    await nc.close()
