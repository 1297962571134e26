"""The README's commands on a running bus, up and demo of their own, and an auditor's reads: each as a
subprocess, as a person runs it."""

import json
import re
import socket
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from refbus.contracts.events import ReferralAccepted, ReferralCompleted
from refbus.contracts.vocabulary import Outcome
from refbus.registry import write_jsonl
from refbus.services.runtime.embedded import free_port, read_record
from refbus.services.runtime.in_process import HEALTH_ORDER
from tests.factories import answer, new_child, request
from tests.integration.cli_runner import Background, Up, _env, failure, refbus

pytestmark = pytest.mark.integration


# --- README commands on the running bus -------------------------------------------------------


def test_refer_children_history_check(up: Up) -> None:
    child = new_child()
    run = refbus("refer", "--child", child, "--from", "social", "--to", "health", "--service",
                 "family_doctor_registration", "--dimension", "health", env=up.env)
    assert run.code == 0 and json.loads(run.out)["seq"] >= 1
    refused = refbus("refer", "--child", child, "--from", "social", "--to", "health", "--service",
                     "school_enrolment", "--dimension", "health", env=up.env)
    assert refused.code == 2 and "refused" in refused.last_err_line
    listed = json.loads(refbus("children", "--json", env=up.env).out)
    assert {"child": child, "events": 1} in listed or any(c["child"] == child for c in listed)
    history = refbus("history", child, env=up.env)
    assert history.code == 0 and "referral.requested" in history.out and "occurred " in history.out
    seq = json.loads(run.out)["seq"]
    first = refbus("history", child, "--upto-seq", str(seq), "--json", env=up.env)
    assert first.code == 0 and [e["event"]["type"] for e in json.loads(first.out)] == ["referral.requested"]
    check = refbus("check", "--json", env=up.env)
    assert check.code in (0, 1) and "events" in json.loads(check.out)


def test_an_unknown_child_is_exit_1_in_text_and_json(up: Up) -> None:
    child = new_child()
    failure(refbus("history", child, env=up.env), 1, "no events for " + child)
    run = refbus("history", child, "--json", env=up.env)
    assert run.code == 1 and json.loads(run.out) == [] and "no events for" in run.last_err_line


def test_import_history_in_occurred_time_and_check(up: Up, registry: Path) -> None:
    first = refbus("import", str(registry), env=up.env)
    assert first.code == 0, first.err
    assert "31 lines read: 31 events stored" in first.out
    again = refbus("import", str(registry), env=up.env)
    assert again.code == 0 and "31 lines skipped: already imported" in again.out and "0 lines read" in again.out
    restart = refbus("import", str(registry), "--restart", env=up.env)
    assert restart.code == 0 and "31 already in the log" in restart.out

    old = json.loads(registry.read_text().splitlines()[-1])
    # The timeline is in the time the facts occurred, the stored time beside it.
    run = refbus("history", old["child"], env=up.env)
    assert run.code == 0 and re.search(r"occurred 2025-03-02 10:00 \(stored \d{4}-", run.out), run.out
    as_of = refbus("history", old["child"], "--as-of", "2025-06-01", "--json", env=up.env)
    assert as_of.code == 0 and "taken as UTC" in as_of.err
    assert [e["event"]["type"] for e in json.loads(as_of.out)][:1] == ["referral.requested"]
    stored = refbus("history", old["child"], "--as-of", "2025-06-01T00:00+00:00", "--time", "stored", env=up.env)
    assert stored.code == 0 and stored.out == "" and "none stored at or before" in stored.last_err_line

    # An open referral from last year is left to an operator: the simulated sector does not work it.
    time.sleep(2.0)  # at REFBUS_SIM_SPEED=200 the simulation would have decided by now
    events = json.loads(refbus("history", old["child"], "--json", env=up.env).out)
    assert not {"referral.accepted", "referral.rejected"} & {e["event"]["type"] for e in events}
    # ... and `check` reports it once past its deadline (here: a second without change; its
    # automatic receipt, written at import, counts as a change).
    deadline = time.monotonic() + 20
    while True:
        check = refbus("check", "--stuck-after", "1", env=up.env)
        if old["child"] in check.out or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert check.code == 1 and "stuck: seq" in check.out and old["child"] in check.out, check.out
    # Durations read as a person reads them: the pilot's cases are hundreds of days past due.
    assert re.search(r"past its deadline: \w+ \d+ days ago", check.out), check.out
    assert not re.search(r"\d+ days?, \d+:\d\d:\d\d", check.out)


def test_a_checkpoint_of_another_log_is_not_followed(up: Up, registry: Path, tmp_path: Path) -> None:
    copy = tmp_path / "registry.jsonl"
    copy.write_bytes(registry.read_bytes())
    assert refbus("import", str(copy), env=up.env).code == 0
    fresh = refbus("import", str(copy), env=_env(tmp_path / "fresh"))
    assert fresh.code == 0 and "written for another log: read from the start" in fresh.out
    assert "31 events stored" in fresh.out


