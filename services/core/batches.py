"""JetStream atomic batch publish (server 2.12+): the messages are stored all together or not at all,
with one fsync and one PubAck. nats-py has no helper for it, so the headers are set by hand:
`Nats-Batch-Id`, `Nats-Batch-Sequence` from 1, and `Nats-Batch-Commit: 1` on the last message,
which alone is sent as a request."""

import json
import uuid

from nats.aio.client import Client as NATS

Message = tuple[str, bytes, dict[str, str]]


async def publish_batch(nc: NATS, messages: list[Message], wait: float) -> dict[str, object]:
    """The server's answer: {"seq": last sequence, "count": n, ...} or {"error": {...}}.
    Raises nats.errors.TimeoutError when no answer came (the outcome is then unknown)."""
    batch_id = uuid.uuid4().hex
    last = len(messages)
    for number, (subject, payload, headers) in enumerate(messages, 1):
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(number)
        if number < last:
            await nc.publish(subject, payload, headers=headers)
    subject, payload, headers = messages[-1]
    headers["Nats-Batch-Commit"] = "1"
    reply = await nc.request(subject, payload, timeout=wait, headers=headers)
    return json.loads(reply.data)


def first_sequence(ack: dict[str, object], size: int) -> int:
    """The stream sequence of a stored batch's first message (the PubAck names the last)."""
    return int(ack["seq"]) - int(ack.get("count", size)) + 1  # type: ignore[call-overload]
