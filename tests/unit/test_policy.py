"""The simulated sector policy drives every referral to a terminal state, deterministically."""

import asyncio
from datetime import timedelta

import pytest

from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Sector, Status
from refbus.services.rules.decisions import step_event
from refbus.services.rules.policy import SimulatedSector
from refbus.services.rules.state import fold
from tests.factories import new_child, request


def run_to_end(policy: SimulatedSector, to: Sector, service: str):
    child = new_child()
    req = request(child, frm=Sector.SOCIAL if to != Sector.SOCIAL else Sector.HEALTH, to=to, service=service)
    events = [req]
    steps = []
    for _ in range(20):
        state = fold(child, enumerate(events, 1))
        referral = state.referrals[req.referral_id]
        step = asyncio.run(policy.next_step(referral, state))
        if step is None:
            return referral, steps
        steps.append(step)
        assert step.delay >= 0
        when = req.occurred_at + timedelta(seconds=len(events))
        event = step_event(b"test key", step, referral, child, to, when, req.event_id)
        events.append(event)
    raise AssertionError("the policy never finished")


@pytest.mark.parametrize("sector", list(Sector))
def test_every_service_reaches_a_terminal_state(sector: Sector) -> None:
    policy = SimulatedSector(sector)
    for service in SERVICE_CATALOGUE[sector]:
        for _ in range(10):
            referral, _steps = run_to_end(policy, sector, service)
            assert not referral.is_open
            assert referral.status in (Status.REJECTED, Status.COMPLETED, Status.FAILED)


def test_decisions_are_deterministic_per_referral() -> None:
    child = new_child()
    req = request(child)
    state = fold(child, [(1, req)])
    referral = state.referrals[req.referral_id]
    first = asyncio.run(SimulatedSector(Sector.HEALTH, seed=3).next_step(referral, state))
    again = asyncio.run(SimulatedSector(Sector.HEALTH, seed=3).next_step(referral, state))
    assert first == again


def test_rates_are_roughly_those_configured() -> None:
    policy = SimulatedSector(Sector.HEALTH)
    outcomes = [run_to_end(policy, Sector.HEALTH, "vaccination")[0].status for _ in range(400)]
    rejected = outcomes.count(Status.REJECTED) / len(outcomes)
    assert 0.04 < rejected < 0.22  # the default reject rate is 0.12
