"""Issue 12, items 1 and 2, on a real server with deploy/nats-server.conf (the embedded default): a sector cannot
repoint its inbox consumer at another sector's events, no user receives replies or deliveries meant
for another, the operator reads no payloads; and every allow in deploy/nats-permissions.conf has a
reason in PERMISSIONS below (the permission matrix)."""

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream import ApiError, create_consumer
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.reads.client import ViewReader
from refbus.services.reads.service import ReadService
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.sector.service import inbox_consumer
from tests.factories import new_child, record, request
from tests.integration import secured
from tests.integration.secured import PERMISSIONS_CONFIG, connect_as
from tests.integration.test_auditor_secured import AUDITOR_PERMISSIONS
from tests.integration.test_sealer_secured import SEALER_PERMISSIONS

pytestmark = pytest.mark.integration
NO_ANSWER = (NatsTimeout, NoRespondersError, asyncio.TimeoutError)
SECTORS = [s for s in Sector]
# Filter mismatch between the create subject and the config (10131); several filters (10137).
FILTER_MISMATCH, MULTIPLE_FILTERS = 10131, 10137


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


async def provisioned(server: EmbeddedNats) -> NATS:
    admin = await connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    return admin


def violations(errors: list[Exception], kind: str) -> list[str]:
    return [str(e) for e in errors if f"permissions violation for {kind}" in str(e).lower()]


async def api(nc: NATS, subject: str, body: dict[str, object]) -> dict[str, object] | None:
    """The server's answer to a JetStream API request; None if it did not answer (not allowed)."""
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=0.5)
    except NO_ANSWER:
        return None
    return json.loads(msg.data)


def consumer_body(name: str, filter_subject: str, action: str | None = None, **config: object) -> dict[str, object]:
    cfg = {"durable_name": name, "ack_policy": "explicit", "deliver_policy": "all", "filter_subject": filter_subject}
    body: dict[str, object] = {"stream_name": subjects.STREAM, "config": {**cfg, **config}}
    if action:
        body["action"] = action
    return body


# -- item 1: a sector repointing its own inbox consumer ----------------------------------------------


@pytest.mark.parametrize("sector", SECTORS, ids=[s.value for s in SECTORS])
async def test_a_sector_cannot_repoint_its_inbox_at_another_sectors_events(
    secured_server: EmbeddedNats, sector: Sector
) -> None:
    other = SECTORS[(SECTORS.index(sector) + 1) % len(SECTORS)]
    referrer = SECTORS[(SECTORS.index(sector) + 2) % len(SECTORS)]
    admin = await provisioned(secured_server)
    # For the other sector: must never reach `sector`.
    await admin.jetstream().publish(subjects.event_subject(new_child(), referrer, other), b"for another sector")
    errors: list[Exception] = []
    nc = await connect_as(secured_server, sector.value, errors)
    name = f"inbox-{sector.value}"
    mine, theirs = subjects.inbox_filter(sector), subjects.inbox_filter(other)
    api_ = "$JS.API.CONSUMER"
    prefix = f"{api_}.CREATE.{subjects.STREAM}.{name}"
    attempts = {
        "filterless create": (prefix, consumer_body(name, theirs)),
        "filterless update": (prefix, consumer_body(name, theirs, "update")),
        "create on their filter": (f"{prefix}.{theirs}", consumer_body(name, theirs)),
        "legacy durable create": (f"{api_}.DURABLE.CREATE.{subjects.STREAM}.{name}", consumer_body(name, theirs)),
        "create on my filter, their filter in the config": (f"{prefix}.{mine}", consumer_body(name, theirs)),
        "update on my filter, their filter in the config": (f"{prefix}.{mine}",
                                                            consumer_body(name, theirs, "update")),
        "my filter, theirs among several": (f"{prefix}.{mine}",
                                            consumer_body(name, "", filter_subjects=[mine, theirs])),
        "consumer of another name": (f"{api_}.CREATE.{subjects.STREAM}.mine.{theirs}", consumer_body("mine", theirs)),
    }

    async def try_all() -> dict[str, dict[str, object] | None]:
        answers = await asyncio.gather(*(api(nc, s, b) for s, b in attempts.values()))
        return dict(zip(attempts, answers, strict=True))

    async def only_my_events_delivered() -> None:
        info = await nc.jetstream().consumer_info(subjects.STREAM, name)
        assert info.config.filter_subject == mine
        sub = await nc.jetstream().pull_subscribe_bind(name, stream=subjects.STREAM)
        with pytest.raises((NatsTimeout, asyncio.TimeoutError)):  # nats-py raises either, by timing
            got = await sub.fetch(10, timeout=0.5)
            pytest.fail(f"{sector.value} was delivered {[m.subject for m in got]}")
        await sub.unsubscribe()

    def check(answers: dict[str, dict[str, object] | None]) -> None:
        for what, answer in answers.items():
            error = answer.get("error") if answer is not None else None
            if what.startswith("create on my filter") or what.startswith("update on my filter"):
                assert isinstance(error, dict) and error["err_code"] == FILTER_MISMATCH, (what, answer)
            elif what.startswith("my filter, theirs among"):
                assert isinstance(error, dict) and error["err_code"] == MULTIPLE_FILTERS, (what, answer)
            else:
                assert answer is None, (what, answer)  # not allowed: the server drops it unanswered

    check(await try_all())  # before the inbox exists
    await create_consumer(nc, subjects.STREAM, inbox_consumer(sector))  # the one allowed form
    await only_my_events_delivered()
    check(await try_all())  # and once it exists (updates)
    await only_my_events_delivered()
    assert violations(errors, "publish")
    await nc.close()
    await admin.close()


