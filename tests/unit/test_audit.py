"""The log audit behind `refbus check`, on hand-made logs."""

from datetime import UTC, datetime, timedelta

from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralReceived
from refbus.contracts.vocabulary import Outcome, Urgency
from refbus.services.rules.audit import audit
from tests.factories import answer, new_child, request

NOW = datetime.now(UTC)


def test_a_clean_log_has_no_findings() -> None:
    req = request(new_child())
    done = [req, answer(ReferralReceived, req), answer(ReferralAccepted, req),
            answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)]
    report = audit(((i, e, None) for i, e in enumerate(done, 1)), NOW)
    assert report.clean and report.events == 4 and report.open_referrals == 0


def test_duplicates_illegal_moves_gaps_and_unreadable_are_found() -> None:
    req = request(new_child())
    accepted = answer(ReferralAccepted, req)
    log = [(1, req, None), (2, accepted, None), (3, accepted, None), (4, answer(ReferralAccepted, req), None),
           (7, None, "not JSON")]
    report = audit(log, NOW)
    assert [f.kind for f in report.findings] == ["duplicate", "illegal", "gap", "unreadable"]
    assert report.findings[2].detail == "sequences 5..6 are missing"


def test_a_referral_past_its_deadline_is_stuck() -> None:
    child = new_child()
    urgent = request(child, urgency=Urgency.URGENT)  # to be completed within 7 days
    routine = request(child)  # within 30
    log = [urgent, answer(ReferralReceived, urgent), answer(ReferralAccepted, urgent),
           routine, answer(ReferralReceived, routine), answer(ReferralAccepted, routine)]
    report = audit(((i, e, None) for i, e in enumerate(log, 1)), NOW + timedelta(days=8))
    stuck = [f for f in report.findings if f.kind == "stuck"]
    assert len(stuck) == 1 and str(urgent.referral_id) in stuck[0].detail and "completed" in stuck[0].detail


def test_an_unreceived_request_is_stuck_within_minutes() -> None:
    req = request(new_child())
    sent = req.occurred_at  # not NOW (the module's import): a long suite runs this minutes later
    assert audit([(1, req, None)], sent + timedelta(minutes=5)).clean
    report = audit([(1, req, None)], sent + timedelta(minutes=20))
    assert report.count("stuck") == 1 and "received" in report.findings[0].detail


def test_respond_by_sets_the_deadline_of_a_request() -> None:
    req = request(new_child(), respond_by=NOW + timedelta(hours=1))
    log = [(1, req, None), (2, answer(ReferralReceived, req), None)]
    assert audit(log, NOW + timedelta(minutes=30)).clean
    report = audit(log, NOW + timedelta(hours=2))
    assert report.count("stuck") == 1 and "respond_by" in report.findings[0].detail
