"""What can be checked of deploy/ without docker or systemd running.

Docker cannot run here, so the container files are checked for what they
promise: the agent image's requirements resolve without torch, the packages it
copies are all the agent imports, every COPY source exists and passes its
.dockerignore, the compose file mounts what the broker config reads. The
systemd units go through `systemd-analyze verify` when it is installed. The
example configs are validated by the real config models.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
import typing
from pathlib import Path

import pytest

from protocol.envelope import MAX_PAYLOAD

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
FIRST_PARTY = {"edgeloop", "protocol", "agent", "trainer", "bench"}
NEVER_ON_AN_AGENT = {"torch", "torchvision", "fastapi", "uvicorn", "starlette", "onnxruntime-gpu"}


# --- Dockerfiles ------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if pending.strip():
                word, _, rest = pending.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for word, args in instructions(dockerfile):
        if word == "COPY" and "--from=" not in args:
            sources += [a.rstrip("/") for a in args.split()[:-1] if not a.startswith("--")]
    return sources


def dockerignore_allows(ignore_file: Path, path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for raw in ignore_file.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            included = negate
    return included


@pytest.mark.parametrize("name", ["agent", "server"])
def test_dockerfile_copies_paths_that_exist_and_pass_its_dockerignore(name):
    dockerfile = DOCKER / f"{name}.Dockerfile"
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    sources = copy_sources(dockerfile)
    assert "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert dockerignore_allows(ignore, source), f"{ignore.name} keeps {source} out of the build context"
    assert not dockerignore_allows(ignore, ".venv/bin/python"), "the venv must stay out of the build context"
    assert not dockerignore_allows(ignore, "edgeloop-data/edgeloop.db")


@pytest.mark.parametrize("name,service", [("agent", "agent"), ("server", "server")])
def test_dockerfile_runs_unprivileged_and_checks_its_config_first(name, service):
    steps = instructions(DOCKER / f"{name}.Dockerfile")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final image must not run as root"
    assert any(word == "HEALTHCHECK" for word, _ in final)
    cmd = json.loads(next(args for word, args in final if word == "CMD"))
    script = cmd[-1]
    check = script.index(f"edgeloop {service} --check-config")
    assert check < script.index(f"exec edgeloop {service} --config"), "check the config, then exec the service"
    assert "&&" in script[check:], "a failed check must stop the start"


def test_agent_image_has_no_trainer_code():
    copied = {s.split("/")[0] for s in copy_sources(DOCKER / "agent.Dockerfile")}
    assert copied & FIRST_PARTY == {"edgeloop", "protocol", "agent"}
    assert "'.[agent]'" in (DOCKER / "agent.Dockerfile").read_text()


def test_agent_modules_need_nothing_the_agent_image_lacks():
    """Import every agent module with the packages the image does not hold made unimportable."""
    copied = {s.split("/")[0] for s in copy_sources(DOCKER / "agent.Dockerfile")}
    blocked = sorted((FIRST_PARTY - copied) | {"torch", "torchvision", "fastapi", "uvicorn", "starlette"})
    modules = sorted(f"agent.{p.stem}" for p in (ROOT / "agent").glob("*.py") if p.stem != "__main__")
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not in the agent image")
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_server_image_pins_the_torch_the_makefile_pins():
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (DOCKER / "server.Dockerfile").read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf"'{package}==([^']+)'", makefile)[1]
        assert f"ARG {arg}={pinned}" in dockerfile, f"{package}: Makefile pins {pinned}"


@pytest.mark.slow
def test_agent_image_requirements_resolve_without_torch(tmp_path):
    spec = re.search(r"pip install '(\.\[[a-z,]+\])'", (DOCKER / "agent.Dockerfile").read_text())[1]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
         "--quiet", "--report", str(report), "--target", str(tmp_path / "target"), spec],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "opencv-python-headless", "paho-mqtt", "numpy", "edgeloop"} <= names
    assert not names & NEVER_ON_AN_AGENT, sorted(names & NEVER_ON_AN_AGENT)


# --- the agent image's healthcheck --------------------------------------------

def test_agent_healthcheck_follows_the_broker_connection(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = tmp_path / "agent.toml"
    config.write_text(f'agent_id = "cam-1"\n[mqtt]\nport = {port}\n')
    check = [sys.executable, str(DOCKER / "agent-healthcheck.py"), str(config)]
    with listener:
        down = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert down.returncode == 1 and "no established connection" in down.stdout
        with socket.create_connection(("127.0.0.1", port)), listener.accept()[0]:
            up = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, up.stdout
    missing = subprocess.run(check[:2] + [str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "cannot read" in missing.stdout


# --- compose ------------------------------------------------------------------

def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _default(value: str) -> str:
    """${NAME:-default} -> default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _mounts(service: dict) -> list[tuple[str, str]]:
    return [tuple(_default(v).split(":")[:2]) for v in service.get("volumes", [])]