async def test_the_pager_creates_index_consumers_only_on_the_whole_index(secured_server: EmbeddedNats) -> None:
    admin = await provisioned(secured_server)
    pager = await connect_as(secured_server, "pager")
    stream = subjects.CHILD_INDEX_STREAM
    every = subjects.CHILD_INDEX_SUBJECTS
    config = {"name": "p1", "ack_policy": "none", "deliver_policy": "all", "filter_subject": every}
    body = {"stream_name": stream, "config": config}
    # The filterless and legacy forms, and any other stream, are not allowed.
    for subject, b in (
        (f"$JS.API.CONSUMER.CREATE.{stream}", body),
        (f"$JS.API.CONSUMER.CREATE.{stream}.p1", body),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.p1", body),
        (f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}.p1.refbus.ev.>", {**body, "stream_name": subjects.STREAM}),
    ):
        assert await api(pager, subject, b) is None, subject
    # The filtered form: the server holds the config to the filter in the subject, create or update.
    for action in ("create", "update"):
        other = {**body, "action": action, "config": {**config, "filter_subject": "refbus.child.x"}}
        answer = await api(pager, f"$JS.API.CONSUMER.CREATE.{stream}.p1.{every}", other)
        assert answer is not None and answer["error"]["err_code"] == FILTER_MISMATCH  # type: ignore[index]
    # What the pager does (nats-py's add_consumer with a name and a filter takes the filtered form).
    info = await pager.jetstream().add_consumer(
        stream, ConsumerConfig(name="p1", filter_subject=every, ack_policy=AckPolicy.NONE,
                               deliver_policy=DeliverPolicy.ALL, mem_storage=True))
    assert info.config.filter_subject == every
    assert await pager.jetstream().delete_consumer(stream, "p1")
    await pager.close()
    await admin.close()


async def test_the_filtered_create_is_the_form_the_inbox_needs(secured_server: EmbeddedNats) -> None:
    """nats-py 2.16's add_consumer with a durable name alone takes the legacy DURABLE.CREATE subject:
    refused, so the services must create their inbox with create_consumer (or set `name`)."""
    admin = await provisioned(secured_server)
    errors: list[Exception] = []
    health = await connect_as(secured_server, "health", errors)
    with pytest.raises(NO_ANSWER):
        await health.jetstream().add_consumer(subjects.STREAM, inbox_consumer(Sector.HEALTH), timeout=0.5)
    assert violations(errors, "publish")
    info = await create_consumer(health, subjects.STREAM, inbox_consumer(Sector.HEALTH))
    again = await create_consumer(health, subjects.STREAM, inbox_consumer(Sector.HEALTH))
    assert info.config.filter_subject == again.config.filter_subject == subjects.inbox_filter(Sector.HEALTH)
    changed = inbox_consumer(Sector.HEALTH, ack_wait=5.0)
    with pytest.raises(ApiError):  # action create: no silent update of an existing inbox
        await create_consumer(health, subjects.STREAM, changed)
    await health.close()
    await admin.close()


