"""Who looked: every read of a child's history or export by a person is recorded, before it is
shown, in REFBUS_ACCESS (append-only), one subject per child, each record chained on the child's
previous record and signed by the bus (the same headers as events: services/audit/proof.py). A
read without a purpose from the closed list is refused."""

from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from refbus.contracts import subjects
from refbus.services.audit import proof
from refbus.services.audit.keys import BUS, Keyring
from refbus.services.audit.purposes import Purpose, Role
from refbus.services.audit.verify import Finding, Report
from refbus.services.eventstore import jetstream


class AccessRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    who: str
    role: Role
    at: datetime
    child: str
    purpose: Purpose
    what: str
    "history, export, timeline"


class NoPurpose(ValueError):
    """A read of a child's history or export without a purpose from the closed list: refused."""


_decoder = msgspec.json.Decoder(AccessRecord)


def purpose_of(text: str | None) -> Purpose:
    if not text:
        raise NoPurpose(f"a purpose is required: one of {', '.join(p.value for p in Purpose)}")
    try:
        return Purpose(text)
    except ValueError:
        raise NoPurpose(f"unknown purpose {text!r}: one of {', '.join(p.value for p in Purpose)}") from None


async def record_access(
    nc: NATS, ring: Keyring, *, who: str, role: Role | str, child: str, purpose: str | None, what: str,
    wait: float = 5.0, attempts: int = 5,
) -> AccessRecord:
    """Record the read before it happens; raises NoPurpose (nothing recorded, nothing shown)."""
    record = AccessRecord(who=who, role=Role(role), at=datetime.now(UTC), child=child, purpose=purpose_of(purpose),
                          what=what)
    data = msgspec.json.encode(record)
    js = nc.jetstream(timeout=wait)
    subject = subjects.access_subject(child)
    for _ in range(attempts):
        last = await jetstream.direct_get(nc, subjects.ACCESS_STREAM, {"last_by_subj": subject}, wait)
        prev = proof.parse_link((last.headers or {}).get(proof.CHAIN)) if last is not None else None
        link = proof.next_link(prev or proof.START, data)
        headers = {proof.CHAIN: proof.format_link(link), proof.KEY: ring.current(BUS) or "",
                   jetstream.EXPECTED_LAST_SUBJECT_SEQUENCE: str(jetstream.stored_sequence(last) if last else 0)}
        messages = [(subject, data, headers)]
        proof.sign_messages(messages, ring.private)  # type: ignore[arg-type]
        try:
            await js.publish(subject, data, headers=headers)
            return record
        except APIError as exc:
            if exc.err_code not in jetstream.WRONG_LAST_SEQUENCE:
                raise
    raise RuntimeError(f"could not record the access to {child}: the trail kept moving")


async def list_access(nc: NATS, child: str, wait: float = 5.0) -> list[AccessRecord]:
    messages = await jetstream.BatchedDirectGet(nc).all_on(
        subjects.ACCESS_STREAM, subjects.access_subject(child), 1, wait
    )
    found = []
    for msg in messages:
        try:
            found.append(_decoder.decode(msg.data))
        except msgspec.DecodeError:
            continue
    return found


async def verify_access(nc: NATS, ring: Keyring, wait: float = 5.0, consumer: str | None = None) -> Report:
    """Every access record chained on its child's previous one and signed by a bus key. `consumer`:
    the trail is read through a consumer of that name (replay.raw_replay)."""
    from refbus.services.audit.keys import trusted_records
    from refbus.services.eventstore.reader import LogReader
    from refbus.services.eventstore.replay import raw_replay

    records = await trusted_records(nc, ring, wait)
    report = Report()
    heads: dict[str, proof.Link] = {}

    def bad(seq: int, kind: str, detail: str, child: str | None = None) -> None:
        report.counts[kind] = report.counts.get(kind, 0) + 1
        report.findings.append(Finding(seq, kind, detail, child))

    reader = LogReader(nc, wait)
    async for seq, _ns, subject, headers, data in raw_replay(
        reader, 1, stream=subjects.ACCESS_STREAM, subject_filter=subjects.ACCESS_SUBJECTS, consumer=consumer
    ):  # streaming: memory holds one link per child
        report.events += 1
        report.first_seq = report.first_seq or seq
        report.last_seq = seq
        child = subject.rsplit(".", 1)[-1]
        link, sig = proof.parse_link(headers.get(proof.CHAIN)), proof.parse_sig(headers.get(proof.SIG))
        kid = headers.get(proof.KEY)
        if link is None or sig is None or kid is None:
            bad(seq, "unsigned", "access record without chain or signature", child)
            continue
        head = heads.get(child, proof.START)
        if link.pos != head.pos + 1:
            bad(seq, "removed" if link.pos > head.pos + 1 else "reordered", f"access chain position {link.pos}", child)
        elif proof.chain_hash(head.hash, data) != link.hash:
            bad(seq, "altered", "access record does not match its signed chain hash", child)
        heads[child] = link
        record = records.get(kid)
        i, n, signature, path = sig
        root = proof.root_from(link.hash, i, n, path)
        if record is None or record.owner != BUS or root is None or not proof.verify_signature(
            record.public_key, signature, proof.signed_root(n, root)
        ):
            bad(seq, "bad-signature", "access record not signed by the bus", child)
    return report
