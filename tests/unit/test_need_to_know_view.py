"""What a sector may read of a child (services/reads/view.py): whole what it is party to, a stand-in
for the rest, and its rules decide on the stand-ins exactly as on the whole history."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from refbus.community import community
from refbus.contracts import codec
from refbus.contracts.events import (
    ConsentWithdrawn,
    Event,
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralInProgress,
    ReferralReceived,
    ReferralRejected,
    ReferralRequested,
)
from refbus.contracts.vocabulary import (
    SERVICE_CATALOGUE,
    CancelReason,
    Guardian,
    LegalBasis,
    Outcome,
    RejectReason,
    Sector,
)
from refbus.services.reads import view
from refbus.services.rules import lifecycle
from refbus.services.rules.state import ChildState, apply

RECEIVER_STEPS = [(ReferralReceived, {}), (ReferralAccepted, {}), (ReferralInProgress, {}),
                  (ReferralCompleted, {"outcome": Outcome.PARTIALLY_DELIVERED}),
                  (ReferralRejected, {"reason": RejectReason.NOT_ELIGIBLE})]


def _history(seed: int) -> list[Event]:
    """A legal history of one child: a community case (case facts, consent, referrals from the sector
    that found the child), onward referrals between the other sectors, receivers' moves, a
    cancellation, and sometimes a consent withdrawal with the cancellations it owes."""
    rng = random.Random(seed)
    case = next(community(1, seed))
    state = ChildState(child=case.child)
    events: list[Event] = []
    now = datetime(2026, 11, 1, tzinfo=UTC)

    def add(event: Event) -> bool:
        try:
            lifecycle.check(state, event)
        except lifecycle.IllegalEvent:
            return False
        apply(state, event, len(events) + 1)
        events.append(event)
        return True

    def envelope(frm: Sector, to: Sector | None, correlation: uuid.UUID) -> dict[str, object]:
        return {"event_id": uuid.UUID(int=rng.getrandbits(128)), "child": case.child, "from_sector": frm,
                "to_sector": to, "occurred_at": now + timedelta(minutes=len(events)),
                "actor": "w" + f"{rng.getrandbits(32):08x}", "correlation_id": correlation}

    for event in case.events:
        assert add(event)
    for _ in range(rng.randint(0, 3)):  # onward referrals, any pair
        frm, to = rng.sample(list(Sector), 2)
        rid = uuid.UUID(int=rng.getrandbits(128))
        basis = rng.choice([LegalBasis.GUARDIAN_CONSENT, LegalBasis.CHILD_PROTECTION_DUTY])
        add(ReferralRequested(**envelope(frm, to, rid), referral_id=rid, dimension=case.events[1].dimension,  # type: ignore[arg-type, attr-defined]
                              service=rng.choice(SERVICE_CATALOGUE[to]), urgency="routine", legal_basis=basis))
    for _ in range(rng.randint(0, 12)):
        open_ones = [r for r in state.referrals.values() if r.is_open and r.referral_id not in state.owed_cancels]
        if not open_ones:
            break
        referral = rng.choice(open_ones)
        kind, fields = rng.choice(RECEIVER_STEPS)
        if rng.random() < 0.15:
            kind, fields, frm = ReferralCancelled, {"reason": CancelReason.NO_LONGER_NEEDED}, referral.referrer
        else:
            frm = referral.receiver
        add(kind(**envelope(frm, referral.counterpart(frm), referral.correlation_id),  # type: ignore[arg-type]
                 referral_id=referral.referral_id, **fields))
    if state.consent and rng.random() < 0.5:
        recorder = rng.choice(list(Sector))
        withdrawn = tuple(sorted(state.consent))
        withdrawal = ConsentWithdrawn(**envelope(recorder, None, uuid.uuid4()),  # type: ignore[arg-type]
                                      withdrawn_by=Guardian.PARENT, sectors=withdrawn)
        assert add(withdrawal)
        for rid, owed in list(state.owed_cancels.items()):
            for party in sorted(owed.parties):
                cancel = ReferralCancelled(**{**envelope(recorder, party, state.referrals[rid].correlation_id),  # type: ignore[arg-type]
                                              "causation_id": withdrawal.event_id},
                                           referral_id=rid, reason=CancelReason.CONSENT_WITHDRAWN)
                assert add(cancel)
    return events


def _rules_see(events: list[Event], child: str) -> tuple:  # type: ignore[type-arg]
    """What the rules decide on: every referral's parties, basis, status and steps; consent; open
    cases; owed cancellations; the events known; and that every event was legal where it stands."""
    state = ChildState(child=child)
    for seq, event in enumerate(events, 1):
        lifecycle.check(state, event)  # a stand-in is as legal as what it stands for
        apply(state, event, seq)
    referrals = {rid: (r.referrer, r.receiver, r.legal_basis, r.status, r.received_at, r.respond_by, r.urgency,
                       dict(r.steps), dict(r.reminded), dict(r.escalated)) for rid, r in state.referrals.items()}
    owed = {rid: (o.withdrawal.event_id, o.parties) for rid, o in state.owed_cancels.items()}
    return referrals, state.consent, state.open_cases, owed, state.event_ids, state.last_seq, state.linked_to


def _as_seen_by(sector: Sector, events: list[Event]) -> list[tuple[Event, bool]]:
    consent = view.consent_of(events)
    return [(e, False) if view.may_read(sector, e, consent) else (view.withheld(e), True) for e in events]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_the_rules_decide_on_a_sectors_view_as_on_the_whole_history(seed: int) -> None:
    events = _history(seed)
    child = events[0].child
    whole = _rules_see(events, child)
    for sector in Sector:
        seen = _as_seen_by(sector, events)
        through_the_wire = [codec.decode(codec.encode(e)) for e, _ in seen]  # stand-ins pass the decoder
        assert _rules_see(through_the_wire, child) == whole, sector


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_a_sector_reads_whole_only_what_it_is_party_to_or_its_consent_shares(seed: int) -> None:
    events = _history(seed)
    consent = view.consent_of(events)
    for sector in Sector:
        for original, (shown, is_withheld) in zip(events, _as_seen_by(sector, events), strict=True):
            party = sector in (original.from_sector, original.to_sector)
            shared_fact = original.to_sector is None and sector in consent
            assert is_withheld is not (party or shared_fact)
            if not is_withheld:
                assert shown is original
                continue
            assert shown.actor == view.PLACEHOLDER_ACTOR
            assert (shown.event_id, shown.from_sector, shown.to_sector) == (
                original.event_id, original.from_sector, original.to_sector)
            kept = KEPT | ({"reason"} if isinstance(original, ReferralCancelled) else set())
            placeholders = view.placeholders(original)
            for name in set(msgspec.structs.asdict(original)) - kept:  # every other field: a fixed placeholder
                assert name in placeholders, f"{type(original).__name__}.{name} reaches non-parties"
                assert getattr(shown, name) == placeholders[name], name
            if isinstance(original, ReferralRequested):
                assert shown.sealed is None and original.to_sector is not None  # type: ignore[attr-defined]
                assert shown.service in SERVICE_CATALOGUE[original.to_sector]  # type: ignore[attr-defined]


KEPT = {"event_id", "schema_version", "child", "from_sector", "to_sector", "occurred_at", "correlation_id",
        "causation_id", "referral_id", "urgency", "legal_basis", "respond_by", "deadline", "due_at", "sectors",
        "linked_from", "linked_to", "keys_destroyed"}
"What the rules need of an event a sector is not party to (its route, its place in the referral, timings)."


def test_a_withdrawal_s_cancellations_stay_whole_for_their_parties_and_stated_reason() -> None:
    for seed in range(400):
        events = _history(seed)
        cancels = [e for e in events if isinstance(e, ReferralCancelled) and e.reason is CancelReason.CONSENT_WITHDRAWN]
        if not cancels:
            continue
        for cancel in cancels:
            assert cancel.to_sector is not None
            shown = dict(_as_seen_by(cancel.to_sector, events))
            assert not shown[cancel]  # its party reads it whole
        return
    raise AssertionError("no history with a consent withdrawal among 400 seeds")
