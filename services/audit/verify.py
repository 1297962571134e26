"""The verifier: walks stored messages in log order and checks every signature, every child's hash
chain, and the log against its seals. Streaming: it keeps per child only its newest link, per
signature group one cached answer, and per seal nothing after it is checked; memory does not grow
with the length of the log (only with the number of children).

What each finding means:
- altered: the payload is not what its signed chain hash says (its bytes changed after signing)
- forged-sender: signed by a key whose owner is not the event's sender (a deadline notice: nor the
  deadline service)
- unsigned: no key or no signature
- bad-signature: a signature (or Merkle path) that does not verify
- unknown-key: signed by a key that no trusted record names
- revoked-key: signed by a key revoked before the event was stored
- removed: the child's chain skips positions (an event taken out), or the log's sequence does
- reordered: an event comes after one that chains on it
- duplicate: a position of a child's chain appears twice
- truncated: a seal names more of the log than is there
- seal-mismatch / seal-invalid: the log up to a seal is not what the bus sealed / the seal's signature fails
- rebuilt: a seal this verifier saw before is gone or differs (the store was rebuilt)
- undecodable / misrouted: the payload is not an event, or not the one its subject names
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from refbus.contracts import codec
from refbus.services.audit import keys, proof
from refbus.services.audit.keys import BUS, KeyRecord
from refbus.services.audit.seal import Seal, log_step

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from refbus.services.audit.keys import Keyring

RawMessage = tuple[int, datetime, str, dict[str, str], bytes]
"(sequence, stored at, subject, headers, payload): a stored message as the verifier reads it."

MAX_FINDINGS = 1000
SIG_CACHE = 4096
MAX_OPEN_GROUPS = 256
"Signature groups waiting for members: more, and the oldest is checked member by member."


@dataclass(frozen=True)
class Finding:
    seq: int
    kind: str
    detail: str
    child: str | None = None


@dataclass
class Report:
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    seals_checked: int = 0
    last_sealed_seq: int = 0
    unsealed: int = 0
    "Events after the newest seal: not yet covered by one (they are sealed at the next interval)."
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def first(self) -> Finding | None:
        return min(self.findings, key=lambda f: f.seq) if self.findings else None

    def as_dict(self) -> dict[str, object]:
        first = self.first
        return {
            "ok": self.ok, "events": self.events, "first_seq": self.first_seq, "last_seq": self.last_seq,
            "seals_checked": self.seals_checked, "last_sealed_seq": self.last_sealed_seq,
            "unsealed": self.unsealed, "counts": self.counts,
            "first_bad": None if first is None else vars(first),
            "findings": [vars(f) for f in self.findings[:100]],
        }


class Verifier:
    """Feed it a log's messages in order (`feed`), then the end (`finish`)."""

    def __init__(
        self,
        records: dict[str, KeyRecord],
        seals: Iterable[Seal] = (),
        *,
        start: Seal | None = None,
        check_chains_from_start: bool = True,
        witness: Seal | None = None,
        contiguous: bool = True,
    ) -> None:
        """`records`: trusted key records by key id. `seals`: the seals to check, in order.
        `start`: a verified seal to start after (its log hash continues the running hash); the
        children's chains are then taken up where first met. `witness`: a seal seen earlier that
        the log must still hold. `contiguous=False`: a part of the log (one child's events), so no
        sequence or seal checks."""
        self.records = records
        self._contiguous = contiguous
        self.report = Report()
        self._seals = sorted(seals, key=lambda s: s.last_seq)
        self._next_seal = 0
        self._log_hash = start.log_hash if start else proof.GENESIS
        self._expected_seq = start.last_seq + 1 if start else 1
        self._strict_chains = check_chains_from_start and start is None
        self._chains: dict[str, proof.Link] = {}
        self._missing: dict[tuple[str, int], Finding] = {}
        self._sig_cache: dict[tuple[str, int, bytes, bytes], bool] = {}
        self._groups: dict[tuple[str, int, str], dict[int, tuple[int, str, bytes, str]]] = {}
        self._witness = witness
        for seal in self._seals:
            if not self._seal_signed(seal):
                detail = f"seal at seq {seal.last_seq} is not signed by a bus key"
                self._add(Finding(seal.last_seq, "seal-invalid", detail))
        self._seals = [s for s in self._seals if self._seal_signed(s) and s.last_seq >= self._expected_seq]
        if not contiguous:
            self._seals, self._witness = [], None

    # -- findings -------------------------------------------------------------------------------
    def _add(self, finding: Finding) -> None:
        self.report.counts[finding.kind] = self.report.counts.get(finding.kind, 0) + 1
        if len(self.report.findings) < MAX_FINDINGS:
            self.report.findings.append(finding)

    def _seal_signed(self, seal: Seal) -> bool:
        record = self.records.get(seal.key_id)
        return (
            record is not None and record.owner == BUS and record.valid_at(seal.sealed_at)
            and proof.verify_signature(record.public_key, seal.signature, seal.signed_part())
        )

    # -- one message ----------------------------------------------------------------------------
    def feed(self, seq: int, stored_at: datetime, subject: str, headers: dict[str, str], data: bytes) -> None:
        report = self.report
        if report.events == 0:
            report.first_seq = seq
        report.events += 1
        report.last_seq = seq
        if seq != self._expected_seq and self._contiguous:
            if seq > self._expected_seq:
                self._add(Finding(seq, "removed", f"log sequences {self._expected_seq}..{seq - 1} are missing"))
            else:
                self._add(Finding(seq, "reordered", f"log sequence {seq} after {self._expected_seq - 1}"))
        self._expected_seq = seq + 1
        chain_header = headers.get(proof.CHAIN, "")
        self._log_hash = log_step(self._log_hash, seq, subject, chain_header, data)
        self._check_event(seq, stored_at, subject, headers, data)
        while self._next_seal < len(self._seals) and self._seals[self._next_seal].last_seq <= seq:
            seal = self._seals[self._next_seal]
            self._next_seal += 1
            if seal.last_seq == seq:
                report.seals_checked += 1
                report.last_sealed_seq = seq
                if seal.log_hash != self._log_hash:
                    self._add(Finding(seq, "seal-mismatch", "the log up to this sequence is not what the bus sealed"))
            if self._witness is not None and self._witness.last_seq == seq and (
                self._witness.log_hash != self._log_hash
            ):
                self._add(Finding(seq, "rebuilt", "the log differs from the one sealed and witnessed earlier"))

    def _check_event(self, seq: int, stored_at: datetime, subject: str, headers: dict[str, str], data: bytes) -> None:
        try:
            event = codec.decode_on(subject, data)
        except codec.MisroutedEvent as exc:
            self._add(Finding(seq, "misrouted", exc.reason))
            return
        except codec.UndecodableEvent as exc:
            self._add(Finding(seq, "undecodable", exc.reason))
            return
        child = event.child
        link = proof.parse_link(headers.get(proof.CHAIN))
        if link is None:
            self._add(Finding(seq, "unsigned", "no chain link", child))
            return
        self._check_chain(seq, child, link, data)
        kid = headers.get(proof.KEY)
        sig_text = headers.get(proof.SIG)
        if kid is None or not sig_text:
            self._add(Finding(seq, "unsigned", "no signature" if kid else "no signing key named", child))
            return
        head = proof.parse_sig_head(sig_text)
        if head is None:
            self._add(Finding(seq, "bad-signature", "malformed signature header", child))
            return
        record = self.records.get(kid)
        if record is None:
            self._add(Finding(seq, "unknown-key", f"key {kid} is not a trusted key", child))
            return
        if not keys.may_sign(record.owner, event):
            self._add(Finding(seq, "forged-sender",
                              f"sent as {event.from_sector.value} but signed by {record.owner}'s key {kid}", child))
            return
        if not record.valid_at(stored_at):
            self._add(Finding(seq, "revoked-key", f"key {kid} was revoked at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
                              f", before this event was stored", child))
            return
        member = (seq, child, link.hash, sig_text)
        if not self._contiguous:
            self._check_path(kid, record, member)
            return
        # A whole log: a group's members come together (one batch), so the root is computed once per
        # group from their chain hashes; a member alone (a group cut, a header replayed) by its path.
        i, n, signature = head
        key = (kid, n, signature)
        members = self._groups.setdefault(key, {})
        if i in members:
            self._check_path(kid, record, member)
            return
        members[i] = member
        if len(members) == n:
            del self._groups[key]
            root = proof.merkle_root([members[k][2] for k in range(n)])
            if not proof.verify_signature(record.public_key, proof.b64(signature), proof.signed_root(n, root)):
                for one in sorted(members.values()):
                    self._check_path(kid, record, one)
        elif len(self._groups) > MAX_OPEN_GROUPS:
            self._flush(next(iter(self._groups)))

    def _flush(self, key: tuple[str, int, str]) -> None:
        record = self.records[key[0]]
        for one in sorted(self._groups.pop(key).values()):
            self._check_path(key[0], record, one)

    def _check_path(self, kid: str, record: KeyRecord, member: tuple[int, str, bytes, str]) -> None:
        seq, child, chain, sig_text = member
        sig = proof.parse_sig(sig_text)
        if sig is None:
            self._add(Finding(seq, "bad-signature", "malformed signature header", child))
            return
        i, n, signature, path = sig
        root = proof.root_from(chain, i, n, path)
        if root is None:
            self._add(Finding(seq, "bad-signature", "the Merkle path does not fit its group", child))
            return
        cache_key = (kid, n, root, signature)
        good = self._sig_cache.get(cache_key)
        if good is None:
            good = proof.verify_signature(record.public_key, signature, proof.signed_root(n, root))
            if len(self._sig_cache) >= SIG_CACHE:
                self._sig_cache.clear()
            self._sig_cache[cache_key] = good
        if not good:
            self._add(Finding(seq, "bad-signature", f"signature by {kid} does not verify", child))

    def _check_chain(self, seq: int, child: str, link: proof.Link, data: bytes) -> None:
        head = self._chains.get(child)
        if head is None:
            head = proof.START if self._strict_chains else proof.Link(link.pos - 1, b"")
        expected = head.pos + 1
        if link.pos == expected:
            if head.hash and proof.chain_hash(head.hash, data) != link.hash:
                self._add(Finding(seq, "altered", f"payload does not match its signed chain hash (position {link.pos})",
                                  child))
            self._chains[child] = link
        elif link.pos > expected:
            finding = Finding(seq, "removed", f"chain positions {expected}..{link.pos - 1} missing before this event",
                              child)
            self._add(finding)
            for pos in range(expected, min(link.pos, expected + 64)):
                self._missing[(child, pos)] = finding
            self._chains[child] = link
        else:
            earlier = self._missing.pop((child, link.pos), None)
            if earlier is not None:
                detail = f"chain position {link.pos} comes after position {head.pos}"
                self._retag(earlier, "reordered", detail)
                self._add(Finding(seq, "reordered", detail, child))
            else:
                self._add(Finding(seq, "duplicate", f"chain position {link.pos} again (head is {head.pos})", child))

    def _retag(self, finding: Finding, kind: str, detail: str) -> None:
        if finding in self.report.findings:
            at = self.report.findings.index(finding)
            self.report.findings[at] = Finding(finding.seq, kind, detail, finding.child)
            self.report.counts[finding.kind] -= 1
            if not self.report.counts[finding.kind]:
                del self.report.counts[finding.kind]
            self.report.counts[kind] = self.report.counts.get(kind, 0) + 1
        self._missing = {k: v for k, v in self._missing.items() if v is not finding}

    # -- the end --------------------------------------------------------------------------------
    def finish(self) -> Report:
        report = self.report
        while self._groups:
            self._flush(next(iter(self._groups)))
        for seal in self._seals[self._next_seal :]:
            self._add(Finding(report.last_seq + 1, "truncated",
                              f"a seal names the log up to seq {seal.last_seq}; the log ends at {report.last_seq}"))
            break
        if self._witness is not None and self._witness.last_seq > report.last_seq:
            self._add(Finding(report.last_seq + 1, "rebuilt",
                              f"a seal witnessed earlier covers seq {self._witness.last_seq}; the log ends at "
                              f"{report.last_seq}"))
        if self._witness is not None and not any(
            s.last_seq == self._witness.last_seq and s.log_hash == self._witness.log_hash for s in self._seals
        ) and self._witness.last_seq >= self._expected_seq - report.events:
            self._add(Finding(self._witness.last_seq, "rebuilt", "the seal witnessed earlier is no longer in the bus"))
        report.unsealed = max(0, report.last_seq - report.last_sealed_seq) if report.events else 0
        return report