# -- item 2: replies and deliveries meant for another user -------------------------------------------


async def test_no_user_receives_what_was_meant_for_another(secured_server: EmbeddedNats) -> None:
    admin = await provisioned(secured_server)
    child = new_child()
    admin_log = JetStreamEventStore(admin, timeout=2.0)
    await record(admin_log, request(child, Sector.SOCIAL, Sector.HEALTH))
    others = [u for u in secured.USERS if u not in ("admin", "health")]
    errors: dict[str, list[Exception]] = {u: [] for u in others}
    overheard: dict[str, list[str]] = {u: [] for u in others}
    eavesdroppers: list[NATS] = []
    for user in others:
        nc = await connect_as(secured_server, user, errors[user])

        async def heard(msg: Msg, user: str = user) -> None:
            overheard[user].append(msg.subject)

        for tap in ("_INBOX.>", "_INBOX.health.>", ">"):
            await nc.subscribe(tap, cb=heard)
        await nc.flush()
        eavesdroppers.append(nc)

    # Health reads its inbox (a pull delivery and its ack) and the child's history (through the read
    # service, which runs as the pager and answers to health's reply prefix only).
    reads = ReadService(await connect_as(secured_server, "pager"))
    await reads.start()
    health = await connect_as(secured_server, "health")
    await create_consumer(health, subjects.STREAM, inbox_consumer(Sector.HEALTH))
    sub = await health.jetstream().pull_subscribe_bind(f"inbox-{Sector.HEALTH.value}", stream=subjects.STREAM)
    [delivery] = await sub.fetch(1, timeout=2.0)
    assert delivery.subject.startswith("refbus.ev.")
    await delivery.ack_sync()
    view = ViewReader(health, Sector.HEALTH, timeout=2.0)
    assert [h.event for h in await JetStreamEventStore(health, timeout=2.0, reader=view).history(child)]
    await asyncio.sleep(0.2)
    await reads.stop()
    await reads.nc.close()

    assert overheard == {u: [] for u in others}
    for user in others:
        assert len(violations(errors[user], "subscription")) == 3, (user, errors[user])
    for nc in [*eavesdroppers, health, admin]:
        await nc.close()


async def test_the_operator_reads_state_and_dead_letters_never_payloads(secured_server: EmbeddedNats) -> None:
    admin = await provisioned(secured_server)
    child = new_child()
    await record(JetStreamEventStore(admin, timeout=2.0), request(child, Sector.SOCIAL, Sector.HEALTH))
    await admin.jetstream().publish(subjects.dead_letter_subject(Sector.HEALTH), b'{"reason": "no payload here"}')
    errors: list[Exception] = []
    operator = await connect_as(secured_server, "operator", errors)
    heard: list[str] = []

    async def tap(msg: Msg) -> None:
        heard.append(msg.subject)

    # No core taps: advisories (the API audit carries every user's JetStream requests), dead letters
    # as published, events.
    for subject in ("$JS.EVENT.>", "refbus.dead.>", "refbus.ev.>"):
        await operator.subscribe(subject, cb=tap)
    await operator.flush()
    # No reads of a stream holding payloads.
    for subject, body in (
        (f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}.peek.refbus.ev.>", {"config": {"name": "peek"}}),
        (f"$JS.API.CONSUMER.CREATE.{subjects.CHILD_INDEX_STREAM}", {"config": {}}),
        (f"$JS.API.DIRECT.GET.{subjects.CHILD_INDEX_STREAM}", {"seq": 1}),
        (f"$JS.API.STREAM.MSG.GET.{subjects.STREAM}", {"seq": 1}),
    ):
        assert await api(operator, subject, body) is None, subject
    await admin.jetstream().get_msg(subjects.STREAM, 1, direct=False)  # another user's reads and writes
    await JetStreamEventStore(admin, timeout=2.0).history(child)
    await asyncio.sleep(0.2)
    assert heard == []
    assert len(violations(errors, "subscription")) == 3, errors

    # What the operator is for: stream state, and the dead letters through a consumer of their stream.
    assert (await operator.jetstream().stream_info(subjects.STREAM)).state.messages == 1
    sub = await operator.jetstream().subscribe(
        subjects.DEAD_LETTER_SUBJECTS, stream=subjects.DEAD_LETTER_STREAM, durable="ops",
        config=ConsumerConfig(name="ops"), manual_ack=True)
    msg = await sub.next_msg(timeout=2.0)
    assert msg.subject == subjects.dead_letter_subject(Sector.HEALTH)
    await msg.ack()
    await sub.unsubscribe()
    await operator.close()
    await admin.close()


