"""The production broker setup, run for real: deploy/mosquitto/{mosquitto.conf,acl,*.sh}.

One mosquitto runs the production config with only its paths and ports
replaced, against the repository's acl file itself. A test CA and server
certificate are made here; credentials are made with the deploy scripts.
Every client talks TLS with paho. Negative cases ("never arrives") end with a
sentinel message that the same subscriber is allowed to receive, published
after the forbidden one was acknowledged: mosquitto queues a message to its
subscribers before it acknowledges it, so once the sentinel is in, anything
that would have leaked is in too, and no test waits on a timeout to pass.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import factories
from edgeloop.broker import LocalBroker, free_port, wait_port
from protocol import decode, encode
from protocol.topics import (ANNOUNCE_FILTER, CONFIG_FILTER, SAMPLES_FILTER, STATUS_FILTER, TELEMETRY_FILTER,
                             announce_topic, command_topic, config_topic, receipt_topic, sample_topic, shared,
                             status_topic, telemetry_topic)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "mosquitto"
SERVER_USER = "server@edgeloop"
PASSWORDS = {"cam-1": "cam-1-password-for-tests", "cam-2": "cam-2-password-for-tests",
             SERVER_USER: "server-password-for-tests"}
NOT_AUTHORIZED = 135  # MQTT 5 reason code; paho maps 3.1.1's CONNACK 5 onto it too
REFUSED = {134, 135}
NO_MATCHING_SUBSCRIBERS = 16  # a success code of MQTT 5 PUBACK  # bad user name or password / not authorized
WAIT = 10.0


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def _require_tools() -> tuple[str, str]:
    mosquitto, passwd = LocalBroker(ROOT / "build").mosquitto, _tool("mosquitto_passwd")
    if not (mosquitto and passwd):
        if os.environ.get("EDGELOOP_REQUIRE_MOSQUITTO"):
            pytest.fail("EDGELOOP_REQUIRE_MOSQUITTO is set but mosquitto or mosquitto_passwd is not installed")
        pytest.skip("needs mosquitto and mosquitto_passwd (Debian package 'mosquitto')")
    return mosquitto, passwd


# --- test PKI -------------------------------------------------------------

def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False,
          client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    elif client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    else:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> dict[str, Path]:
    paths = {f"{name}.crt": folder / f"{name}.crt", f"{name}.key": folder / f"{name}.key"}
    paths[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[f"{name}.key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def make_pki(folder: Path, name: str = "edgeloop test CA", clients: tuple[str, ...] = ()) -> dict[str, Path]:
    """ca.crt, server.crt/.key (for localhost and 127.0.0.1), and ID.crt/.key per client (CN = ID)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    paths = {"ca.crt": folder / "ca.crt"}
    paths["ca.crt"].write_bytes(_cert(name, ca_key, ca_name, ca_key, ca=True).public_bytes(serialization.Encoding.PEM))
    server_key = ec.generate_private_key(ec.SECP256R1())
    paths |= _write(folder, "server", _cert("localhost", server_key, ca_name, ca_key), server_key)
    for client in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        paths |= _write(folder, client, _cert(client, key, ca_name, ca_key, client=True), key)
    return paths


# --- the broker under test --------------------------------------------------