def test_compose_mounts_what_the_broker_config_reads():
    compose = _compose()
    assert set(compose["services"]) == {"mosquitto", "server"}
    mosquitto = compose["services"]["mosquitto"]
    mounts = _mounts(mosquitto)
    named = set(compose.get("volumes") or {})
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    read = re.findall(r"^(?:password_file|acl_file|cafile|certfile|keyfile|persistence_location) (\S+)$", conf, re.M)
    assert len(read) >= 6
    for path in read:
        mount = [(src, dst) for src, dst in mounts if path.startswith(dst.rstrip("/") + "/")]
        assert mount, f"mosquitto.conf reads {path}, which no volume of the mosquitto service provides"
        src, dst = mount[0]
        if src in named:
            continue
        host = (DOCKER / src).resolve()
        if "secrets" in Path(src).parts:
            assert "docker/secrets/" in (DEPLOY / ".gitignore").read_text(), "secrets must be git-ignored"
        else:
            assert (host / path[len(dst.rstrip("/")) + 1:]).exists(), f"{path} -> {host}: missing"


def test_compose_server_service():
    compose = _compose()
    server = compose["services"]["server"]
    assert (DOCKER / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert server["network_mode"] == "service:mosquitto"
    for src, _dst in _mounts(server):
        if src not in (compose.get("volumes") or {}) and "secrets" not in Path(src).parts:
            assert (DOCKER / src).exists(), f"the server mounts {src}, which does not exist"
    for name, value in server["environment"].items():
        assert ":?" in value, f"{name}: a secret must be required (${{VAR:?message}}), never defaulted"


def _compose_scale() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "compose.scale.yaml").read_text())


def test_compose_scale_layout():
    """One PostgreSQL, the broker, one web server, scalable collectors and workers on one store URL."""
    compose = _compose_scale()
    services = compose["services"]
    assert set(services) == {"postgres", "mosquitto", "server", "collector", "worker"}
    assert services["mosquitto"]["volumes"] == _compose()["services"]["mosquitto"]["volumes"]
    assert [_default(p).split(":")[-1] for p in services["mosquitto"]["ports"]] == ["8883"]
    assert "ports" not in services["postgres"], "PostgreSQL stays on the compose network"
    from trainer.roles.cli import ROLES
    for role in ("server", *ROLES):
        svc = services[role]
        script = svc["command"][-1]
        check = script.index(f"edgeloop {role} --check-config /etc/edgeloop/server.toml")
        assert check < script.index(f"exec edgeloop {role} --config /etc/edgeloop/server.toml") and "&&" in script
        env = svc["environment"]
        assert env["EDGELOOP_STORE_URL"].startswith("postgresql://edgeloop:${EDGELOOP_PG_PASSWORD:?")
        assert all(":?" in v for v in env.values()), "secrets must be required, never defaulted"
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        toml = [src for src, dst in _mounts(svc) if dst == "/etc/edgeloop/server.toml"]
        assert toml == ["../examples/server-scale.toml"] and (DOCKER / toml[0]).is_file()
    for role in ROLES:  # no HTTP port: the image's HTTP healthcheck cannot apply; a client id of their own
        assert services[role]["healthcheck"] == {"disable": True}
        assert "--client-id" in services[role]["command"][-1] and "$$(hostname)" in services[role]["command"][-1]
    assert ":?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_compose_publishes_only_the_agent_port_of_the_broker():
    ports = [_default(p).split(":") for p in _compose()["services"]["mosquitto"]["ports"]]
    published = {int(container) for _host, container in ports}
    assert 8883 in published
    assert not published & {1883, 8884}, "only the TLS agent listener may be reachable from outside"


def test_env_examples_name_every_variable_the_deploy_files_read():
    compose_vars = {v for f in ("compose.yaml", "compose.scale.yaml")
                    for v in re.findall(r"\$\{([A-Z_]+)", (DOCKER / f).read_text())}
    env_example = (DOCKER / "env.example").read_text()
    for name in compose_vars:
        assert re.search(rf"^#? ?{name}=", env_example, re.M), f"{name} is missing from env.example"
    agent = tomllib.loads((DEPLOY / "examples" / "agent.toml").read_text())
    assert f"{agent['mqtt']['password_env']}=" in (DEPLOY / "systemd" / "agent.env.example").read_text()
    from trainer.server.config import TOKEN_ENV
    assert f"{TOKEN_ENV}=" in (DEPLOY / "systemd" / "server.env.example").read_text()


