"""Issue 17: the gateway's inputs fuzzed against a real gateway on a real nats-server (the sector
service with its gateway, as `refbus up` runs it, writing to the JetStream log).

- HTTP: Schemathesis from the committed OpenAPI file, every operation but the event stream (it never
  ends; tests/gateway/test_event_stream.py reads it), positive and negative bodies: no 5xx, every
  answer as the document says (status, content type, body schema).
- NATS request/reply: bodies generated from the same command schemas (valid and not), and bytes that
  are not JSON, sent to refbus.cmd.social.<kind> (and to kinds that do not exist): always an answer,
  a typed Refusal (never a 5xx) or an Applied whose event the log holds; nothing stored on a refusal;
  the gateway still applies a valid command afterwards.

The gateway runs in a thread of its own with its own event loop: Schemathesis calls it synchronously.
"""

import asyncio
import contextlib
import re
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbus.contracts import commands as c
from refbus.contracts import documents, subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.gateway.external import ExternalSector
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import free_port
from tests import fuzzcount
from tests.factories import new_child, new_worker
from tests.gateway.systems import TOKENS, gateway_config, gateways

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.integration

T = TypeVar("T")
SECTOR = Sector.SOCIAL
CHILD = re.compile(r"^c[0-9a-f]{16}$")
# Deliveries to a registered webhook go here, a closed local port: a generated URL may name any host.
LOCAL_SINK = f"http://127.0.0.1:{free_port()}/hook"


class GatewayThread:
    """Social's sector service and gateway (HTTP and NATS), and a client connection, on a loop of their own."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.port = free_port()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        config = gateway_config(self.port, None, SECTOR)
        await self.stack.enter_async_context(gateways(self.url, {SECTOR: ExternalSector(SECTOR)}, {SECTOR: config},
                                                      self.tmp))
        self.nc = await connect(self.url, "fuzzer")
        self.store = JetStreamEventStore(self.nc)

    async def _stop(self) -> None:
        await self.nc.drain()
        await self.stack.aclose()

    def __enter__(self) -> "GatewayThread":
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def gateway(provisioned: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with GatewayThread(provisioned, tmp_path_factory.mktemp("fuzzed-gateway")) as running:
        yield running


SCHEMA = schemathesis.openapi.from_path(documents.SCHEMA_DIR / "openapi.json").exclude(operation_id="events_stream")


@SCHEMA.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_http_operation_keeps_its_contract_on_a_real_log(case: Any, gateway: GatewayThread) -> None:
    operation = case.operation.definition.raw.get("operationId")
    if operation == "events" and isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = 0  # a long-poll may wait 30 s by the contract: the wait is not what is fuzzed
    if operation == "register_webhook" and isinstance(case.body, dict) and "url" in case.body:
        case.body["url"] = LOCAL_SINK  # the URL's rules: tests/gateway/test_openapi_contract.py
    response = case.call_and_validate(base_url=gateway.base_url,
                                      headers={"Authorization": f"Bearer {TOKENS[SECTOR]}"})
    fuzzcount.ran("gateway: HTTP (Schemathesis)", f"{response.status_code // 100}xx")


# -- NATS request/reply -----------------------------------------------------------------------------


def _bodies(kind: str) -> st.SearchStrategy[Any]:
    operation = SCHEMA[f"/v1/{{sector}}/commands/{kind}"]["POST"]
    return st.one_of(
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    ).map(lambda case: case.body)


requests = st.one_of(
    st.sampled_from(sorted(c.COMMANDS)).flatmap(lambda kind: st.tuples(st.just(kind), _bodies(kind))),
    st.tuples(st.sampled_from(sorted(c.COMMANDS)), st.binary(max_size=512)),
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=20).filter(lambda k: k not in c.COMMANDS),
              st.binary(max_size=64)),
)


async def _ask(gateway: GatewayThread, kind: str, payload: bytes) -> tuple[dict[str, Any], int | None, int | None]:
    """The gateway's answer, and the child's event count before and after (None: no child named)."""
    child = _child_of(payload)
    before = await gateway.store.event_count(child) if child else None
    reply = await gateway.nc.request(subjects.command_subject(SECTOR, kind), payload, timeout=10)
    after = await gateway.store.event_count(child) if child else None
    return msgspec.json.decode(reply.data), before, after


def _child_of(payload: bytes) -> str | None:
    with contextlib.suppress(Exception):
        child = msgspec.json.decode(payload).get("child")
        if isinstance(child, str) and CHILD.match(child) and len(child) == 17:
            return child
    return None


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(requests)
def test_any_nats_command_is_answered_with_a_refusal_or_a_stored_event(gateway: GatewayThread, request: Any) -> None:
    kind, body = request
    payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
    answer, before, after = gateway.run(_ask(gateway, kind, payload))
    status = answer.get("status")
    assert isinstance(status, int) and status < 500, answer
    if status in (200, 201):
        applied = msgspec.convert(answer, c.Applied)
        stored = {h.seq: h.event for h in gateway.run(gateway.store.history(applied.event.child))}
        assert stored.get(applied.seq) == applied.event, "an Applied names an event the log does not hold"
        assert status == 200 or after == (before or 0) + 1
        outcome = "applied"
    else:
        refusal = msgspec.convert(answer, c.Refusal)
        assert refusal.code and refusal.detail
        assert before == after, f"a refusal ({refusal.code}) stored something"
        outcome = f"{status} {refusal.code}"
    fuzzcount.ran("gateway: NATS commands", outcome)


def test_the_gateway_still_applies_a_valid_command_after_the_fuzzing(gateway: GatewayThread) -> None:
    body = {"idempotency_key": str(uuid.uuid4()), "child": new_child(), "actor": new_worker(), "to_sector": "health",
            "dimension": "health", "service": "vaccination", "urgency": "routine",
            "legal_basis": "child_protection_duty"}
    answer, before, after = gateway.run(_ask(gateway, "refer", msgspec.json.encode(body)))
    assert answer["status"] == 201 and (before, after) == (0, 1), answer


def test_one_idempotency_key_for_two_children_is_refused_as_reused_not_as_a_conflict(gateway: GatewayThread) -> None:
    """Found by the fuzzing: the second child's command was answered 409 `conflict`, "retry with the
    same key", which could never succeed (the key makes the event id, which the log already holds)."""
    key = str(uuid.uuid4())
    answers = []
    for child in (new_child(), new_child()):
        body = {"idempotency_key": key, "child": child, "actor": new_worker(), "household": "h" + "0" * 16}
        answers.append(gateway.run(_ask(gateway, "open-case", msgspec.json.encode(body))))
    (first, *_), (second, before, after) = answers
    assert first["status"] == 201, first
    assert (second["status"], second["code"]) == (409, "idempotency_key_reused"), second
    assert before == after == 0