def render_conf(text: str, secrets: Path, data: Path, ports: dict[int, int]) -> str:
    """The production config with only its paths and ports changed."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^listener (\d+)( 127\.0\.0\.1)?$", line)
        if m:
            assert int(m[1]) in ports, f"mosquitto.conf has a listener this test does not know: {line!r}"
            line = f"listener {ports[int(m[1])]} 127.0.0.1"
        line = (line.replace("/mosquitto/config/acl", str(DEPLOY / "acl"))
                .replace("/mosquitto/secrets/", f"{secrets}/").replace("/mosquitto/data/", f"{data}/"))
        out.append(line)
    rendered = "\n".join(out) + "\n"
    settings = [line for line in out if line and not line.startswith("#")]
    assert not [line for line in settings if " /mosquitto/" in line], "mosquitto.conf uses a path this test does not map"
    for port in ports.values():
        assert f"listener {port} 127.0.0.1" in rendered, "a listener of the production config went missing"
    if os.geteuid() == 0:
        # As root, mosquitto would switch to the 'mosquitto' user, which
        # cannot read pytest's private temp folder.
        rendered += "user root\n"
    return rendered


def add_credentials(role: str, password_file: Path, user: str = "",
                    password: str | None = None) -> subprocess.CompletedProcess:
    script = DEPLOY / ("add-agent.sh" if role == "agent" else "add-server.sh")
    args = [str(script), "--password-file", str(password_file)]
    args += ["--password-stdin"] if password is not None else []
    args += [user] if user else []
    return subprocess.run(args, input=(password + "\n") if password is not None else "", capture_output=True,
                          text=True, timeout=30)


class Broker:
    def __init__(self, folder: Path, mosquitto: str, client_certs: bool = False) -> None:
        self.secrets, data = folder / "secrets", folder / "data"
        data.mkdir(parents=True)
        self.pki = make_pki(self.secrets, clients=("cam-1", "cam-2") if client_certs else ())
        self.passwd = self.secrets / "passwd"
        for user, password in PASSWORDS.items():
            result = add_credentials("server" if user == SERVER_USER else "agent", self.passwd,
                                     "" if user == SERVER_USER else user, password)
            assert result.returncode == 0, result.stderr
        self.agent_port, self.server_port = free_port(), free_port()
        conf = folder / "mosquitto.conf"
        text = render_conf((DEPLOY / "mosquitto.conf").read_text(), self.secrets, data,
                           {8883: self.agent_port, 8884: self.server_port})
        if client_certs:  # the option the config documents for the agent listener
            password_mode = "require_certificate false\nuse_identity_as_username false\n"
            assert text.count(password_mode) == 1, "the agent listener's certificate options moved"
            text = text.replace(password_mode, "require_certificate true\nuse_identity_as_username true\n")
        conf.write_text(text)
        self.log = folder / "mosquitto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            for port in (self.agent_port, self.server_port):
                wait_port("127.0.0.1", port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log.read_text(errors='replace')}") from None

    def reload(self) -> None:
        """SIGHUP, as an operator does after enrolling an agent."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def prod_broker(tmp_path_factory):
    mosquitto, _ = _require_tools()
    broker = Broker(tmp_path_factory.mktemp("prod-broker"), mosquitto)
    yield broker
    broker.stop()


# --- a recording paho client over TLS ---------------------------------------

class Peer:
    """A paho client that records CONNACK, SUBACK, PUBACK codes and every message it gets."""

    def __init__(self, broker: Broker, username: str | None, password: str | None = None, *, port: int | None = None,
                 client_id: str = "", protocol=mqtt.MQTTv5, ca: Path | None = None, tls: bool = True,
                 cert: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if tls:
            self.client.tls_set(ca_certs=str(ca or broker.pki["ca.crt"]),
                                certfile=str(broker.pki[f"{cert}.crt"]) if cert else None,
                                keyfile=str(broker.pki[f"{cert}.key"]) if cert else None)
        if username is not None:
            self.client.username_pw_set(username, password if password is not None else PASSWORDS.get(username))
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self._acks: dict[int, object] = {}
        self._acked = threading.Condition()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc.value)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ack(mid, [rc.value for rc in rcs])
        self.client.on_publish = lambda c, u, mid, rc, p: self._ack(mid, rc.value)
        self.port = port or (broker.server_port if username == SERVER_USER else broker.agent_port)

    def _ack(self, mid: int, value: object) -> None:
        with self._acked:
            self._acks[mid] = value
            self._acked.notify_all()

    def _wait_ack(self, mid: int) -> object:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, WAIT), f"no acknowledgement for mid {mid}"
            return self._acks.pop(mid)

    def connect(self) -> int | None:
        """The CONNACK reason code (0 = accepted), or None when the connection died before one came."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (ssl.SSLError, ConnectionError):
            return None
        # Loop by hand until the CONNACK: a background loop would start
        # reconnecting after a refusal, and stopping it then takes a second.
        deadline = time.monotonic() + WAIT
        while self.connack.empty() and time.monotonic() < deadline:
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self.connack.empty():
            return None
        code = self.connack.get_nowait()
        if code == 0:
            self.client.loop_start()
        return code

    def subscribe(self, *filters: str) -> list[int]:
        _, mid = self.client.subscribe([(f, 1) for f in filters])
        return self._wait_ack(mid)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """QoS 1; the PUBACK reason code (always 0 under MQTT 3.1.1)."""
        code = self._wait_ack(self.client.publish(topic, payload, qos=1, retain=retain).mid)
        return 0 if code == NO_MATCHING_SUBSCRIBERS else code

    def until(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Every message up to and including the first one on ``topic``."""
        got = []
        while True:
            try:
                msg = self.messages.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no message on {topic} within {WAIT:.0f}s; got {[m.topic for m in got]}")
            got.append(msg)
            if msg.topic == topic:
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(prod_broker):
    opened: list[Peer] = []

    def open_(username: str | None, **kwargs) -> Peer:
        peer = Peer(prod_broker, username, **kwargs)
        opened.append(peer)
        return peer

    yield open_
    for peer in opened:
        peer.close()


