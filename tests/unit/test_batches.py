"""The batch writer's own publish frame is byte for byte the one nats-py's publish sends, with the
headers an append carries."""

import asyncio

from nats.aio.client import Client

from refbus.services.eventstore.jetstream import hpub_frame
from refbus.services.eventstore.writer import headers_for
from tests.factories import new_child, request


class _Capture:
    """Just what Client._send_publish touches."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.stats = {"out_msgs": 0, "out_bytes": 0}
        self._flush_queue = None

    async def _send_command(self, command: bytes, priority: bool = False) -> None:
        self.sent.append(command)


def test_the_frame_equals_nats_py_s() -> None:
    headers = {
        "Nats-Msg-Id": "0c6f1f7e-3c1a-4b8e-9a57-1d2f0e6b9c41",
        "Refbus-Event-Type": "referral.received",
        "Nats-Expected-Last-Subject-Sequence": "123456",
        "Nats-Expected-Last-Subject-Sequence-Subject": "refbus.ev.c0123456789abcdef.>",
        "Nats-Batch-Id": "9f0e6b9c41d2f0e6b9c419f0e6b9c41d",
        "Nats-Batch-Sequence": "17",
    }
    subject, payload = "refbus.ev.c0123456789abcdef.social.health", b'{"type":"referral.received"}'
    capture = _Capture()
    asyncio.run(Client._send_publish(capture, subject, "", payload, len(payload), headers))  # type: ignore[arg-type]
    assert capture.sent == [hpub_frame(subject, payload, headers)]


def test_the_append_headers_name_the_event_and_its_chain() -> None:
    event = request(new_child())
    headers = headers_for(event, 41)
    assert headers["Nats-Msg-Id"] == str(event.event_id)
    assert headers["Refbus-Correlation-Id"] == str(event.correlation_id)
    assert headers["Refbus-Event-Type"] == "referral.requested"
    assert headers["Nats-Expected-Last-Subject-Sequence"] == "41"
    assert headers["Nats-Expected-Last-Subject-Sequence-Subject"] == f"refbus.ev.{event.child}.>"
    assert "Nats-Expected-Last-Subject-Sequence" not in headers_for(event, None)


def test_headers_are_parsed_as_nats_py_parses_them() -> None:
    """services/eventstore/jetstream.py replaces nats-py's header parser with a faster one: same dict."""
    from refbus.services.eventstore.jetstream import nats_py_parse_header_lines, parse_header_lines

    for raw in [
        b"Nats-Msg-Id: 1\r\nRefbus-Sig: 2/5 abc def\r\n\r\n",
        b"A:b\r\nC:\td \r\nbad name: x\r\nno colon\r\n  Spaced : v\r\nK: v:w:x\r\n\r\n",
        "K: caf\u00e9\r\nN\u00e9: x\r\n".encode(),
        b"",
    ]:
        assert parse_header_lines(raw) == nats_py_parse_header_lines(raw), raw


def test_the_delivery_read_off_an_ack_subject_is_what_nats_py_reads() -> None:
    """`jetstream.delivery` (one split) against nats-py's Msg.metadata, both ack-subject layouts."""
    from nats.aio.msg import Msg as NatsMsg

    from refbus.services.eventstore import jetstream as js

    for reply in (
        "$JS.ACK.REFBUS.inbox-health.3.1234.77.1764312345000000000.5",
        "$JS.ACK.hub.ACCHASH.REFBUS.inbox-health.3.1234.77.1764312345000000000.5.rand0m",
    ):
        metadata = NatsMsg(None, subject="s", reply=reply).metadata  # type: ignore[arg-type]
        assert js.delivery(reply) == (metadata.sequence.stream, metadata.num_delivered)
