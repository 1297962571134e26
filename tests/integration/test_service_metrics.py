"""A sector service on a real server serves its metrics beside /healthz, and they move with the
work it does: events in and out by route and type, handler latency, dead letters by reason code.
No label names a child."""

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from refbus.contracts import subjects
from refbus.contracts.events import ReferralAccepted
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.policy import Step
from refbus.services.runtime import metrics
from refbus.services.runtime.embedded import free_port
from tests.factories import record, request
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = (await reader.read()).decode()
    writer.close()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and "text/plain" in head
    assert not metrics.CHILD_LIKE.search(body)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_service_counts_its_work_on_metrics(
    eventlog: JetStreamEventStore, provisioned: str, child: str
) -> None:
    port = free_port()
    async with running(provisioned, {Sector.HEALTH: ScriptedPolicy([Step(ReferralAccepted)])}, health_port=port):
        before = await scrape(port)
        referral = request(child, Sector.SOCIAL, Sector.HEALTH)
        await record(eventlog, referral)

        async def accepted() -> bool:
            return any(isinstance(e, ReferralAccepted) for e in await referral_events(eventlog, child,
                                                                                       referral.referral_id))

        await wait_for(accepted)
        # Bytes that are no event, on the health inbox: set aside as undecodable.
        await eventlog.js.publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"not json")

        async def counted() -> bool:
            after = await scrape(port)
            return value(after, "refbus_dead_letters_total", sector="health", reason="undecodable") > value(
                before, "refbus_dead_letters_total", sector="health", reason="undecodable"
            )

        await wait_for(counted)
        after = await scrape(port)
    route_in = {"from_sector": "social", "to_sector": "health", "type": "referral.requested"}
    assert value(after, "refbus_events_in_total", **route_in) >= value(before, "refbus_events_in_total", **route_in) + 1
    for kind in ("referral.received", "referral.accepted"):
        route_out = {"from_sector": "health", "to_sector": "social", "type": kind}
        assert value(after, "refbus_events_out_total", **route_out) >= value(
            before, "refbus_events_out_total", **route_out
        ) + 1
    latency = {"sector": "health", "type": "referral.requested"}
    assert value(after, "refbus_handler_seconds_count", **latency) > value(
        before, "refbus_handler_seconds_count", **latency
    )
    assert ("refbus_inbox_pending", (("sector", "health"),)) in after
