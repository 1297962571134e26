"""`refbus certs` (issue 17): a local CA and a server certificate signed by it, private keys owner-only,
the CA kept on a re-run, and one clear line (exit 2) for what cannot be done."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from refbus.services.runtime.settings import Settings, SettingsError
from refbus.services.runtime.tls import CertError, ServerTls, make_certs

REFBUS = str(Path(sys.executable).parent / "refbus")


def _refbus(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`refbus` as a person runs it (in-process, its logging would outlive the test's stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")}
    if data_dir is not None:
        env["REFBUS_DATA_DIR"] = str(data_dir)
    return subprocess.run([REFBUS, *args], env=env, capture_output=True, text=True, timeout=60)


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(folder: Path, name: x509.DNSName | x509.IPAddress) -> None:
    verifier = PolicyBuilder().store(Store([_certificate(folder / "ca.pem")])).build_server_verifier(name)
    verifier.verify(_certificate(folder / "server.pem"), [])


def test_the_files_the_names_and_the_chain(tmp_path: Path) -> None:
    import ipaddress

    folder = tmp_path / "tls"
    made = make_certs(folder, ["nats-1", "refbus-nats", "10.1.2.3"], days=30)
    assert sorted(p.name for p in folder.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600, key
        assert (folder / key).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    names = _certificate(folder / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "nats-1", "refbus-nats"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.1.2.3"]
    for name in ("localhost", "nats-1"):
        _verify(folder, x509.DNSName(name))
    _verify(folder, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with pytest.raises(VerificationError):
        _verify(folder, x509.DNSName("nats-9"))  # a name it was not made for
    assert (made.not_after - _certificate(folder / "server.pem").not_valid_before_utc).days == 30
    assert ServerTls.in_folder(folder) == ServerTls(folder / "server.pem", folder / "server.key", folder / "ca.pem")


def test_a_rerun_keeps_the_ca_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    assert _refbus("certs", "--out", str(folder), "--host", "nats-1").returncode == 0
    ca, server = (folder / "ca.pem").read_bytes(), (folder / "server.pem").read_bytes()
    again = _refbus("certs", "--out", str(folder), "--host", "nats-2")
    assert again.returncode == 0
    assert again.stdout.splitlines()[0].startswith("keeping the CA in")
    assert (folder / "ca.pem").read_bytes() == ca and (folder / "server.pem").read_bytes() != server
    _verify(folder, x509.DNSName("nats-2"))  # the new server certificate, by the kept CA
    assert _refbus("certs", "--out", str(folder), "--force").returncode == 0
    assert (folder / "ca.pem").read_bytes() != ca
    _verify(folder, x509.DNSName("localhost"))


def test_the_default_folder_turns_tls_on_for_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"REFBUS_DATA_DIR": str(tmp_path / "data")})
    assert settings.embedded_tls() is None and settings.tls_context() is None
    assert _refbus("certs", data_dir=tmp_path / "data").returncode == 0
    assert settings.embedded_tls() is not None and settings.tls_context() is not None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--days", "0"], "--days: between 1 and 36500"),
        (["--days", "soon"], "--days: a whole number of days"),
        (["--host", "not a host"], "neither a hostname"),
        (["--host", ""], "neither a hostname"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    run = _refbus("certs", "--out", str(tmp_path / "tls"), *args)
    assert run.returncode == 2
    err = run.stderr
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "tls" / "server.key").exists()


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, words in ((a_file, "is not a directory"), (a_file / "below", "cannot make")):
        run = _refbus("certs", "--out", str(out))
        err = run.stderr.strip()
        assert run.returncode == 2
        assert words in err and len(err.splitlines()) == 1 and err.startswith("refbus: "), err


def test_half_a_ca_or_a_key_of_another_ca_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    make_certs(folder)
    (folder / "ca.key").unlink()
    with pytest.raises(CertError, match="half a CA"):
        make_certs(folder)
    other = make_certs(tmp_path / "other")
    (folder / "ca.key").write_bytes((other.folder / "ca.key").read_bytes())
    with pytest.raises(CertError, match="is not the key of"):
        make_certs(folder)
    make_certs(folder, force=True)  # --force starts afresh


def test_a_ca_setting_that_is_no_ca_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"REFBUS_TLS_CA names .* which is not a file"):
        Settings.from_env({"REFBUS_TLS_CA": str(tmp_path / "missing.pem")}).tls_context()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SettingsError, match="does not hold a PEM CA certificate"):
        Settings.from_env({"REFBUS_TLS_CA": str(junk)}).tls_context()
