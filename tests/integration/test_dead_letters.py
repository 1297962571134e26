"""Dead letters operators inspect and redrive, on a real server: an event of a newer schema is set
aside, shows in `refbus dead list` (without the child) and `show` (with its subject), and after the
"upgrade" its redrive lands once, however often it is asked for."""

import json
import uuid

import msgspec
import nats
import pytest

from refbus.cli import _parser
from refbus.contracts import codec, subjects
from refbus.contracts.events import ReferralReceived, ReferralRequested
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import deadletters, jetstream, streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.records import RedriveRequest
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.runtime.settings import Settings
from tests.factories import new_child, request
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration


async def cli(url: str, *argv: str) -> int:
    args = _parser().parse_args([*argv, "--nats-url", url])
    return await args.command(args, Settings(nats_url=url))


async def consumer_done(nc: nats.NATS, stream: str, name: str) -> bool:
    info = await nc.jetstream().consumer_info(stream, name)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_newer_schema_event_is_set_aside_listed_and_redriven_once(
    own_server: EmbeddedNats, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = own_server.url
    nc = await nats.connect(url)
    await streams.provision(nc.jetstream())
    log = JetStreamEventStore(nc, timeout=2.0)
    child = new_child()
    req = request(child, Sector.SOCIAL, Sector.HEALTH)
    newer = json.loads(codec.encode(req))
    newer["schema_version"] = 2  # from a writer already upgraded
    async with running(url, {Sector.HEALTH: ScriptedPolicy([])}, ack_wait=2.0):
        ack = await nc.jetstream().publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH),
                                           json.dumps(newer).encode())

        async def set_aside() -> bool:
            return any(e.stream_seq == ack.seq for e in await deadletters.read(nc))

        await wait_for(set_aside)
        capsys.readouterr()
        assert await cli(url, "dead", "list", "--sector", "health", "--reason", "newer schema") == 0
        listed = capsys.readouterr().out
        assert f"log seq {ack.seq}" in listed and "newer schema" in listed
        assert child not in listed  # the subject names the child: only `show` prints it
        letter = next(e for e in await deadletters.read(nc) if e.stream_seq == ack.seq)
        assert await cli(url, "dead", "show", str(letter.id), "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["subject"] == subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH)
        assert shown["stream_seq"] == ack.seq and shown["redriven"] is None
        # A bulk redrive asks first; without a terminal and without --yes it refuses.
        assert await cli(url, "dead", "redrive", "--matching", "--reason", "newer schema") == 2

        # The upgrade: this reader now knows referral.requested v2.
        monkeypatch.setitem(codec._VERSION_OF_CLASS, ReferralRequested, 2)
        monkeypatch.setitem(codec.CURRENT_VERSION, "referral.requested", 2)
        assert await cli(url, "dead", "redrive", str(letter.id)) == 0
        assert json.loads(capsys.readouterr().out)["redrive_requested"] == 1

        async def received() -> bool:
            return any(isinstance(e, ReferralReceived) for e in await referral_events(log, child, req.referral_id))

        await wait_for(received)
        # Asked again: within the window the request is stored once...
        assert await cli(url, "dead", "redrive", "--matching", "--sector", "health", "--yes") == 0
        assert json.loads(capsys.readouterr().out) == {"redrive_requested": 0, "already_requested": 1,
                                                       "subject_unknown": 0}
        # ...and after it (a request under another id), handling is idempotent by state.
        again = RedriveRequest(letter.id, ack.seq, letter.subject or "", letter.consumer, letter.at)
        later = await nc.jetstream().publish(subjects.redrive_subject(Sector.HEALTH), msgspec.json.encode(again),
                                             headers={jetstream.MSG_ID: f"later:{uuid.uuid4()}"})
        await wait_for(lambda: consumer_done(nc, subjects.DEAD_LETTER_STREAM, "redrive-health"))
        redrives = await nc.jetstream().consumer_info(subjects.DEAD_LETTER_STREAM, "redrive-health")
        assert redrives.ack_floor.stream_seq == later.seq and redrives.delivered.consumer_seq == 2
        events = await referral_events(log, child, req.referral_id)
        assert [type(e).__name__ for e in events] == ["ReferralRequested", "ReferralReceived"]
        assert await cli(url, "dead", "list", "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["redriven"] is not None for r in rows if r["stream_seq"] == ack.seq] == [True]
    await nc.close()
