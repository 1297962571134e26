"""The server's own view of the bus: streams, durable consumers, who is connected, dead letters kept.

The one place that knows nats-server's monitoring endpoint (`/jsz`, `/connz` on its http port) and
the JetStream API calls the monitor makes. The endpoint is read first (no NATS permission needed, and
it names the connected clients); when it is not known or not reachable, the same figures come from
the JetStream API over the NATS connection (stream and consumer info, which the `operator` user may
read). Counts and names only: stream names, durable consumer names, client names, sector names.
"""

import asyncio
import json
import urllib.request
from dataclasses import asdict, dataclass, field

from nats.aio.client import Client as NATS

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream

JSZ = "/jsz?accounts=true&streams=true&consumers=true&config=true"
CONNZ = "/connz?limit=1024"
SERVICE_PREFIX = "refbus-"
"Every refbus service names its NATS connection refbus-<service> (services/runtime/app.py)."
SERVICES = (*(s.value for s in Sector), "pager", "deadlines")


@dataclass
class ConsumerState:
    stream: str
    name: str
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0
    num_waiting: int = 0


@dataclass
class StreamState:
    name: str
    messages: int = 0
    bytes: int = 0
    max_bytes: int = -1
    max_msgs: int = -1
    last_seq: int = 0


@dataclass
class ServerState:
    source: str = "unavailable"
    "jsz (the monitoring endpoint), api (JetStream API over NATS) or unavailable."
    storage: int = 0
    storage_limit: int = 0
    streams: dict[str, StreamState] = field(default_factory=dict)
    consumers: dict[str, ConsumerState] = field(default_factory=dict)
    "Durable consumers only, by name (ordered consumers come and go under random names)."
    foreign_deliveries: list[str] = field(default_factory=list)
    """`stream/consumer` of every consumer that pushes to a subject outside the reply inboxes: refbus
    uses pull consumers and inbox-bound ordered ones only, and the server does not hold a push
    consumer's deliver subject to its creator's publish permissions (nats-server#8274), so one can
    write into another stream. An alarm, not a flow (docs/decisions/0024-auditor-identity.md)."""
    connections: dict[str, int] | None = None
    "refbus services connected, by service (from /connz); None when the endpoint is not read."
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def foreign_delivery(deliver_subject: object) -> bool:
    """A push consumer's deliver subject that is not a reply inbox (`_INBOX.` ...): where no refbus
    component delivers."""
    return bool(deliver_subject) and not str(deliver_subject).startswith("_INBOX.")


def _get_json(url: str, timeout: float) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback or an operator-given URL
        return json.loads(response.read())


def _from_jsz(jsz: dict[str, object]) -> ServerState:
    state = ServerState(source="jsz")
    state.storage = int(jsz.get("storage", 0))  # type: ignore[call-overload]
    state.storage_limit = int((jsz.get("config") or {}).get("max_storage", 0))  # type: ignore[union-attr]
    for account in jsz.get("account_details") or []:  # type: ignore[union-attr]
        for stream in account.get("stream_detail") or []:
            config, st = stream.get("config") or {}, stream.get("state") or {}
            name = stream["name"]
            state.streams[name] = StreamState(
                name, int(st.get("messages", 0)), int(st.get("bytes", 0)),
                int(config.get("max_bytes", -1)), int(config.get("max_msgs", -1)), int(st.get("last_seq", 0)),
            )
            for consumer in stream.get("consumer_detail") or []:
                if foreign_delivery((consumer.get("config") or {}).get("deliver_subject")):
                    state.foreign_deliveries.append(f"{name}/{consumer['name']}")
                if not (consumer.get("config") or {}).get("durable_name"):
                    continue
                state.consumers[consumer["name"]] = ConsumerState(
                    name, consumer["name"], int(consumer.get("num_pending", 0)),
                    int(consumer.get("num_ack_pending", 0)), int(consumer.get("num_redelivered", 0)),
                    int(consumer.get("num_waiting", 0)),
                )
    return state


def _connections(connz: dict[str, object]) -> dict[str, int]:
    found = dict.fromkeys(SERVICES, 0)
    for connection in connz.get("connections") or []:  # type: ignore[union-attr]
        name = str(connection.get("name") or "")
        if name.startswith(SERVICE_PREFIX) and name[len(SERVICE_PREFIX):] in found:
            found[name[len(SERVICE_PREFIX):]] += 1
    return found


async def from_monitoring(url: str, wait: float = 2.0) -> ServerState:
    """The state from the monitoring endpoint at `url` (http://host:port); raises OSError if unreachable."""
    base = url.rstrip("/")
    jsz, connz = await asyncio.gather(
        asyncio.to_thread(_get_json, base + JSZ, wait), asyncio.to_thread(_get_json, base + CONNZ, wait)
    )
    state = _from_jsz(jsz)
    state.connections = _connections(connz)
    return state


async def from_api(nc: NATS, wait: float = 2.0) -> ServerState:
    """The same figures from the JetStream API (no client names: `connections` stays None)."""
    js = nc.jetstream(timeout=wait)
    state = ServerState(source="api")
    try:
        account = await js.account_info()
        state.storage, state.storage_limit = account.storage, account.limits.max_storage
    except Exception:  # not every user may ask ($JS.API.INFO): the rest still says enough
        pass
    for info in await js.streams_info():
        name = info.config.name
        state.streams[name] = StreamState(
            name, info.state.messages, info.state.bytes, info.config.max_bytes or -1,
            info.config.max_msgs or -1, info.state.last_seq,
        )
    for name in state.streams:
        for consumer in await js.consumers_info(name):
            if foreign_delivery(consumer.config.deliver_subject):
                state.foreign_deliveries.append(f"{name}/{consumer.name}")
            if name == subjects.STREAM and consumer.config.durable_name:
                state.consumers[consumer.name] = ConsumerState(
                    name, consumer.name, consumer.num_pending or 0, consumer.num_ack_pending or 0,
                    consumer.num_redelivered or 0, consumer.num_waiting or 0,
                )
    return state


async def read(nc: NATS | None, monitor_url: str | None, wait: float = 2.0) -> ServerState:
    """From the monitoring endpoint if given and reachable, else the API, else `unavailable`."""
    errors: list[str] = []
    if monitor_url:
        try:
            return await from_monitoring(monitor_url, wait)
        except (OSError, ValueError) as exc:
            errors.append(f"monitoring endpoint: {type(exc).__name__}")
    if nc is not None and nc.is_connected:
        try:
            return await from_api(nc, wait)
        except Exception as exc:
            errors.append(f"jetstream api: {type(exc).__name__}")
    return ServerState(error="; ".join(errors) or "no source")


def dead_letter_sector(subject: str) -> str | None:
    """The sector a message of REFBUS_DEAD_LETTERS is filed under: `refbus.dead.<sector>`, or the
    max-deliveries advisory of consumer `inbox-<sector>`."""
    prefix = subjects.dead_letter_subject("")
    if subject.startswith(prefix):
        name = subject[len(prefix):]
    else:
        name = subject.rpartition(".")[2].removeprefix("inbox-")
    return name if name in SERVICES else None


async def dead_letters(nc: NATS, wait: float = 2.0) -> dict[str, int]:
    """Dead letters kept, by sector (the subject index of REFBUS_DEAD_LETTERS; no message read)."""
    counts = await jetstream.subject_counts(nc, subjects.DEAD_LETTER_STREAM, ">", wait)
    found = {s.value: 0 for s in Sector}
    for subject, count in counts.items():
        sector = dead_letter_sector(subject)
        if sector is not None:
            found[sector] = found.get(sector, 0) + count
    return found