def connected(peers, username: str, **kwargs) -> Peer:
    peer = peers(username, **kwargs)
    assert peer.connect() == 0
    return peer


def sample_payload(agent: str, camera: str, n: int) -> bytes:
    return encode(factories.sample(agent_id=agent, camera_id=camera, frame_id=f"{agent}.{camera}.{n:06d}"))


def topics(messages) -> list[str]:
    return [m.topic for m in messages]


def may_read_as(agent: str, topic: str) -> bool:
    return topic in (receipt_topic(agent), command_topic(agent)) or any(
        re.fullmatch(f.replace("+", "[^/]+"), topic) is not None for f in (ANNOUNCE_FILTER, CONFIG_FILTER))


# --- what agents and the server may do --------------------------------------

def test_agent_and_server_talk_through_the_production_acl(peers):
    server = connected(peers, SERVER_USER)
    # The collector's shared subscription: read access is checked per message
    # on the message's own topic, so no $share line is needed in the acl.
    assert server.subscribe(shared(SAMPLES_FILTER), STATUS_FILTER, TELEMETRY_FILTER) == [1, 1, 1]
    agent = connected(peers, "cam-1")
    assert agent.subscribe(receipt_topic("cam-1"), command_topic("cam-1"), ANNOUNCE_FILTER) == [1, 1, 1]

    assert agent.publish(sample_topic("cam-1", "gate"), sample_payload("cam-1", "gate", 1)) == 0
    assert agent.publish(status_topic("cam-1"), encode(factories.status(agent_id="cam-1")), retain=True) == 0
    assert agent.publish(telemetry_topic("cam-1"), encode(factories.telemetry(agent_id="cam-1"))) == 0
    got = {m.topic: m for m in server.until(telemetry_topic("cam-1"))}
    assert decode(sample_topic("cam-1", "gate"), got[sample_topic("cam-1", "gate")].payload).frame_id == \
        "cam-1.gate.000001"
    assert decode(status_topic("cam-1"), got[status_topic("cam-1")].payload).state == "online"

    receipt = factories.receipt(stored=("cam-1.gate.000001",), rejected=())
    assert server.publish(receipt_topic("cam-1"), encode(receipt)) == 0
    assert server.publish(command_topic("cam-1"), encode(factories.command())) == 0
    assert server.publish(announce_topic("shapes"), encode(factories.announcement()), retain=True) == 0
    got = {m.topic: m for m in agent.until(announce_topic("shapes"))}
    assert decode(receipt_topic("cam-1"), got[receipt_topic("cam-1")].payload).stored == ("cam-1.gate.000001",)
    assert command_topic("cam-1") in got


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_agent_cannot_publish_as_another_agent(peers, protocol):
    server = connected(peers, SERVER_USER)
    assert server.subscribe(shared(SAMPLES_FILTER), STATUS_FILTER, TELEMETRY_FILTER) == [1, 1, 1]
    cam2 = connected(peers, "cam-2", protocol=protocol)
    # MQTT 5 says "not authorized" in the PUBACK; 3.1.1 has no way to, so the
    # broker acknowledges and drops.
    refused = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0
    spoofed = factories.status(agent_id="cam-1", state="offline", detail="spoofed by cam-2")
    assert cam2.publish(sample_topic("cam-1", "spoofed"), sample_payload("cam-1", "spoofed", 1)) == refused
    assert cam2.publish(status_topic("cam-1"), encode(spoofed), retain=True) == refused
    assert cam2.publish(telemetry_topic("cam-1"), encode(factories.telemetry(agent_id="cam-1"))) == refused
    assert cam2.publish(sample_topic("cam-2", "gate"), sample_payload("cam-2", "gate", 1)) == 0  # the sentinel

    got = server.until(sample_topic("cam-2", "gate"))
    assert sample_topic("cam-1", "spoofed") not in topics(got)
    assert telemetry_topic("cam-1") not in topics(got)
    assert not any(b"spoofed by cam-2" in m.payload for m in got), "a spoofed, retained status got through"


