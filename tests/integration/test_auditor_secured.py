"""The auditor under deploy/nats-server.conf (issue 17): the audit commands connect as the NATS user
`auditor`, read every child's history (its sealed content too, through the auditors' own wrap) and the
whole log, and record every read in the access trail; the server refuses the auditor anything else:
an event, a stream's removal or purge, a consumer of a sector's, a seal, a key record, a sector's
webhook registration or wrap, a dead letter, a tap on the bus."""

import asyncio
import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import subjects
from refbus.contracts.content import ReferralContent
from refbus.contracts.vocabulary import Sector
from refbus.services.audit import keys
from refbus.services.audit.access import list_access
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.reader import LogReader
from refbus.services.eventstore.replay import ReplayInterrupted, raw_replay
from refbus.services.privacy.content import ContentKeys
from refbus.services.runtime import identities
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child, record, request
from tests.integration import secured
from tests.integration.cli_runner import _env, refbus
from tests.integration.secured import connect_as

pytestmark = pytest.mark.integration
NO_ANSWER = (NatsTimeout, NoRespondersError, asyncio.TimeoutError)

# The auditor user's allows, with their reasons (the matrix in test_permissions_holes.py).
AUDITOR_PERMISSIONS = {
    ("pub", "$JS.API.STREAM.INFO.REFBUS"):
        "the log's end before a replay, a child's event count (children), that the bus has the log",
    ("pub", "$JS.API.STREAM.INFO.REFBUS_CHILDREN"): "check: does the child index hold every event",
    ("pub", "$JS.API.STREAM.INFO.REFBUS_ACCESS"): "verify: where the access trail ends before reading it",
    ("pub", "$JS.API.DIRECT.GET.REFBUS"): "verify --child: one child's events from the log itself",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_CHILDREN"): "a child's verified history from the index",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_PAGES"):
        "a child's history pages, each checked against the verified index (a forged page refused)",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_SEALS"): "the seals verify checks the log against",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_KEYS"): "the public key records signatures are checked with",
    ("pub", "$JS.API.DIRECT.GET.REFBUS_ACCESS"):
        "a child's newest access record (the next one chains on it); who read a child (refbus access)",
    ("pub", "$JS.API.CONSUMER.INFO.REFBUS.auditor"): "is another audit's pass reading through that name now",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS.auditor.refbus.ev.>"):
        "its reader of the whole log (verify, check, replay), named and filtered (the filterless form could "
        "repoint an inbox)",
    ("pub", "$JS.API.CONSUMER.DELETE.REFBUS.auditor"): "start that reader again for each pass",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS.auditor"): "pull requests on that reader",
    ("pub", "$JS.API.CONSUMER.INFO.REFBUS_ACCESS.auditor"): "is another audit's pass reading the trail now",
    ("pub", "$JS.API.CONSUMER.CREATE.REFBUS_ACCESS.auditor.refbus.access.*"):
        "its reader of the whole access trail (verify), named and filtered",
    ("pub", "$JS.API.CONSUMER.DELETE.REFBUS_ACCESS.auditor"): "start that reader again for each pass",
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.REFBUS_ACCESS.auditor"): "pull requests on that reader",
    ("pub", "$JS.API.STREAM.INFO.KV_REFBUS_CHILD_KEYS"): "open the child-keys bucket (nats-py reads its config)",
    ("pub", "$JS.API.DIRECT.GET.KV_REFBUS_CHILD_KEYS.$KV.REFBUS_CHILD_KEYS.*.auditors.*"):
        "read the auditors' wraps of the children's data keys only (direct get by subject)",
    ("pub", "refbus.access.*"): "record each read of a child before it is shown (REFBUS_ACCESS; nothing else)",
    ("sub", "_INBOX.auditor.>"): "its own replies and pull deliveries (reply prefix _INBOX.auditor)",
}
CONTENT = ReferralContent(name="Ana Synthetic", note="synthetic test data")


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


async def _a_sealed_referral(server: EmbeddedNats, ring: keys.Keyring) -> tuple[NATS, str]:
    """The admin's connection (streams provisioned, key records published) and a child with one
    referral from social whose content is sealed for social, health and the auditors."""
    admin = await connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    await keys.publish(admin, ring)
    social = await connect_as(server, Sector.SOCIAL.value)
    child = new_child()
    event = request(child, Sector.SOCIAL, Sector.HEALTH)
    sealed = await ContentKeys(social, ring, Sector.SOCIAL).seal(
        CONTENT, child=child, referral_id=event.referral_id, event_id=event.event_id,
        from_sector=Sector.SOCIAL, to_sector=Sector.HEALTH)
    log = secured.sector_store(social, Sector.SOCIAL, timeout=2.0, ring=ring)  # a new child: nothing to read
    assert await record(log, msgspec.structs.replace(event, sealed=sealed))
    await social.close()
    return admin, child


