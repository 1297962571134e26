"""A consumer that pushes outside the reply inboxes is an alarm for operators. nats-server does not
hold a push consumer's deliver subject to its creator's publish permissions (nats-server#8274): a
sector that may create its inbox consumer can make it deliver into another stream. refbus uses pull
consumers (and inbox-bound ordered ones) only, so the operator's view names any other, the exporter
counts it, and an alert rule fires on it (deploy/monitoring/alerts.yml)."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.monitor import exporter, server_state
from refbus.services.runtime import metrics
from refbus.services.runtime.embedded import EmbeddedNats
from tests.integration.secured import connect_as, secured_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured_server(tmp_path, monkeypatch)


async def test_the_operator_sees_a_consumer_that_pushes_into_another_stream(server: EmbeddedNats) -> None:
    admin = await connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    operator = await connect_as(server, "operator")
    monitor_url = f"http://127.0.0.1:{server.monitor_port}"
    clean = await server_state.from_api(operator)
    assert clean.foreign_deliveries == [] and (await server_state.from_monitoring(monitor_url)).foreign_deliveries == []

    # Health may create its inbox consumer (the filter pinned by the subject); it makes it push.
    health = await connect_as(server, Sector.HEALTH.value)
    filter_subject = subjects.inbox_filter(Sector.HEALTH)
    body = {"stream_name": subjects.STREAM, "action": "create", "config": {
        "name": "inbox-health", "durable_name": "inbox-health", "filter_subject": filter_subject,
        "deliver_subject": subjects.SEAL_SUBJECT, "ack_policy": "explicit", "deliver_policy": "all"}}
    reply = await health.request(f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}.inbox-health.{filter_subject}",
                                 json.dumps(body).encode(), timeout=2)
    assert "error" not in json.loads(reply.data), reply.data  # the server takes it: the hole is real

    for state in (await server_state.from_api(operator), await server_state.from_monitoring(monitor_url)):
        assert state.foreign_deliveries == [f"{subjects.STREAM}/inbox-health"], state.source
    exporter.publish(await server_state.from_api(operator), None)
    assert metrics.FOREIGN_DELIVERIES._value.get() == 1  # type: ignore[attr-defined]
    exporter.publish(clean, None)
    await asyncio.gather(health.close(), operator.close(), admin.close())
