"""Tamper evidence on stored messages: an untouched log verifies; each kind of tampering is caught
and named at the first bad event. The log is the in-memory store's, as the server would hold it
(sequence, store time, subject, headers, bytes); tampering edits a copy of that list, as an
attacker with the files would (the JetStream log itself is append-only: tests/integration/
test_tamper_server.py forges on a real server)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from refbus.contracts import codec, subjects
from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralInProgress
from refbus.contracts.vocabulary import Outcome, Sector
from refbus.services.audit import keys, proof
from refbus.services.audit.seal import seal_messages
from refbus.services.audit.verify import Report, verify_messages
from refbus.services.eventstore.memory import InMemoryEventStore
from tests.factories import answer, new_child, request

Messages = list[tuple[int, datetime, str, dict[str, str], bytes]]


@pytest.fixture
def ring(tmp_path: Path) -> keys.Keyring:
    return keys.ensure(tmp_path)


async def _log(ring: keys.Keyring, children: int = 3) -> tuple[Messages, list[str]]:
    store = InMemoryEventStore(ring)
    made = []
    for _ in range(children):
        child = new_child()
        made.append(child)
        req = request(child)
        await store.transact(child, lambda _s, req=req: [req])
        accept = [answer(ReferralAccepted, req), answer(ReferralInProgress, req)]
        done = [answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)]
        await store.transact(child, lambda _s, accept=accept: accept)
        await store.transact(child, lambda _s, done=done: done)
    return [(seq, at, subject, dict(headers), data) for seq, at, subject, headers, data in store.messages], made


def _verify(ring: keys.Keyring, messages: Messages, **options: object) -> Report:
    return verify_messages(messages, ring.records, **options)  # type: ignore[arg-type]


def _first(report: Report) -> tuple[int, str]:
    assert report.first is not None, report
    return report.first.seq, report.first.kind


async def test_an_untouched_log_verifies(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring)
    report = _verify(ring, messages, seals=[seal_messages(ring, messages)])
    assert report.ok and report.events == len(messages) and report.seals_checked == 1, report.as_dict()


async def test_an_altered_payload_is_caught(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring)
    seq, at, subject, headers, data = messages[4]
    event = codec.decode(data)
    forged = msgspec.json.encode(msgspec.structs.replace(event, actor="w00000000"))
    messages[4] = (seq, at, subject, headers, forged)
    assert _first(_verify(ring, messages)) == (seq, "altered")


async def test_an_altered_payload_with_its_chain_recomputed_fails_the_signature(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=1)
    seq, at, subject, headers, data = messages[0]
    forged = data.replace(b'"routine"', b'"urgent"')
    assert forged != data
    messages[0] = (seq, at, subject, {**headers, proof.CHAIN: proof.format_link(proof.next_link(proof.START, forged))},
                   forged)
    assert _first(_verify(ring, messages)) == (seq, "bad-signature")


async def test_a_forged_sender_is_caught(ring: keys.Keyring) -> None:
    """Health signs an event that says social sent it (a sector's service writing as another)."""
    messages, _ = await _log(ring, children=1)
    child = new_child()
    event = request(child, frm=Sector.SOCIAL, to=Sector.HEALTH)
    data = codec.encode(event)
    headers = {proof.CHAIN: proof.format_link(proof.next_link(proof.START, data)), proof.KEY: ring.current("health")}
    forged = [(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), data, headers)]
    proof.sign_messages(forged, ring.private)  # type: ignore[arg-type]
    seq = messages[-1][0] + 1
    messages.append((seq, datetime.now(UTC), forged[0][0], headers, data))
    seq_, kind = _first(_verify(ring, messages))
    assert (seq_, kind) == (seq, "forged-sender")


async def test_an_unsigned_event_is_caught(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=1)
    installed = keys.installed()
    keys.install(None)  # no process-wide keys either (another test may have installed some)
    try:
        unsigned, _ = await _log(None, children=1)  # type: ignore[arg-type]
    finally:
        keys.install(installed)
    _, at, subject, headers, data = unsigned[0]
    messages.append((messages[-1][0] + 1, at, subject, headers, data))
    assert _first(_verify(ring, messages)) == (messages[-1][0], "unsigned")
    # and one with no proof at all (a raw publish)
    messages[-1] = (messages[-1][0], at, subject, {}, data)
    assert _first(_verify(ring, messages)) == (messages[-1][0], "unsigned")


