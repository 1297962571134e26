"""Need-to-know reads: what a sector asks the read service (services/reads/) and what it gets back.

MessagePack on core NATS request/reply (`subjects.read_subject`). A sector gets whole the events it
is party to and the case facts the child's consent shares with it; every other event of the child
comes `withheld`: the same event with what identifies the service, the finding or the people
replaced by fixed placeholders, so that the sector's rules fold the child as they would the whole
history and nothing it may not know reaches it (docs/decisions/0023-need-to-know-reads.md).
"""

from typing import Annotated

import msgspec

from refbus.contracts.events import ChildRef

Seq = Annotated[int, msgspec.Meta(ge=0)]
FEED_MAX = 1000
REPLY_BUDGET = 512 * 1024
"Bytes of events in one reply (the server's max_payload is 1 MiB); the rest comes on asking again."


class HistoryRead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One child's history as the asking sector may see it, in log order."""

    child: ChildRef
    min_seq: Seq = 0
    "Also wait for this sequence of the child."
    upto_seq: Seq | None = None
    fresh: bool = True
    "Include every write acknowledged before the request (a count on the log's leader first)."
    after: Seq = 0
    "Only events after this sequence: how a reader asks for the rest of a long history."


class FeedRead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The events addressed to the asking sector after a log sequence (its events feed)."""

    after: Seq = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=FEED_MAX)] = 100


class ViewedEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq: int
    stored_ns: int
    data: bytes
    "The event as JSON (contracts/codec.py); empty when the log's message is not an event (`error`)."
    withheld: bool = False
    "Not the sector's to read: a stand-in that keeps what the rules need of it."
    error: str | None = None
    chain: str | None = None
    key: str | None = None
    sig: str | None = None


class ViewReply(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    events: list[ViewedEvent] = []
    more: bool = False
    "The reply stopped at REPLY_BUDGET: ask again after the last event's sequence."
    next_after: int = 0
    "Feed: the newest sequence looked at (the cursor to resume from)."
    error: str | None = None
    "Why the read was refused or failed; nothing else is set then."


ENCODER = msgspec.msgpack.Encoder()
HISTORY_DECODER = msgspec.msgpack.Decoder(HistoryRead)
FEED_DECODER = msgspec.msgpack.Decoder(FeedRead)
REPLY_DECODER = msgspec.msgpack.Decoder(ViewReply)