# -- the permission matrix ---------------------------------------------------------------------------

_SECTOR = {
    ("pub", "refbus.ev.*.{s}.*"): "write events, only as itself",
    ("pub", "refbus.dead.{s}"): "set aside a message it cannot handle, in its own dead letters",
    ("pub", "$JS.API.STREAM.INFO.REFBUS"): "count a child's events (stream info with a subject filter)",
    ("pub", "refbus.read.{s}.*"): "read children's histories and its feed through the read service, only as "
        "itself: it answers with what the sector may see (no direct get on the log, index or pages; decision 0023)",
    ("pub", "$JS.API.CONSUMER.INFO.REFBUS.inbox-{s}"): "does its inbox consumer exist (ensure_consumer)",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS.inbox-{s}.refbus.ev.*.*.{s}"):
        "create its inbox consumer; the server holds the config to this filter (10131)",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS.inbox-{s}"): "pull requests on its inbox",
    ("pub", "$JS.ACK.REFBUS.inbox-{s}.>"): "ack, nak, term its inbox deliveries",
    ("pub", "$JS.API.CONSUMER.INFO.REFBUS_DEAD_LETTERS.redrive-{s}"): "does its redrive consumer exist",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS_DEAD_LETTERS.redrive-{s}.refbus.dead.{s}.redrive"):
        "create its redrive consumer, held to its own redrive requests (no payloads there)",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS_DEAD_LETTERS.redrive-{s}"): "pull redrive requests",
    ("pub", "$JS.ACK.REFBUS_DEAD_LETTERS.redrive-{s}.>"): "ack or nak a redrive request it handled",
    ("sub", "_INBOX.{s}.>"): "its own replies and pull deliveries (reply prefix _INBOX.{s})",
    # its gateway (services/gateway, issue 15)
    ("sub", "refbus.cmd.{s}.*"): "take its own system's commands (NATS request/reply, queue group gateway-{s})",
    ("pub", "_INBOX.{s}-system.>"): "answer them: replies go to its system's reply prefix only",
    ("pub", "$JS.API.CONSUMER.INFO.REFBUS.webhook-{s}"): "does its webhook consumer exist (ensure_consumer)",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS.webhook-{s}.refbus.ev.*.*.{s}"):
        "create its webhook consumer, on its inbox filter only (10131)",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS.webhook-{s}"): "pull the next delivery for its system",
    ("pub", "$JS.ACK.REFBUS.webhook-{s}.>"): "ack a delivery once its system answered 2xx",
    ("pub", "$JS.API.STREAM.INFO.KV_REFBUS_WEBHOOKS"): "open the registrations bucket (nats-py reads its config)",
    ("pub", "$KV.REFBUS_WEBHOOKS.{s}"): "store its system's webhook registration, its own key only",
    ("pub", "$JS.API.DIRECT.GET.KV_REFBUS_WEBHOOKS.$KV.REFBUS_WEBHOOKS.{s}"):
        "read its own registration (direct get by subject: no other key)",
    # sealed content (services/privacy): a referral's data key wrapped for both parties and the auditors
    ("pub", "$JS.API.STREAM.INFO.KV_REFBUS_CHILD_KEYS"): "open the child-keys bucket (nats-py reads its config)",
    ("pub", "$KV.REFBUS_CHILD_KEYS.*.*.*"): "store the wraps of a referral it seals, for the receiver and auditors too "
        "(write-once: the bucket refuses an overwrite and a purge; each wrap opens only with its reader's key)",
    ("pub", "$JS.API.DIRECT.GET.KV_REFBUS_CHILD_KEYS.$KV.REFBUS_CHILD_KEYS.*.{s}.*"):
        "read its own wraps only (direct get by subject)",
}
_SYSTEM = {
    ("pub", "refbus.cmd.{s}.*"): "send commands to its own sector's gateway, nothing else (no stream access)",
    ("sub", "_INBOX.{s}-system.>"): "the gateway's replies (reply prefix _INBOX.{s}-system)",
}
PERMISSIONS: dict[str, dict[tuple[str, str], str]] = {
    **{s.value: {(d, p.format(s=s.value)): why.format(s=s.value) for (d, p), why in _SECTOR.items()} for s in Sector},
    **{
        f"{s.value}-system": {(d, p.format(s=s.value)): why.format(s=s.value) for (d, p), why in _SYSTEM.items()}
        for s in Sector
    },
    "pager": {
        ("pub", "refbus.page.*"): "write a child's manifest pages",
        ("pub", "refbus.pagedata.*"): "write a child's other pages",
        ("pub", "refbus.pager.checkpoint"): "record how far it has paged",
        ("pub", "$JS.API.DIRECT.GET.REFBUS_PAGES"): "read pages back (merge, resume from the checkpoint)",
        ("pub", "$JS.API.DIRECT.GET.REFBUS_CHILDREN"): "look up a child's indexed events on resume",
        ("pub", "$JS.API.STREAM.MSG.DELETE.REFBUS_PAGES"): "prune superseded pages",
        ("pub", "$JS.API.CONSUMER.CREATE.REFBUS_CHILDREN.*.refbus.child.>"):
            "its reader of the index, filtered form only (the index holds nothing else)",
        ("pub", "$JS.API.CONSUMER.DELETE.REFBUS_CHILDREN.*"): "delete that reader when it starts again",
        ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS_CHILDREN.*"): "pull requests on that reader",
        **SEALER_PERMISSIONS,  # the sealer runs in the pager's process (tests/integration/test_sealer_secured.py)
        # the read service runs in the pager's process too (services/reads/, decision 0023)
        ("sub", "refbus.read.*.*"): "take the sectors' read requests (queue group readers)",
        ("pub", "$JS.API.DIRECT.GET.REFBUS"): "a sector's feed (next_by_subj on its inbox filter) and the route check "
            "of a history whose payloads claim more than their subjects hold",
        ("resp", "allow_responses"): "answer each read request once, to the asker's reply subject only",
        ("sub", "_INBOX.pager.>"): "its own replies and pull deliveries (reply prefix _INBOX.pager)",
    },
    "deadlines": {
        **{("pub", f"refbus.ev.*.{s}.{s}"): f"state deadline notices as {s} to itself; the lifecycle refuses any "
           "other from==to event but a consent withdrawal's note to its recorder (decision 0018)" for s in Sector},
        ("pub", "$JS.API.STREAM.INFO.REFBUS"): "the log's end (catching up) and a child's event count",
        ("pub", "$JS.API.DIRECT.GET.REFBUS"): "check a sequence gap while reading (it reads the whole log anyway)",
        ("pub", "$JS.API.DIRECT.GET.REFBUS_CHILDREN"): "read a child's history before appending a notice",
        ("pub", "$JS.API.DIRECT.GET.REFBUS_PAGES"): "read a child's history pages",
        ("pub", "$JS.API.CONSUMER.CREATE.REFBUS.deadlines.refbus.ev.>"):
            "its reader of the log, named and filtered (the filterless form could repoint an inbox)",
        ("pub", "$JS.API.CONSUMER.DELETE.REFBUS.deadlines"): "start that reader again from the first event",
        ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS.deadlines"): "pull requests on that reader",
        ("sub", "_INBOX.deadlines.>"): "its own replies and pull deliveries (reply prefix _INBOX.deadlines)",
    },
    "auditor": AUDITOR_PERMISSIONS,  # the audit commands (tests/integration/test_auditor_secured.py)
    "operator": {
        ("pub", "$JS.API.INFO"): "account usage and limits",
        ("pub", "$JS.API.STREAM.INFO.*"): "stream state (counts, bytes, sequences)",
        ("pub", "$JS.API.STREAM.LIST"): "list streams with their state",
        ("pub", "$JS.API.STREAM.NAMES"): "list stream names",
        ("pub", "$JS.API.CONSUMER.INFO.*.*"): "consumer state (lag, pending, redeliveries)",
        ("pub", "$JS.API.CONSUMER.LIST.*"): "list consumers with their state",
        ("pub", "$JS.API.CONSUMER.NAMES.*"): "list consumer names",
        ("pub", "$JS.API.CONSUMER.CREATE.REFBUS_DEAD_LETTERS.>"):
            "a consumer to read dead letters (no payloads there: reasons, hashes, advisories)",
        ("pub", "$JS.API.CONSUMER.DELETE.REFBUS_DEAD_LETTERS.>"): "remove that consumer",
        ("pub", "$JS.ACK.REFBUS_DEAD_LETTERS.>"): "ack the dead letters it has handled",
        ("pub", "refbus.dead.*.redrive"):
            "ask a sector to handle a dead-lettered log message again (refbus dead redrive); only that",
        ("sub", "_INBOX.operator.>"): "its own replies and dead-letter deliveries (reply prefix _INBOX.operator)",
    },
}
UNRESTRICTED = {"admin": "provisions and updates the streams; not used by any service"}