async def test_a_removed_event_is_caught(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=2)
    del messages[1]  # the first child's acceptance
    assert _first(_verify(ring, messages)) == (messages[1][0], "removed")
    # also when the log was renumbered to hide the gap: the child's chain skips a position
    renumbered = [(i + 1, at, subject, headers, data) for i, (_, at, subject, headers, data) in enumerate(messages)]
    report = _verify(ring, renumbered)
    assert _first(report) == (2, "removed") and report.first and "chain positions 2..2" in report.first.detail


async def test_reordered_events_are_caught(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=1)
    # The acceptance and the start of work swapped, sequences kept: the log looks in order.
    (s1, a1, *m1), (s2, a2, *m2) = messages[1], messages[2]
    messages[1], messages[2] = (s1, a1, *m2), (s2, a2, *m1)  # type: ignore[assignment]
    report = _verify(ring, messages)
    assert _first(report) == (s1, "reordered"), report.as_dict()
    assert "removed" not in report.counts


async def test_a_truncated_tail_is_caught_by_the_seal(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=2)
    seal = seal_messages(ring, messages)
    report = _verify(ring, messages[:-2], seals=[seal])
    assert _first(report) == (messages[-2][0], "truncated"), report.as_dict()


async def test_a_signature_by_a_revoked_key_is_caught(ring: keys.Keyring, tmp_path: Path) -> None:
    messages, _ = await _log(ring, children=1)
    kid = ring.current("social")
    assert kid is not None
    keys.revoke(tmp_path, kid, at=messages[0][1] - timedelta(seconds=1))
    revoked = keys.load(tmp_path)
    report = verify_messages(messages, revoked.records)
    assert _first(report) == (messages[0][0], "revoked-key")
    # revoked after the events were stored: they stand (a thief cannot set the server's store time)
    keys.revoke(tmp_path, kid, at=messages[-1][1] + timedelta(seconds=1))
    assert verify_messages(messages, keys.load(tmp_path).records).ok


async def test_a_rotated_key_stays_valid_for_what_it_signed(ring: keys.Keyring, tmp_path: Path) -> None:
    before, _ = await _log(ring, children=1)
    keys.new_key(tmp_path, "social")
    rotated = keys.load(tmp_path)
    assert rotated.current("social") != ring.current("social")
    after, _ = await _log(rotated, children=1)
    last = before[-1][0]
    messages = before + [(seq + last, at, s, h, d) for seq, at, s, h, d in after]
    assert verify_messages(messages, rotated.records).ok


async def test_a_store_rebuilt_with_another_history_is_caught(ring: keys.Keyring) -> None:
    original, _ = await _log(ring, children=2)
    seal = seal_messages(ring, original)
    rebuilt, _ = await _log(ring, children=2)  # signed with stolen sector keys, but another history
    report = _verify(ring, rebuilt, seals=[seal])
    assert "seal-mismatch" in report.counts, report.as_dict()
    # without the seals (not copied over): the witness of the last seal seen catches it
    report = _verify(ring, rebuilt, witness=seal)
    assert "rebuilt" in report.counts, report.as_dict()


async def test_a_seal_not_signed_by_the_bus_is_refused(ring: keys.Keyring) -> None:
    messages, _ = await _log(ring, children=1)
    seal = seal_messages(ring, messages)
    forged = msgspec.structs.replace(seal, last_seq=seal.last_seq + 5)
    assert _first(_verify(ring, messages, seals=[forged]))[1] == "seal-invalid"


async def test_a_state_folded_from_events_alone_still_chains_right(ring: keys.Keyring) -> None:
    """The services hand transact states they folded from events (no chain link known): the store
    reads the link of the child's last event before appending (found by `refbus demo`)."""
    from refbus.services.rules.state import fold

    store = InMemoryEventStore(ring)
    child = new_child()
    req = request(child)
    [seq] = (await store.transact(child, lambda _s: [req])).stored
    folded = fold(child, [(seq, req)])
    await store.transact(child, lambda _s: [answer(ReferralAccepted, req)], state=folded)
    messages = [(s, at, subject, dict(h), d) for s, at, subject, h, d in store.messages]
    assert _verify(ring, messages).ok