def _auditors_secrets(server: EmbeddedNats, master: Path, out: Path) -> Path:
    """An auditor's secrets: the deployment's keys and the auditor's NATS seed, and no other seed (a
    command that connected as anyone else would be refused)."""
    shutil.copytree(master, out / "keys")
    (out / "nats").mkdir(mode=0o700)
    shutil.copy2(secured.seed_file(server, "auditor"), identities.seed_path(out / "nats", "auditor"))
    return out


async def test_the_audit_commands_run_as_the_auditor_and_every_read_is_recorded(
    secured_server: EmbeddedNats, tmp_path: Path
) -> None:
    ring = keys.ensure_dir(tmp_path / "master" / "keys")
    admin, child = await _a_sealed_referral(secured_server, ring)
    env = _env(tmp_path / "auditor-data", REFBUS_NATS_URL=secured_server.url,
               REFBUS_SECRETS_DIR=str(_auditors_secrets(secured_server, tmp_path / "master" / "keys",
                                                        tmp_path / "auditor")))

    history = refbus("history", child, "--purpose", "case_work", "--as", "a.auditor", "--json", env=env)
    assert history.code == 0, history.err
    [shown] = json.loads(history.out)
    assert shown["content"]["state"] == "clear" and shown["content"]["content"]["name"] == CONTENT.name
    assert "every signature and chain holds" in history.err
    trail = await list_access(admin, child)
    assert [(r.who, r.what, r.purpose.value) for r in trail] == [("a.auditor", "history", "case_work")]

    for args, said in (
        (("verify",), "access trail: 1 records, intact"),
        (("verify", "--child", child), "verified: every signature, chain and seal holds"),
        (("check",), "clean"),
        (("access", child), "a.auditor"),
        (("children",), child),
    ):
        run = refbus(*args, env=env)
        assert run.code == 0 and said in run.out, (args, run.out, run.err)
    # Its readers of the log and the trail are gone after each pass.
    for stream in (subjects.STREAM, subjects.ACCESS_STREAM):
        assert subjects.AUDITOR_CONSUMER not in [c.name for c in await admin.jetstream().consumers_info(stream)]
    await admin.close()


async def test_a_second_audit_does_not_end_the_pass_under_way(secured_server: EmbeddedNats, tmp_path: Path) -> None:
    ring = keys.ensure_dir(tmp_path / "master" / "keys")
    admin, child = await _a_sealed_referral(secured_server, ring)
    await record(JetStreamEventStore(admin, timeout=2.0, ring=ring), request(child, Sector.SOCIAL, Sector.JUSTICE,
                                                                             "birth_registration"))
    first, second = [LogReader(await connect_as(secured_server, "auditor"), 2.0) for _ in range(2)]
    name = subjects.AUDITOR_CONSUMER
    async with contextlib.aclosing(raw_replay(first, consumer=name)) as pass_under_way:
        assert (await anext(pass_under_way))[0] == 1
        with pytest.raises(ReplayInterrupted, match="another reader"):
            [m async for m in raw_replay(second, consumer=name)]
        assert [m[0] async for m in pass_under_way] == [2]  # the first pass reads on to the end
    assert [m[0] async for m in raw_replay(second, consumer=name)] == [1, 2]  # and then the next one may
    for nc in (first.nc, second.nc, admin):
        await nc.close()