def verify_messages(messages: Iterable[RawMessage], records: dict[str, KeyRecord], seals: Iterable[Seal] = (),
                    **options: object) -> Report:
    verifier = Verifier(records, seals, **options)  # type: ignore[arg-type]
    for message in messages:
        verifier.feed(*message)
    return verifier.finish()



async def verify_bus(
    nc: "NATS",
    ring: "Keyring",
    *,
    child: str | None = None,
    since: int | None = None,
    stream: str | None = None,
    witness: Seal | None = None,
    progress: Callable[[int, int], None] | None = None,
    wait: float = 5.0,
    consumer: str | None = None,
) -> Report:
    """Verify the log in the bus (or `stream`, a stream of the log's shape) streaming: every
    signature and chain, and every seal after `since`. `child`: only that child's events (chains
    and signatures; no seals: they cover the whole log). `progress(done, total)` now and then.
    `consumer`: the whole log is read through a consumer of that name (replay.raw_replay)."""
    from refbus.contracts import subjects
    from refbus.services.audit import keys, seal
    from refbus.services.eventstore import jetstream
    from refbus.services.eventstore.reader import LogReader
    from refbus.services.eventstore.replay import raw_replay

    records = await keys.trusted_records(nc, ring, wait)
    seals = await seal.read_seals(nc, wait)
    start: Seal | None = None
    if since is not None and since > 1:
        probe = Verifier(records)
        good = [s for s in seals if s.last_seq < since and probe._seal_signed(s)]
        start = good[-1] if good else None
    stream = stream or subjects.STREAM
    subject_filter = subjects.child_filter(child) if child else subjects.LOG_SUBJECTS
    verifier = Verifier(records, seals, start=start, witness=witness, contiguous=child is None)
    js = nc.jetstream(timeout=wait)
    total = (await js.stream_info(stream)).state.last_seq
    from_seq = start.last_seq + 1 if start else 1
    done = 0
    if child:  # one child's events: few, read by batched direct gets from the log itself
        for msg in await jetstream.BatchedDirectGet(nc).all_on(stream, subject_filter, 1, wait):
            verifier.feed(jetstream.stored_sequence(msg), jetstream.stored_time(msg), jetstream.stored_subject(msg),
                          msg.headers or {}, msg.data)
    else:
        async for seq, ns, subject, headers, data in raw_replay(
            LogReader(nc, wait), from_seq, stream=stream, subject_filter=subject_filter, consumer=consumer
        ):
            verifier.feed(seq, jetstream.datetime_from_ns(ns), subject, headers, data)
            done += 1
            if progress is not None and done % 5000 == 0:
                progress(seq, total)
    if progress is not None:
        progress(total, total)
    return verifier.finish()