def test_agent_cannot_announce_models_or_speak_for_the_server(peers):
    cam1 = connected(peers, "cam-1")
    assert cam1.subscribe(ANNOUNCE_FILTER, receipt_topic("cam-1"), command_topic("cam-1")) == [1, 1, 1]
    cam2 = connected(peers, "cam-2")
    forged = factories.announcement(url="http://attacker.invalid/model.onnx")
    assert cam2.publish(announce_topic("forged"), encode(forged), retain=True) == NOT_AUTHORIZED
    assert cam2.publish(receipt_topic("cam-1"), encode(factories.receipt())) == NOT_AUTHORIZED
    assert cam2.publish(command_topic("cam-1"), encode(factories.command())) == NOT_AUTHORIZED

    server = connected(peers, SERVER_USER)
    assert server.publish(announce_topic("sentinel"), encode(factories.announcement())) == 0
    got = cam1.until(announce_topic("sentinel"))
    assert announce_topic("forged") not in topics(got)
    assert receipt_topic("cam-1") not in topics(got) and command_topic("cam-1") not in topics(got)


def test_only_the_server_sends_commands_and_configuration_bundles(peers):
    cam1 = connected(peers, "cam-1")
    assert cam1.subscribe(command_topic("cam-1"), config_topic("north"), receipt_topic("cam-1")) == [1, 1, 1]
    cam2 = connected(peers, "cam-2")
    forged = factories.config_bundle(bundle=b'{"group":"north","version":99}')
    assert cam2.publish(command_topic("cam-1"), encode(factories.command(action="rollback"))) == NOT_AUTHORIZED
    assert cam2.publish(command_topic("cam-2"), encode(factories.command(action="ping"))) == NOT_AUTHORIZED
    assert cam2.publish(config_topic("north"), encode(forged), retain=True) == NOT_AUTHORIZED
    assert cam1.publish(command_topic("cam-1"), encode(factories.command())) == NOT_AUTHORIZED  # not even its own

    server = connected(peers, SERVER_USER)
    assert server.publish(config_topic("north"), encode(factories.config_bundle()), retain=True) == 0
    assert server.publish(command_topic("cam-1"), encode(factories.command(command_id="from-server"))) == 0
    assert server.publish(receipt_topic("cam-1"), encode(factories.receipt())) == 0  # the sentinel
    got = cam1.until(receipt_topic("cam-1"))
    commands = [decode(m.topic, m.payload) for m in got if m.topic == command_topic("cam-1")]
    assert [c.command_id for c in commands] == ["from-server"]
    bundles = [m.payload for m in got if m.topic == config_topic("north")]
    assert bundles == [encode(factories.config_bundle())]
    assert server.publish(config_topic("north"), b"", retain=True) == 0  # clear the retained copy
    # Drift alerts (trainer/drift/monitor.py) are the server's too.
    assert server.publish("edgeloop/v1/events/drift/cam-1", b'{"kind": "drift"}') == 0
    assert cam2.publish("edgeloop/v1/events/drift/cam-2", b'{"kind": "drift"}') == NOT_AUTHORIZED


@pytest.mark.parametrize("filter_", ["#", "edgeloop/#", "edgeloop/v1/agents/+/+", SAMPLES_FILTER,
                                     shared(SAMPLES_FILTER), "edgeloop/v1/agents/cam-2/#", "$SYS/#"])