# --- example configs ---------------------------------------------------------

def test_example_agent_config_is_valid():
    from agent.config import parse_config
    path = DEPLOY / "examples" / "agent.toml"
    cfg = parse_config(tomllib.loads(path.read_text()), Path("/etc/edgeloop"), str(path))
    assert cfg.mqtt.username == cfg.agent_id, "the broker ACL confines an agent by its username"
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert str(cfg.data_dir) == "/var/lib/edgeloop-agent"  # the unit's StateDirectory, the image's volume
    assert cfg.updates.trusted_key_files, "agents must trust the signing key"


def test_example_server_config_is_valid():
    from trainer.server.config import ServerConfig
    cfg = ServerConfig.model_validate(tomllib.loads((DEPLOY / "examples" / "server.toml").read_text()))
    assert cfg.mqtt.username == "server@edgeloop" and cfg.mqtt.port == 8884 and cfg.mqtt.tls and cfg.mqtt.ca_file
    assert cfg.publish.mqtt_port == 8884 and cfg.publish.mqtt_tls and cfg.publish.mqtt_ca_file
    assert str(cfg.store.data_dir) == "/var/lib/edgeloop"


def test_example_scale_config_is_valid_for_every_role():
    from trainer.roles.cli import ROLES, for_role
    from trainer.server.config import ServerConfig
    cfg = ServerConfig.model_validate(tomllib.loads((DEPLOY / "examples" / "server-scale.toml").read_text()))
    assert cfg.store.url.startswith("postgresql://") and ":" not in cfg.store.url.split("//")[1].split("@")[0], \
        "the password belongs in $EDGELOOP_STORE_URL, not the file"
    assert not cfg.roles.collector and not cfg.roles.worker and cfg.mqtt.shared_group
    assert cfg.retention.hard_limit_bytes
    for role in ROLES:
        run = for_role(cfg, role)
        assert not run.http.enabled and getattr(run.roles, role)


def test_broker_packet_limit_fits_the_largest_protocol_message():
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    limit = int(re.search(r"^max_packet_size (\d+)$", conf, re.M)[1])
    # fixed header (5) + topic (2 + at most ~220) + packet id (2) + properties
    assert MAX_PAYLOAD + 512 <= limit <= MAX_PAYLOAD + 64 * 1024


# --- certificates ---------------------------------------------------------------

