"""JetStream atomic batch publish (server 2.12+): the messages are stored all together or not at all,
with one fsync and one PubAck. nats-py has no helper for it, so the headers are set by hand:
`Nats-Batch-Id`, `Nats-Batch-Sequence` from 1, and `Nats-Batch-Commit: 1` on the last message,
which alone is sent as a request."""

import json
import os

from nats.aio.client import Client as NATS

Message = tuple[str, bytes, dict[str, str]]


async def publish_batch(nc: NATS, messages: list[Message], wait: float) -> dict[str, object]:
    """The server's answer: {"seq": last sequence, "count": n, ...} or {"error": {...}}.
    Raises nats.errors.TimeoutError when no answer came (the outcome is then unknown)."""
    batch_id = new_batch_id()
    for number, (_subject, _payload, headers) in enumerate(messages, 1):
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(number)
    await publish_unchecked(nc, messages[:-1])
    subject, payload, headers = messages[-1]
    headers["Nats-Batch-Commit"] = "1"
    reply = await nc.request(subject, payload, timeout=wait, headers=headers)
    return json.loads(reply.data)


def new_batch_id() -> str:
    """Stored with every message of the batch, and parsed by every reader: 64 random bits are
    unique enough among the few batches in flight at once."""
    return os.urandom(8).hex()


def first_sequence(ack: dict[str, object], size: int) -> int:
    """The stream sequence of a stored batch's first message (the PubAck names the last)."""
    return int(ack["seq"]) - int(ack.get("count", size)) + 1  # type: ignore[call-overload]


def hpub_frame(subject: str, payload: bytes, headers: dict[str, str]) -> bytes:
    """The protocol frame nats-py's publish sends for these headers, without a reply subject."""
    block = "".join(["NATS/1.0\r\n", *[f"{key}: {value}\r\n" for key, value in headers.items()], "\r\n"]).encode()
    return b"".join([f"HPUB {subject}  {len(block)} {len(block) + len(payload)}\r\n".encode(), block, payload, b"\r\n"])


async def publish_unchecked(nc: NATS, messages: list[Message]) -> None:
    """nc.publish of each message, without its checks of each header (a regex and a translation
    per header: 7 of the ~10 µs a batch message cost the writer, measured with py-spy), and in one
    write. Our headers are constant names with values that cannot hold a line break (ids,
    numbers, the subjects of validated child references, type tags). Anything out of the ordinary
    (not connected, draining, too large) goes through nc.publish, which buffers or raises as it
    should."""
    if not messages:
        return  # a batch of one: its only message is the commit, sent as a request
    if not nc.is_connected or nc.is_draining_pubs or any(len(m[1]) > nc.max_payload for m in messages):
        for subject, payload, headers in messages:
            await nc.publish(subject, payload, headers=headers)
        return
    nc.stats["out_msgs"] += len(messages)
    nc.stats["out_bytes"] += sum(len(m[1]) for m in messages)
    await nc._send_command(b"".join([hpub_frame(*message) for message in messages]))
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
