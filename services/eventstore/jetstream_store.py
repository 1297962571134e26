"""The event store on NATS JetStream: the stream REFBUS is the log (append-only by configuration,
streams.py), written through group commit (writer.py), read through the child index and history
pages (reader.py) and replayed in order (replay.py)."""

import asyncio
from collections.abc import AsyncIterator, Sequence

import msgspec
from nats.aio.client import Client as NATS

from refbus.contracts import subjects
from refbus.contracts.events import Event
from refbus.services.audit import keys, proof
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader
from refbus.services.eventstore.records import DeadLetter, StoredEvent
from refbus.services.eventstore.replay import replay
from refbus.services.eventstore.store import EventStore, Unit
from refbus.services.eventstore.writer import GroupCommit


class JetStreamEventStore(EventStore):
    def __init__(
        self, nc: NATS, timeout: float = 5.0, ring: keys.Keyring | None = None, reader: LogReader | None = None,
        replay_consumer: str | None = None,
    ) -> None:
        """`ring`: the keys events are signed with; default: the process's (keys.install). `reader`:
        how histories are read; default: the log itself (a sector's is the read service's ViewReader).
        `replay_consumer`: the name of the consumer `replay` reads through (replay.raw_replay)."""
        super().__init__()
        self.replay_consumer = replay_consumer
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self.reader = reader or LogReader(nc, timeout)
        self._writer = GroupCommit(nc, self._is_stored_as, timeout, ring)

    async def append(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> list[int]:
        return (await self.append_linked(child, expected_last_seq, events, prev))[0]

    async def append_linked(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> tuple[list[int], proof.Link]:
        prev = await self._prev_link(child, expected_last_seq, prev)
        return await self._writer.append(child, expected_last_seq, events, prev)

    async def append_together(self, units: Sequence[Unit]) -> list[list[int]]:
        return await self._writer.append_together(units)

    async def _is_stored_as(self, event: Event, seq: int) -> bool:
        """The server answered 'duplicate, stored at seq': only ours if the child's event at that
        sequence is this very event (anyone may publish a message under a known id)."""
        for stored in await self.reader.history(event.child, min_seq=0, paged=False):
            if stored.seq == seq:
                return stored.event == event
        return False

    async def history(
        self, child: str, *, min_seq: int = 0, upto_seq: int | None = None, fresh: bool = True, paged: bool = True
    ) -> list[StoredEvent]:
        return await self.reader.history(child, min_seq=min_seq, upto_seq=upto_seq, fresh=fresh, paged=paged)

    async def event_count(self, child: str) -> int:
        return await self.reader.event_count(child)

    def replay(self, from_seq: int = 1) -> AsyncIterator[StoredEvent]:
        return replay(self.reader, from_seq, consumer=self.replay_consumer)

    async def children(self) -> dict[str, int]:
        return await self.reader.children()

    async def set_aside(self, by: str, record: DeadLetter) -> None:
        """Dead-letter a message: its bytes stay in the append-only log; the record says where and why."""
        await self.js.publish(
            subjects.dead_letter_subject(by),
            msgspec.json.encode(record),
            headers={
                jetstream.MSG_ID: f"dead:{record.consumer}:{record.stream_seq}",
                "Refbus-Reason": record.reason[:200],
            },
        )

    async def index_missing(self, upto_seq: int, wait: float = 5.0) -> int:
        """How many events up to `upto_seq` the child index lacks (0 when complete), after giving it
        `wait` seconds to catch up."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            log_info = await self.js.stream_info(subjects.STREAM)
            index_info = await self.js.stream_info(subjects.CHILD_INDEX_STREAM)
            missing = max(0, min(upto_seq, log_info.state.messages) - index_info.state.messages)
            if missing == 0 or asyncio.get_running_loop().time() > deadline:
                return missing
            await asyncio.sleep(0.1)
