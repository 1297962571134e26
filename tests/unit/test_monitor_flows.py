"""The monitor's counting from subjects and headers alone (services/monitor/flows.py), and its
snapshot's shape: nothing of a child is kept."""

import json
import uuid

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.monitor.flows import FlowCounts
from refbus.services.monitor.server_state import _connections, _from_jsz, dead_letter_sector
from refbus.services.runtime import metrics
from tests.factories import new_child

S = 1_000_000_000


def _see(counts: FlowCounts, frm: Sector, to: Sector | None, kind: str, corr: str, seq: int, at_s: float) -> None:
    counts.see(subjects.event_subject(new_child(), frm, to), kind, corr, seq, int(at_s * S))


def test_a_referral_is_counted_through_the_funnel_and_closed() -> None:
    counts = FlowCounts()
    corr = str(uuid.uuid4())
    _see(counts, Sector.SOCIAL, None, "case.opened", corr, 1, 100)
    _see(counts, Sector.SOCIAL, Sector.HEALTH, "referral.requested", corr, 2, 100)
    _see(counts, Sector.HEALTH, Sector.SOCIAL, "referral.received", corr, 3, 101)
    assert counts.open_by_receiver()["health"]["requested"] == 1
    _see(counts, Sector.HEALTH, Sector.SOCIAL, "referral.accepted", corr, 4, 102)
    assert counts.open_by_receiver()["health"]["accepted"] == 1
    assert counts.overdue_by_receiver(int(200 * S), after_s=50)["health"] == 1
    assert counts.overdue_by_receiver(int(120 * S), after_s=50)["health"] == 0
    _see(counts, Sector.HEALTH, Sector.SOCIAL, "referral.completed", corr, 5, 103)
    assert sum(counts.open_by_receiver()["health"].values()) == 0
    assert counts.referrals[("social", "health")] == 1
    assert counts.events[("health", "social")] == 3
    assert counts.funnel()["requested"] == counts.funnel()["received"] == counts.funnel()["completed"] == 1
    assert counts.seen_seq == 5
    assert counts.rates_per_min(int(130 * S))[("social", "health")] == 1
    assert counts.rates_per_min(int(300 * S))[("social", "health")] == 0


def test_nothing_of_a_child_or_a_header_outside_the_contract_is_kept() -> None:
    counts = FlowCounts()
    child = new_child()
    counts.see(f"refbus.ev.{child}.social.health", f"referral.requested {child}", "x", 1, S)
    counts.see(f"refbus.ev.{child}.{child}.health", "referral.requested", "x", 2, S)
    counts.see("refbus.ev.too.short", "referral.requested", "x", 3, S)
    kept = json.dumps([list(counts.events.items()), list(counts.by_type.items()), counts.funnel()], default=str)
    assert child not in kept and not metrics.CHILD_LIKE.search(kept)
    assert counts.by_type == {metrics.OTHER: 1}


def test_deadline_events_are_counted_by_the_sector_they_are_addressed_to() -> None:
    counts = FlowCounts()
    deadline_types = sorted(t for t in metrics.EVENT_TYPES if "overdue" in t or "escalat" in t)
    assert deadline_types, "the contract's deadline events (services/deadlines)"
    for seq, kind in enumerate(deadline_types, 1):
        _see(counts, Sector.SOCIAL, Sector.HEALTH, kind, "c", seq, seq)
    _see(counts, Sector.SOCIAL, Sector.HEALTH, "referral.late-ish", "c", 99, 99)  # not in the contract: other
    assert counts.deadline_events == {"health": len(deadline_types)}


def test_server_state_from_jsz_and_connz() -> None:
    jsz = {
        "storage": 10, "config": {"max_storage": 100},
        "account_details": [{"stream_detail": [{
            "name": "REFBUS", "config": {"max_bytes": -1, "max_msgs": -1},
            "state": {"messages": 5, "bytes": 50, "last_seq": 5},
            "consumer_detail": [
                {"name": "inbox-health", "config": {"durable_name": "inbox-health"}, "num_pending": 3,
                 "num_ack_pending": 2, "num_redelivered": 1, "num_waiting": 1},
                {"name": "ordered-xyz", "config": {"deliver_subject": "_INBOX.admin.x"}, "num_pending": 9},
                {"name": "pushy", "config": {"deliver_subject": "refbus.seal"}},
            ],
        }]}],
    }
    state = _from_jsz(jsz)
    assert state.streams["REFBUS"].messages == 5 and state.storage_limit == 100
    assert list(state.consumers) == ["inbox-health"] and state.consumers["inbox-health"].num_pending == 3
    assert state.foreign_deliveries == ["REFBUS/pushy"]  # the ordered one delivers to a reply inbox
    connz = {"connections": [{"name": "refbus-health"}, {"name": "refbus-health"}, {"name": "someone"}, {}]}
    assert _connections(connz)["health"] == 2 and _connections(connz)["social"] == 0
    assert dead_letter_sector("refbus.dead.justice") == "justice"
    assert dead_letter_sector("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFBUS.inbox-social") == "social"
    assert dead_letter_sector("refbus.dead.c0123456789abcdef") is None
