"""A sector's redrive consumer: handles a dead-lettered log message again when an operator asks
(`refbus dead redrive`), after the fix that makes it readable or legal.

Redrive requests are kept in REFBUS_DEAD_LETTERS (`refbus.dead.<sector>.redrive`, Nats-Msg-Id
`redrive:<consumer>:<stream_seq>`, so a repeated request within the duplicate window is stored
once); a durable consumer `redrive-<sector>` delivers each until it is handled. The message is read
again from the log (the child's history, where the service reads anyway: no new read permission),
as the current code decodes it, and handled as the inbox would: `react`, under the child's lock. The
handling is idempotent by state (receipts, steps and onward referrals are decided against the
child's current state, with derived ids), so a message redriven twice, or redriven after it was
handled after all, has one effect.
"""

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import codec, subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.records import EventIdTaken, RedriveRequest
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.sector.service import MAX_DELIVER, SectorService

log = structlog.get_logger(__name__)


def redrive_consumer(sector: Sector, ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=f"redrive-{sector.value}",
        filter_subject=subjects.redrive_subject(sector),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER,
    )


class Redriver:
    def __init__(self, service: SectorService) -> None:
        self.service = service
        self.handled = 0

    async def handle(self, raw: Msg) -> None:
        try:
            request = msgspec.json.decode(raw.data, type=RedriveRequest)
        except msgspec.DecodeError as exc:
            log.warning("redrive_unreadable", error=str(exc))
            await raw.term()
            return
        try:
            wake_in = await self.redrive(request)
        except Exception as exc:
            delivered = raw.metadata.num_delivered
            log.warning("redrive_failed", error=repr(exc), delivered=delivered, stream_seq=request.stream_seq)
            await raw.nak(delay=min(30.0, 0.5 * 2 ** min(delivered, 6)))
            return
        if wake_in is None:
            await raw.ack()
        else:
            await raw.nak(delay=wake_in)  # as the inbox does: back when the referral's next step is due

    async def redrive(self, request: RedriveRequest) -> float | None:
        service = self.service
        if request.consumer != service.consumer_name:
            log.warning("redrive_not_ours", consumer=request.consumer)
            return None
        child, _frm, _to = subjects.parse_event_subject(request.subject)
        history = await service.store.history(child, min_seq=request.stream_seq, fresh=False, paged=False)
        stored = next((h for h in history if h.seq == request.stream_seq), None)
        if stored is None:
            raise LookupError(f"log message {request.stream_seq} not in the child's history (yet)")
        if stored.event is None:
            # Still not readable by this version: set aside again (same record id: one letter).
            body = (stored.error or "unreadable").encode()
            await service.set_aside(request.subject, request.stream_seq, body, f"redrive: {stored.error}")
            return None
        event = stored.event
        if codec.subject_mismatch(request.subject, event) or event.to_sector != service.sector:
            await service.set_aside(request.subject, request.stream_seq, b"", "redrive: not addressed to us")
            return None
        lock = service._child_locks[event.child]  # one child at a time, with the inbox
        try:
            async with lock:
                wake_in = await service.react(event, request.stream_seq)
        except (IllegalEvent, EventIdTaken) as exc:
            await service.set_aside(request.subject, request.stream_seq, b"", f"redrive refused: {exc}")
            return None
        self.handled += 1
        log.info("redriven", stream_seq=request.stream_seq, dead_letter=request.dead_letter)
        return wake_in
