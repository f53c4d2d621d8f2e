"""The uplink over TLS with a user name and a password from the environment, against real mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent_helpers import Collector, base_config, make_classifier, running, write_config
from edgeloop.broker import LocalBroker, free_port
from mqtt_util import wait_until

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _cert(subject: str, issuer_key, issuer_name, key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_broker(tmp_path):
    if not shutil.which("mosquitto") and not shutil.os.path.exists("/usr/sbin/mosquitto"):
        pytest.skip("needs mosquitto")
    if not shutil.os.path.exists(MOSQUITTO_PASSWD):
        pytest.skip("needs mosquitto_passwd")
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgeloop test CA", ca_key, None, ca_key, True)
    srv = _cert("localhost", ca_key, ca.subject, srv_key, False)
    d = tmp_path / "tls"
    d.mkdir()
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(_pem_key(srv_key))
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(d / "passwd"), "edge", "s3cret-pass"], check=True,
                   capture_output=True)
    tls_port = free_port()
    extra = (f"allow_anonymous false\npassword_file {d / 'passwd'}\nuser root\n"
             f"listener {tls_port} 127.0.0.1\ncafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
             f"keyfile {d / 'server.key'}\n")
    broker = LocalBroker(tmp_path / "broker", extra_conf=extra).start()
    broker.tls_port = tls_port
    broker.ca = d / "ca.pem"
    yield broker
    broker.stop()


def test_tls_with_password_from_env_delivers(tls_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "s3cret-pass")
    model = make_classifier(tmp_path / "m.onnx")
    cfg = base_config(tmp_path, tls_broker, model, mqtt={"port": tls_broker.tls_port, "tls": True,
                                                         "ca_file": str(tls_broker.ca), "username": "edge"})
    path = write_config(tmp_path / "a.toml", cfg)
    collector = Collector(tls_broker.host, tls_broker.port, username="edge", password="s3cret-pass")
    try:
        with running(path) as agent:
            assert wait_until(lambda: len(collector.ids()) >= 5, 20)
            assert agent.uplink.connections >= 1 and agent.counters.get("mqtt_refused") == 0
    finally:
        collector.close()


def test_wrong_password_is_refused_loudly_and_inference_goes_on(tls_broker, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "wrong-pass")
    model = make_classifier(tmp_path / "m.onnx")
    cfg = base_config(tmp_path, tls_broker, model, mqtt={"port": tls_broker.tls_port, "tls": True,
                                                         "ca_file": str(tls_broker.ca), "username": "edge"})
    with running(write_config(tmp_path / "a.toml", cfg)) as agent:
        assert wait_until(lambda: agent.counters.get("mqtt_refused") >= 1, 15)
        frames = agent.frames
        assert wait_until(lambda: agent.frames > frames + 10, 10)
        assert not agent.uplink.connected.is_set()
        assert wait_until(lambda: agent.outbox.stats().pending > 10, 10)  # kept for later
    assert "broker refused the connection" in caplog.text
