"""The bus on a three-node NATS cluster (deploy/cluster/), streams at three replicas, over TLS for
clients and routes (`refbus certs`' files): kill -9 the stream leader under load; nothing acknowledged
is lost and the flow continues. And the routes are TLS, verified both ways, or there is no cluster."""

import asyncio
import json
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.policy import SimulatedSector
from refbus.services.runtime.bus import BusUnavailable, connect
from refbus.services.runtime.embedded import DEPLOY_DIR, EmbeddedNats
from refbus.services.runtime.tls import ServerTls, client_context, make_certs, upgraded
from tests.factories import new_child, request
from tests.faults.checks import conclude
from tests.faults.load import SteadyLoad, now
from tests.faults.test_server_faults import LOAD_SECONDS
from tests.services import running, wait_for

INDEX_CATCH_UP_S = 60.0

pytestmark = pytest.mark.faults
NODES = {f"n{i}": (4230 + i, 8230 + i) for i in (1, 2, 3)}


def meta_leader(monitor_port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/jsz", timeout=1) as resp:
            return (json.load(resp).get("meta_cluster") or {}).get("leader")
    except OSError:
        return None


@pytest.fixture
def certs(tmp_path: Path) -> ServerTls:
    made = make_certs(tmp_path / "tls")
    found = ServerTls.in_folder(made.folder)
    assert found is not None
    return found


@pytest.fixture
def cluster(tmp_path: Path, certs: ServerTls) -> Iterator[dict[str, EmbeddedNats]]:
    # The node configs read their certificate, key and CA from the environment (REFBUS_TLS_*).
    nodes = {
        name: EmbeddedNats(tmp_path / name, port=port, monitor_port=monitor,
                           config=DEPLOY_DIR / "cluster" / f"node-{name[1]}.conf", env=certs.env())
        for name, (port, monitor) in NODES.items()
    }
    for node in nodes.values():  # each waits only for its own JetStream, not for quorum
        node.start(timeout=30)
    yield nodes
    for node in nodes.values():
        node.stop()


async def test_stream_leader_killed_under_load(
    cluster: dict[str, EmbeddedNats], certs: ServerTls, fault_results: list
) -> None:
    url = ",".join(node.url for node in cluster.values())

    async def elected() -> bool:
        return meta_leader(NODES["n1"][1]) is not None

    await wait_for(elected, within=30)
    nc = await connect(url, "cluster-test", tls=client_context(certs.ca_file))
    await streams.provision(nc.jetstream(), replicas=3)
    eventlog = JetStreamEventStore(nc, timeout=2.0)
    info = await eventlog.js.stream_info(subjects.STREAM)
    assert info.config.num_replicas == 3

    policies = {s: SimulatedSector(s, speed=8) for s in Sector}
    async with running(url, policies, ack_wait=2.0, tls_ca=certs.ca_file):
        load = SteadyLoad(eventlog).start()
        await asyncio.sleep(LOAD_SECONDS)
        leader = (await eventlog.js.stream_info(subjects.STREAM)).cluster.leader
        assert leader in cluster
        cluster[leader].kill()
        killed = now()

        async def new_leader() -> bool:
            try:
                current = (await eventlog.js.stream_info(subjects.STREAM)).cluster.leader
            except Exception:
                return False
            return current is not None and current != leader

        await wait_for(new_leader, within=30)
        await asyncio.sleep(LOAD_SECONDS)
        result = await conclude(eventlog, load, "cluster R3: stream leader kill -9", killed, f"leader was {leader}")
    # The child index stops copying for a while after the log's leader fails over (reads fall back
    # to the log meanwhile); it must catch up with everything by itself.
    last_seq = (await eventlog.js.stream_info(subjects.STREAM)).state.last_seq
    assert await eventlog.index_missing(last_seq, wait=INDEX_CATCH_UP_S) == 0
    caught_up = (now() - killed).total_seconds()
    fault_results.append(replace(result, note=f"{result.note}, index complete {caught_up:.0f} s after the kill"))
    await nc.close()


def _monitor(port: int, path: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def _first_info(port: int) -> dict:  # type: ignore[type-arg]
    """The INFO a client port sends before any TLS: what it asks of whoever connects."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        line = conn.makefile("rb").readline()
    assert line.startswith(b"INFO ")
    return json.loads(line[5:])  # type: ignore[no-any-return]


def _route_info(port: int, certs: ServerTls, *, with_certificate: bool) -> dict:  # type: ignore[type-arg]
    """A route port's INFO, read over TLS as a peer would (with the node certificate) or as a stranger."""
    context = client_context(certs.ca_file)
    if with_certificate:
        context.load_cert_chain(certs.cert_file, certs.key_file)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        line = conn.makefile("rb").readline()
    assert line.startswith(b"INFO "), line
    return json.loads(line[5:])  # type: ignore[no-any-return]


def _routed_names(monitor_port: int) -> set[str]:
    return {route["remote_name"] for route in _monitor(monitor_port, "routez")["routes"]}


async def test_the_cluster_runs_over_tls_routes_and_clients(
    cluster: dict[str, EmbeddedNats], certs: ServerTls, tmp_path: Path
) -> None:
    async def elected() -> bool:
        return meta_leader(NODES["n1"][1]) is not None

    await wait_for(elected, within=30)
    for name, (port, monitor) in NODES.items():
        route_port = port + 2000
        # Routes: TLS from the first byte, and only a peer with a certificate of the CA gets an answer.
        info = _route_info(route_port, certs, with_certificate=True)
        assert info["tls_required"] and info["tls_verify"], name
        with pytest.raises(ssl.SSLError, match=r"(?i)certificate"):
            _route_info(route_port, certs, with_certificate=False)
        routes = _monitor(monitor, "varz")["cluster"]
        assert routes["tls_required"] and routes["tls_verify"], name
        assert _routed_names(monitor) == set(NODES) - {name}
        assert _first_info(port)["tls_required"], name  # clients: TLS, with no certificate of their own

    # A client trusting the CA writes to a stream at three replicas and reads it back, over TLS.
    url = ",".join(node.url for node in cluster.values())
    nc = await connect(url, "cluster-tls", tls=client_context(certs.ca_file))
    assert upgraded(nc)
    await streams.provision(nc.jetstream(), replicas=3)
    eventlog = JetStreamEventStore(nc, timeout=5.0)
    assert (await eventlog.js.stream_info(subjects.STREAM)).config.num_replicas == 3
    child = new_child()
    req = request(child)
    done = await eventlog.transact(child, lambda _state: [req])
    assert len(done.stored) == 1
    assert [h.event for h in await eventlog.history(child)] == [req]
    await nc.close()

    # Plain text gets nothing from a route port: it waits for a TLS handshake, then hangs up.
    with socket.create_connection(("127.0.0.1", NODES["n1"][0] + 2000), timeout=5) as plain:
        assert plain.recv(100) == b""
    # A client that does not trust the CA, and one that speaks plain text, are refused.
    with pytest.raises(BusUnavailable, match="not signed by the CA"):
        await connect(cluster["n2"].url, "stranger", reconnect=False)
    with socket.create_connection(("127.0.0.1", NODES["n3"][0]), timeout=2) as plain:
        reader = plain.makefile("rb")
        reader.readline()  # INFO
        plain.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        assert b"PONG" not in reader.read()  # it hangs up: those bytes were no TLS handshake

    # A fourth node with a certificate of another CA cannot route to them.
    other = make_certs(tmp_path / "other-ca")
    outsider_tls = ServerTls.in_folder(other.folder)
    assert outsider_tls is not None
    config = tmp_path / "outsider.conf"
    config.write_text("cluster {\n  name: refbus\n  listen: 127.0.0.1:6239\n  routes: [nats-route://127.0.0.1:6231]\n"
                      "  tls { cert_file: $REFBUS_TLS_CERT, key_file: $REFBUS_TLS_KEY, ca_file: $REFBUS_TLS_CA }\n}\n")
    outsider = EmbeddedNats(tmp_path / "outsider", config=config, env=outsider_tls.env(), server_name="n4").start()
    try:
        await asyncio.sleep(3)  # several route attempts (each a second apart at first)
        assert "n4" not in _routed_names(NODES["n1"][1])
        assert _monitor(outsider.monitor_port, "routez")["num_routes"] == 0
        log_text = (tmp_path / "outsider" / "nats-server.log").read_text()
        assert "certificate" in log_text.lower() or "tls" in log_text.lower()
    finally:
        outsider.stop()