def test_wildcard_subscriptions_show_an_agent_nothing_of_others(peers, filter_):
    snoop = connected(peers, "cam-1")
    # mosquitto 2.0 grants any SUBSCRIBE and checks read access per message;
    # a broker that refused the SUBACK instead would be just as good.
    assert snoop.subscribe(filter_) in ([1], [NOT_AUTHORIZED])
    assert snoop.subscribe(receipt_topic("cam-1")) == [1]  # the sentinel's way in
    cam2 = connected(peers, "cam-2")
    assert cam2.publish(sample_topic("cam-2", "private"), sample_payload("cam-2", "private", 1)) == 0
    assert cam2.publish(status_topic("cam-2"), encode(factories.status(agent_id="cam-2")), retain=True) == 0
    assert cam2.publish(telemetry_topic("cam-2"), encode(factories.telemetry(agent_id="cam-2"))) == 0
    server = connected(peers, SERVER_USER)
    assert server.publish(receipt_topic("cam-2"), encode(factories.receipt())) == 0
    assert server.publish(command_topic("cam-2"), encode(factories.command())) == 0
    assert server.publish(receipt_topic("cam-1"), encode(factories.receipt())) == 0

    got = topics(snoop.until(receipt_topic("cam-1")))
    assert [t for t in got if not may_read_as("cam-1", t)] == []


# --- who may connect ----------------------------------------------------------

@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_anonymous_client_is_refused(peers, prod_broker, protocol):
    for port in (prod_broker.agent_port, prod_broker.server_port):
        assert peers(None, protocol=protocol, port=port).connect() in REFUSED


@pytest.mark.parametrize("username,password", [("cam-1", "not-the-password"), ("cam-9", "cam-1-password-for-tests"),
                                               (SERVER_USER, "cam-1-password-for-tests"), ("cam-1", "")])
def test_wrong_credentials_are_refused(peers, username, password):
    assert peers(username, password=password).connect() in REFUSED


def test_server_listener_lets_collectors_share_the_server_user(peers, prod_broker):
    # The TLS listener every server process uses: same password file, same ACL,
    # client ids not forced (several collectors and the publisher share a user).
    server = connected(peers, SERVER_USER, client_id="collector-a")
    assert server.subscribe(shared(SAMPLES_FILTER)) == [1]
    second = connected(peers, SERVER_USER, client_id="collector-b")
    assert second.publish(receipt_topic("cam-1"), encode(factories.receipt())) == 0
    agent = connected(peers, "cam-2", port=prod_broker.server_port)
    assert agent.publish(sample_topic("cam-1", "srv"), sample_payload("cam-1", "srv", 1)) == NOT_AUTHORIZED
    assert agent.publish(sample_topic("cam-2", "srv"), sample_payload("cam-2", "srv", 1)) == 0
    assert sample_topic("cam-1", "srv") not in topics(server.until(sample_topic("cam-2", "srv")))
    assert not server.disconnected.is_set(), "collector-b's login kicked collector-a off"


def test_the_broker_has_no_plain_text_listener():
    conf = (DEPLOY / "mosquitto.conf").read_text()
    listeners = re.findall(r"^listener (\d+)", conf, re.M)
    assert sorted(listeners) == ["8883", "8884"]
    for block in re.split(r"^listener ", conf, flags=re.M)[1:]:
        assert re.search(r"^certfile ", block, re.M), f"listener {block.split()[0]} without TLS"


def test_plain_tcp_to_the_tls_ports_gets_no_connack(prod_broker):
    # A well-formed MQTT 3.1.1 CONNECT (client id "x"), sent without TLS.
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"x"
    for port in (prod_broker.agent_port, prod_broker.server_port):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(connect)
            try:
                answer = sock.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert not answer.startswith(b"\x20"), f"port {port} answered a plain-text CONNECT with a CONNACK"


def test_client_refuses_a_broker_certificate_from_another_ca(peers, prod_broker, tmp_path):
    other = make_pki(tmp_path / "other", "some other CA")
    peer = peers("cam-1", ca=other["ca.crt"])
    with pytest.raises(ssl.SSLCertVerificationError):
        peer.client.connect("127.0.0.1", prod_broker.agent_port)


def test_agent_cannot_take_over_another_agents_client_id(peers, prod_broker):
    cam1 = connected(peers, "cam-1", client_id="cam-1")
    assert cam1.subscribe(receipt_topic("cam-1")) == [1]
    # On the agent listener the client id is forced to the username, so this
    # session is cam-2's own and cam-1 stays connected.
    intruder = connected(peers, "cam-2", client_id="cam-1")
    server = connected(peers, SERVER_USER)
    assert server.publish(receipt_topic("cam-1"), encode(factories.receipt())) == 0
    assert receipt_topic("cam-1") in topics(cam1.until(receipt_topic("cam-1")))
    assert not cam1.disconnected.is_set() and not intruder.disconnected.is_set()
