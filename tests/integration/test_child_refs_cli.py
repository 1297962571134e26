"""`refbus child-ref`, `link-child` and `history` across a link, as a person runs them: subprocesses
against the embedded nats-server of a temporary data dir (JetStream on disk)."""

import json
import time
from pathlib import Path

import pytest

from refbus.services.rules.child_refs import Scheme, derive
from tests.integration.cli_runner import Run, _env, failure, refbus

pytestmark = pytest.mark.integration

CNP = "5100523400011"  # synthetic: valid by the scheme, nobody's
KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def test_a_reference_is_printed_and_a_bad_identifier_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", REFBUS_CHILD_REF_KEY=KEY_HEX)
    run = refbus("child-ref", "--cnp", CNP, env=env)
    assert run.code == 0 and run.out.strip() == derive(bytes.fromhex(KEY_HEX), Scheme.CNP, CNP)
    failure(refbus("child-ref", "--cnp", CNP[:-1] + "2", env=env), 2, "invalid CNP", "check digit")
    failure(refbus("child-ref", "--idnp", "12345", env=env), 2, "invalid IDNP", "13 digits")
    failure(refbus("child-ref", "--cpf", "529.982.247-2x", env=env), 2, "invalid CPF", "only digits")
    # Without the variable: the data dir's key, made once and kept (owner-only), the same next time.
    plain = _env(tmp_path / "data")
    first, second = refbus("child-ref", "--cpf", "529.982.247-25", env=plain), refbus(
        "child-ref", "--cpf", "52998224725", env=plain)
    assert first.code == 0 and first.out == second.out
    key_file = tmp_path / "data" / "secrets" / "child-ref.key"
    assert key_file.stat().st_mode & 0o077 == 0
    assert key_file.read_text().strip() not in first.out + first.err
    random = {refbus("child-ref", "--undocumented", env=plain).out.strip() for _ in range(2)}
    assert len(random) == 2


def _history_holding(child: str, seq: int, env: dict[str, str]) -> Run:
    # `history` reads the child index, which a freshly started embedded server fills from the log
    # asynchronously (the verified read does not wait for the log's count): read again until it has seq.
    for _ in range(20):
        run = refbus("history", child, env=env)
        assert run.code == 0, run.err
        if str(seq) in [line.split()[0] for line in run.out.splitlines()]:
            return run
        time.sleep(0.25)
    raise AssertionError(f"seq {seq} never appeared in the history of {child}")


def test_a_linked_history_follows_the_link_and_a_second_link_is_refused(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", REFBUS_CHILD_REF_KEY=KEY_HEX)
    old = refbus("child-ref", "--undocumented", env=env).out.strip()
    new = refbus("child-ref", "--cnp", CNP, env=env).out.strip()
    refer = ("--from", "social", "--to", "justice", "--service", "identity_documents", "--dimension",
             "family_and_social")
    before = json.loads(refbus("refer", "--child", old, *refer, env=env).out)["seq"]

    linked = refbus("link-child", old, "--cnp", CNP, "--sector", "justice", env=env)
    assert linked.code == 0, linked.err
    assert linked.out.startswith(f"linked {old} -> {new}") and CNP not in linked.out + linked.err
    assert refbus("link-child", old, "--to", new, "--sector", "justice", env=env).out.startswith(
        f"{old} was already linked to {new}")
    after = json.loads(refbus("refer", "--child", new, "--from", "justice", "--to", "health", "--service",
                              "health_assessment", "--dimension", "health", env=env).out)["seq"]

    history = _history_holding(new, after, env)
    lines = history.out.splitlines()
    assert [int(line.split()[0]) for line in lines] == sorted(int(line.split()[0]) for line in lines)
    [requested_before] = [line for line in lines if line.split()[0] == str(before)]
    assert "referral.requested" in requested_before and f"[recorded under {old}]" in requested_before
    [requested_after] = [line for line in lines if line.split()[0] == str(after)]
    assert "recorded under" not in requested_after
    assert any("child.reference-linked" in line for line in lines)
    assert "every signature and chain holds" in history.err and f"(linked {old})" in history.err
    records = json.loads(refbus("history", new, "--json", env=env).out)
    assert [r["seq"] for r in records if r.get("recorded_under") == old] == [before]

    old_history = refbus("history", old, env=env)
    assert old_history.code == 0
    assert f"{old} was linked to {new}" in old_history.err and f"refbus history {new}" in old_history.err
    assert str(after) not in [line.split()[0] for line in old_history.out.splitlines()]

    other = refbus("child-ref", "--undocumented", env=env).out.strip()
    failure(refbus("link-child", old, "--to", other, "--sector", "justice", env=env), 1,
            "link refused", f"already linked to {new}", "at most once")
    failure(refbus("link-child", new, "--to", other, "--sector", "justice", env=env), 1,
            "link refused", "derived reference is never linked onward")
    assert refbus("history", other, env=env).code == 1  # nothing of either refused link was stored
