"""Contract tests generated from the committed OpenAPI file (Schemathesis): over real HTTP (uvicorn),
no answer is a 5xx and none breaks the documented schema (status codes, content type, bodies).
The store behind is the in-memory one: the contract is the gateway's, not the log's. Bounded
examples per operation: well under a minute."""

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator

import hypothesis
import pytest
import uvicorn

from refbus.contracts import documents
from refbus.contracts.commands import Delivered, Feed
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.gateway.core import Gateway
from refbus.services.gateway.http import gateway_app
from refbus.services.gateway.registration import MemoryRecords, WebhookControl

schemathesis = pytest.importorskip("schemathesis")

TOKENS = {s: f"contract-token-{s.value}" for s in Sector}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class NotedDelivery:
    url: str
    secret: str

    @classmethod
    async def start(cls, url: str, secret: str) -> "NotedDelivery":
        return cls(url, secret)

    async def stop(self, pause: bool = False) -> None:
        return None


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    store = InMemoryEventStore()

    async def feed(sector: Sector, after: int, limit: int, wait: float) -> Feed:
        found = [Delivered(seq=e.seq, event=e.event) for e in store.log if e.seq > after and e.event is not None
                 and e.event.to_sector == sector][:limit]
        return Feed(events=found, next_after=found[-1].seq if found else after)

    # Registrations in memory, each "delivery" only noted: the contract is the HTTP one
    # (tests/gateway/test_webhook_registration.py delivers for real).
    webhooks = {s: WebhookControl(s, MemoryRecords(), NotedDelivery.start, default_url=None, secret="whsec_AAAA")
                for s in Sector}
    app = gateway_app({s: Gateway(s, store, b"k" * 32) for s in Sector}, TOKENS, feed, webhooks=webhooks)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


# The event stream never ends by itself: tests/gateway/test_event_stream.py reads it as a client does.
schema = schemathesis.openapi.from_path(documents.SCHEMA_DIR / "openapi.json").exclude(operation_id="events_stream")


@schema.parametrize()
@hypothesis.settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_the_gateway_keeps_its_openapi_contract(case: "schemathesis.Case", base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {TOKENS[Sector.SOCIAL]}"})