def configured_permissions(text: str) -> dict[str, dict[tuple[str, str], None]]:
    """Each user's allowed (direction, subject) pairs in nats-permissions.conf."""
    blocks = dict(re.findall(r"^(\w+_PERMISSIONS) = \{(.*?)^\}", text, re.S | re.M))
    users: dict[str, dict[tuple[str, str], None]] = {}
    for variable, rest in re.findall(r"\{ nkey: \$REFBUS_(\w+)_NKEY(.*?)\}$", text, re.M):
        user = variable.lower().replace("_", "-")
        perms = re.search(r"permissions: \$(\w+)", rest)
        if perms is None:
            continue
        block = blocks[perms.group(1)]
        assert "deny" not in block, "extend the parser and the table"
        allowed: dict[tuple[str, str], None] = {}
        if re.search(r"^\s*allow_responses: true$", block, re.M):
            allowed[("resp", "allow_responses")] = None
        for direction, key in (("pub", "publish"), ("sub", "subscribe")):
            section = re.search(key + r": \{\s*allow: \[(.*?)\]", block, re.S)
            for subject in re.findall(r'"([^"]+)"', section.group(1) if section else ""):
                allowed[(direction, subject)] = None
        users[user] = allowed
    return users


def test_every_allow_has_a_reason() -> None:
    text = PERMISSIONS_CONFIG.read_text()
    configured = configured_permissions(text)
    every_user = {v.lower().replace("_", "-") for v in re.findall(r"\{ nkey: \$REFBUS_(\w+)_NKEY", text)}
    assert every_user == set(configured) | set(UNRESTRICTED)
    for user, allowed in configured.items():
        reasons = PERMISSIONS.get(user, {})
        assert not (unexplained := [a for a in allowed if a not in reasons]), f"{user}: no reason for {unexplained}"
        assert not (stale := [a for a in reasons if a not in allowed]), f"{user}: reason for no allow {stale}"
        assert all(why.strip() for why in reasons.values())
    assert set(PERMISSIONS) == set(configured)