def _serve_tls_once(context: ssl.SSLContext) -> tuple[int, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def _handshake(port: int, client: ssl.SSLContext, name: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with client.wrap_socket(sock, server_hostname=name):
            pass


def test_make_certs_gives_a_broker_certificate_agents_can_verify(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    script = DEPLOY / "mosquitto" / "make-certs.sh"
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    for args in (["broker.example.com"], ["--client", "cam-1"]):
        made = subprocess.run([str(script), "--ca-dir", str(ca_dir), "--out", str(out), *args],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    assert (ca_dir / "ca.key").stat().st_mode & 0o077 == 0 and (out / "server.key").stat().st_mode & 0o077 == 0
    assert not (out / "ca.key").exists(), "the CA key must not go to the broker"

    broker = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    broker.load_cert_chain(out / "server.crt", out / "server.key")
    broker.load_verify_locations(out / "ca.crt")
    broker.verify_mode = ssl.CERT_REQUIRED  # also proves the --client certificate
    agent = ssl.create_default_context(cafile=str(out / "ca.crt"))
    agent.load_cert_chain(out / "cam-1.crt", out / "cam-1.key")
    for name in ("broker.example.com", "localhost", "mosquitto", "127.0.0.1"):
        port, thread = _serve_tls_once(broker)
        _handshake(port, agent, name)
        thread.join(10)
    port, thread = _serve_tls_once(broker)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port, agent, "impostor.example.com")
    thread.join(10)


# --- systemd ------------------------------------------------------------------

UNITS = ["edgeloop-agent.service", "edgeloop-server.service", "edgeloop-collector@.service",
         "edgeloop-worker@.service"]


def _unit_keys(unit: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", (DEPLOY / "systemd" / unit).read_text(), re.M)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_checks_the_config_it_then_runs(unit):
    service = next(s for s in ("agent", "collector", "worker", "server") if s in unit)
    [pre], [start] = _unit_keys(unit, "ExecStartPre"), _unit_keys(unit, "ExecStart")
    assert f"edgeloop {service} " in start
    config = start.split("--config ")[1]
    assert pre.endswith(f"edgeloop {service} --check-config {config}")
    assert _unit_keys(unit, "ProtectSystem") == ["strict"] and _unit_keys(unit, "NoNewPrivileges") == ["yes"]
    assert _unit_keys(unit, "EnvironmentFile"), "secrets come from an environment file"


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verifies_the_unit(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # verify wants the binaries to exist: point them at this checkout's.
    edgeloop = shutil.which("edgeloop", path=str(Path(sys.executable).parent)) or shutil.which("edgeloop")
    if not edgeloop:
        pytest.skip("no edgeloop executable to stand in for /opt/edgeloop/bin/edgeloop")
    copy = tmp_path / unit.replace("@.", "@1.")  # a template is verified as one of its instances
    copy.write_text((DEPLOY / "systemd" / unit).read_text().replace("/opt/edgeloop/bin/edgeloop", edgeloop))
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    verify = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True,
                              timeout=60, env=env)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    if security.returncode != 0 or level is None:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {security.stderr.strip()[:200]}")
    assert float(level[1]) <= 4.0, security.stdout[-3000:]


# --- docs ---------------------------------------------------------------------

def test_deploy_readme_indexes_every_deploy_file():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        rel = path.relative_to(DEPLOY).as_posix()
        if path.is_dir() or rel.startswith("docker/secrets/") or rel in ("README.md", "docker/.env"):
            continue
        assert f"`{rel}`" in readme, f"deploy/README.md does not mention {rel}"


def test_operations_guide_names_only_real_files_and_metrics():
    guide = (ROOT / "docs" / "operations.md").read_text()
    for path in set(re.findall(r"`(deploy/[A-Za-z0-9_./-]+)`", guide)):
        if path.startswith("deploy/docker/secrets/"):
            continue  # made on the server by the scripts
        assert (ROOT / path).exists(), f"docs/operations.md mentions {path}, which does not exist"
    from trainer.server.metrics import HELP
    metrics = set(re.findall(r"(?<![\w-])(edgeloop_[a-z_]+)(?![\w-])", guide))
    assert len(metrics) >= 5
    for metric in metrics:
        assert metric in HELP, f"docs/operations.md mentions metric {metric}, which the server does not export"


def test_operations_guide_names_only_real_config_keys():
    """Every `[section] key` the guide mentions exists in the agent's or the server's config models."""
    from agent.config import AgentConfig
    from trainer.server.config import ServerConfig

    def keys(model) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for name, field in model.model_fields.items():
            for sub in (field.annotation, *typing.get_args(field.annotation)):  # X or X | None
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    out[name] = set(sub.model_fields)
        return out

    known = keys(AgentConfig)
    for section, names in keys(ServerConfig).items():
        known[section] = known.get(section, set()) | names
    mentioned = re.findall(r"`\[(\w+)\] (\w+)", (ROOT / "docs" / "operations.md").read_text())
    assert len(mentioned) >= 5
    for section, key in mentioned:
        assert key in known.get(section, set()), f"docs/operations.md mentions [{section}] {key}, which no config has"


def test_acl_covers_every_topic_of_the_protocol_in_its_direction():
    """Each row of protocol.topics.TOPICS has its ACL lines, and the ACL grants nothing else."""
    from protocol.topics import TOPICS

    expected = {("monitor@edgeloop", "read", "$SYS/#")}
    for spec in TOPICS:
        server_topic = re.sub(r"\{\w+\}", "+", spec.pattern)
        agent_topic = re.sub(r"\{\w+\}", "+", spec.pattern.replace("{agent_id}", "%u"))
        from_agent = spec.direction.startswith("agent")
        expected.add(("server@edgeloop", "read" if from_agent else "write", server_topic))
        expected.add(("%pattern", "write" if from_agent else "read", agent_topic))
    granted, user = set(), None
    for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines():
        words = line.split()
        if not words or line.startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        else:
            assert words[0] in ("topic", "pattern") and words[1] in ("read", "write", "readwrite"), line
            for access in (("read", "write") if words[1] == "readwrite" else (words[1],)):
                granted.add(("%pattern" if words[0] == "pattern" else user, access, words[2]))
    # The server may also read back the announcements it publishes (retained state), and publishes drift
    # alerts (trainer/drift/monitor.py: a server event, no agent reads it).
    assert granted - expected <= {("server@edgeloop", "read", "edgeloop/v1/models/+/announce"),
                                  ("server@edgeloop", "write", "edgeloop/v1/events/drift/+")}
    assert expected <= granted, sorted(expected - granted)
