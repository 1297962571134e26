"""Fault tests get their own nats-server (`own_server`, tests/conftest.py), since they kill and restart it."""


import pytest

FAULT_RESULTS: list = []


@pytest.fixture
def fault_results() -> list:
    return FAULT_RESULTS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not FAULT_RESULTS:
        return
    terminalreporter.section("fault results")
    terminalreporter.write_line(f"{'fault':<52}{'acked':>7}{'found':>7}{'lost':>6}{'doubled':>8}{'resumed':>10}")
    for r in FAULT_RESULTS:
        resumed = f"{r.resumed_after_s:.3f}s" if r.resumed_after_s is not None else "-"
        terminalreporter.write_line(
            f"{r.fault:<52}{r.acknowledged:>7}{r.found:>7}{r.acknowledged - r.found:>6}{r.doubled:>8}{resumed:>10}"
            + (f"  {r.note}" if r.note else "")
        )