def helm_permissions(text: str) -> dict[str, dict[tuple[str, str], None]]:
    """Each user's allowed (direction, subject) pairs in deploy/k8s/nats-values.yaml."""
    users: dict[str, dict[tuple[str, str], None]] = {}
    user, direction = "", ""
    for line in text.splitlines():
        if found := re.match(r'\s+- nkey: "<< \$REFBUS_(\w+)_NKEY >>"', line):
            user, direction = found.group(1).lower().replace("_", "-"), ""
        elif re.match(r"\s+allow_responses: true$", line) and user:
            users.setdefault(user, {})[("resp", "allow_responses")] = None
        elif found := re.match(r"\s+(publish|subscribe):", line):
            direction = "pub" if found.group(1) == "publish" else "sub"
        elif user and direction and (found := re.match(r'\s+- "([^"]+)"$', line)):
            users.setdefault(user, {})[(direction, found.group(1))] = None
        elif not line.startswith(" " * 10):
            user, direction = "", ""
    return users


def test_the_helm_values_grant_exactly_the_same() -> None:
    conf = configured_permissions(PERMISSIONS_CONFIG.read_text())
    helm = helm_permissions((PERMISSIONS_CONFIG.parent / "k8s" / "nats-values.yaml").read_text())
    assert helm == conf