async def _answer(nc: NATS, subject: str, body: object = b"") -> bytes | None:
    """The server's answer to a request; None if it dropped it (not allowed)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        return (await nc.request(subject, data, timeout=0.5)).data
    except NO_ANSWER:
        return None


async def test_the_auditor_may_write_nothing_but_the_trail_nor_read_a_sectors_own(
    secured_server: EmbeddedNats, tmp_path: Path
) -> None:
    ring = keys.ensure_dir(tmp_path / "master" / "keys")
    admin, child = await _a_sealed_referral(secured_server, ring)
    errors: list[Exception] = []
    auditor = await connect_as(secured_server, "auditor", errors)
    [wrap] = [k for k in await (await admin.jetstream().key_value(subjects.CHILD_KEYS_BUCKET)).keys()
              if k.split(".")[1] == Sector.HEALTH.value]
    stream, inbox = subjects.STREAM, f"inbox-{Sector.HEALTH.value}"
    refused = {
        "append an event": (subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"{}"),
        "delete the log": (f"$JS.API.STREAM.DELETE.{stream}", {}),
        "purge the log": (f"$JS.API.STREAM.PURGE.{stream}", {}),
        "delete one event": (f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": 1}),
        "purge the access trail": (f"$JS.API.STREAM.PURGE.{subjects.ACCESS_STREAM}", {}),
        "update the log's config": (f"$JS.API.STREAM.UPDATE.{stream}", {"name": stream}),
        "create a stream": ("$JS.API.STREAM.CREATE.MINE", {"name": "MINE", "subjects": ["mine.>"]}),
        "a consumer on a sector's inbox": (f"$JS.API.CONSUMER.CREATE.{stream}.{inbox}.refbus.ev.*.*.health",
                                           {"stream_name": stream, "config": {"name": inbox}}),
        "the filterless create": (f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": {}}),
        "its reader's name on another stream": (
            f"$JS.API.CONSUMER.CREATE.{subjects.DEAD_LETTER_STREAM}.auditor.refbus.dead.>", {}),
        "delete a sector's inbox": (f"$JS.API.CONSUMER.DELETE.{stream}.{inbox}", {}),
        "delete the sealer's reader": (f"$JS.API.CONSUMER.DELETE.{stream}.{subjects.SEALER_CONSUMER}", {}),
        "write a seal": (subjects.SEAL_SUBJECT, b"{}"),
        "write a key record": (subjects.key_subject("bus-0123456789abcdef"), b"{}"),
        "read a sector's webhook registration": (
            f"$JS.API.DIRECT.GET.KV_{subjects.WEBHOOKS_BUCKET}.$KV.{subjects.WEBHOOKS_BUCKET}.health", b""),
        "open the webhook bucket": (f"$JS.API.STREAM.INFO.KV_{subjects.WEBHOOKS_BUCKET}", b""),
        "read a sector's wrap of the child's key": (
            f"$JS.API.DIRECT.GET.{subjects.CHILD_KEYS_STREAM}.$KV.{subjects.CHILD_KEYS_BUCKET}.{wrap}", b""),
        "write a wrap": (f"$KV.{subjects.CHILD_KEYS_BUCKET}.{child}.auditors.0011223344556677", b"{}"),
        "write a dead letter": (subjects.dead_letter_subject(Sector.HEALTH), b"{}"),
        "ask for a redrive": (subjects.redrive_subject(Sector.HEALTH), b"{}"),
        "send a sector's gateway a command": (subjects.command_subject(Sector.HEALTH, "accept"), b"{}"),
        "read the dead letters": (f"$JS.API.DIRECT.GET.{subjects.DEAD_LETTER_STREAM}", {"seq": 1}),
    }
    answers = await asyncio.gather(*(_answer(auditor, s, b) for s, b in refused.values()))
    assert {what: a for what, a in zip(refused, answers, strict=True) if a is not None} == {}
    for tap in (">", "refbus.ev.>", "_INBOX.>"):
        await auditor.subscribe(tap)
    await auditor.flush()
    await asyncio.sleep(0.2)
    published = [str(e) for e in errors if "permissions violation for publish" in str(e).lower()]
    subscribed = [str(e) for e in errors if "permissions violation for subscription" in str(e).lower()]
    assert len(published) == len(refused) and len(subscribed) == 3, errors

    # Nothing was changed: the log, its one consumer-free state, the seals and key records as before.
    info = await admin.jetstream().stream_info(stream)
    assert (info.state.messages, info.state.consumer_count) == (1, 0)
    assert (await admin.jetstream().stream_info(subjects.SEALS_STREAM)).state.messages == 0
    # And what it is for answers on the same connection: the log's state, the auditors' wrap.
    assert (await auditor.jetstream().stream_info(stream)).state.last_seq == 1
    mine = wrap.replace(".health.", f".{subjects.AUDITORS}.")
    assert await _answer(auditor, f"$JS.API.DIRECT.GET.{subjects.CHILD_KEYS_STREAM}.$KV."
                                  f"{subjects.CHILD_KEYS_BUCKET}.{mine}")
    for nc in (auditor, admin):
        await nc.close()