def test_import_places_errors_by_line(up: Up, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"type": "referral.requested", "child": "Maria"}\n\nnot json\n')
    run = refbus("import", str(broken), env=up.env)
    assert run.code == 1 and "line 1:" in run.err and "line 3:" in run.err
    assert not re.search(r"^\s*byte \d+:", run.err, re.M)


def test_health_and_pager_services_against_the_bus(up: Up) -> None:
    for name in ("health", "pager"):
        service = Background("service", name, env=up.env)
        try:
            service.wait_for("Ctrl-C stops")
            assert f"using {read_record(up.data_dir).url}" in "".join(service.err)  # type: ignore[union-attr]
            assert service.interrupt() == 130
        finally:
            service.kill()


def test_schema_check(tmp_path: Path) -> None:
    run = refbus("schema", "--check", env=_env(tmp_path / "data"), cwd=Path(__file__).resolve().parents[2])
    assert run.code == 0, run.err


# --- up and demo of their own -----------------------------------------------------------------


def test_demo_twice_says_what_it_did(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    first = refbus("demo", "--children", "3", "--sim-speed", "200", "--timeout", "30", env=env, timeout=60)
    assert first.code == 0, first.out + first.err
    assert re.search(r"the community of 3 children \(seed 7\): \d+ referrals sent", first.out)
    assert "referrals per final state" in first.out and '"event"' not in first.out + first.err  # logs in the file
    second = refbus("demo", "--children", "3", "--sim-speed", "200", "--timeout", "30", env=env, timeout=60)
    assert second.code == 0
    assert "the community of 3 children (seed 7) is already in the log: 0 new referrals sent" in second.out


def test_ctrl_c_during_a_large_demo(tmp_path: Path) -> None:
    demo = Background("demo", "--children", "5000", env=_env(tmp_path / "data"))
    try:
        demo.wait_for("started the embedded server")
        time.sleep(1.5)
        assert demo.interrupt() == 130
        assert "interrupted; stopped cleanly" in "".join(demo.err)
        assert read_record(tmp_path / "data") is None
    finally:
        demo.kill()


def test_up_with_a_health_port_gives_each_app_its_own(tmp_path: Path) -> None:
    base = free_port()
    apps = len(HEALTH_ORDER)  # the four sectors, the pager, the deadline service
    ports = [base, *(free_port() for _ in range(apps - 1))]
    if ports != list(range(base, base + apps)):  # P..P+5 must be free: find them in a row
        base = next(p for p in range(20000, 60000, 7) if all(_free(p + i) for i in range(apps)))
    up = Background("up", env=_env(tmp_path / "data", REFBUS_HEALTH_PORT=str(base)))
    try:
        up.wait_for("Ctrl-C stops")
        said = "".join(up.out)
        assert f"social {base}" in said and f"pager {base + 4}" in said and f"deadlines {base + 5}" in said
        for port in range(base, base + apps):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                assert answer.status == 200
        assert up.interrupt() == 130
    finally:
        up.kill()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- Auditors' reads (issue 16) ----------------------------------------------------------------


def test_a_history_read_needs_a_purpose_and_is_recorded(up: Up) -> None:
    child = new_child()
    refbus("refer", "--child", child, "--from", "social", "--to", "health", "--service",
           "family_doctor_registration", "--dimension", "health", env=up.env)
    no_purpose = {k: v for k, v in up.env.items() if k != "REFBUS_PURPOSE"}
    failure(refbus("history", child, env=no_purpose), 2, "needs --purpose")
    read = refbus("history", child, "--purpose", "case_work", "--as", "w1a2b3c4d", "--role", "caseworker", env=up.env)
    assert read.code == 0 and "verified: " in read.err, read.err
    trail = refbus("access", child, "--json", env=up.env)
    assert trail.code == 0
    records = json.loads(trail.out)
    assert any(r["who"] == "w1a2b3c4d" and r["purpose"] == "case_work" for r in records), records


def test_as_of_shows_each_referral_as_the_log_held_it(up: Up, tmp_path: Path) -> None:
    """A referral accepted before T and completed after it shows accepted as of T, in the time the
    facts happened (a past case, imported), and completed as of its completion."""
    child = new_child()
    t0 = datetime(2025, 3, 2, 9, 0, tzinfo=UTC)
    req = msgspec.structs.replace(request(child), occurred_at=t0)
    accepted = msgspec.structs.replace(answer(ReferralAccepted, req), occurred_at=t0 + timedelta(days=1))
    completed = msgspec.structs.replace(answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED),
                                        occurred_at=t0 + timedelta(days=10))
    registry = tmp_path / "case.jsonl"
    write_jsonl([req, accepted, completed], registry)
    assert refbus("import", str(registry), env=up.env).code == 0
    between = refbus("history", child, "--as-of", "2025-03-05T00:00+00:00", env=up.env)
    assert between.code == 0, between.err
    then = between.out.split("as of ", 1)[1]
    assert "social -> health  accepted" in then, between.out
    after = refbus("history", child, "--as-of", "2025-03-20T00:00+00:00", env=up.env)
    assert "social -> health  completed" in after.out.split("as of ", 1)[1], after.out
