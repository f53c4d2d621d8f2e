"""The server's own broker links over TLS: config checks, and the production broker's server listener.

The positive end-to-end run (the real server from deploy/examples/server.toml,
collector and publisher over TLS) is in tests/test_deploy_enrolment.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from test_deploy_mosquitto import PASSWORDS, SERVER_USER, make_pki, prod_broker  # noqa: F401  (fixture)
from trainer.publish.mqttlink import MqttError, MqttLink, MqttSettings
from trainer.server.config import ServerConfig


@pytest.mark.parametrize("mqtt,why", [
    ({"tls": True, "cert_file": "/etc/c.crt"}, "go together"),
    ({"tls": True, "key_file": "/etc/c.key"}, "go together"),
    ({"ca_file": "/etc/ca.crt"}, "need mqtt.tls"),
    ({"tls_insecure": True}, "need mqtt.tls"),
])
def test_tls_settings_that_cannot_work_are_refused(mqtt, why):
    with pytest.raises(ValidationError, match=why):
        ServerConfig.model_validate({"mqtt": mqtt})


def _link(broker, **over) -> MqttLink:
    settings = dict(host="127.0.0.1", port=broker.server_port, client_id="tls-test", username=SERVER_USER,
                    password=PASSWORDS[SERVER_USER], tls=True, ca_file=str(broker.pki["ca.crt"]))
    return MqttLink(MqttSettings(**(settings | over)))


def test_publisher_link_over_tls_checks_the_broker_and_its_own_password(prod_broker, tmp_path):  # noqa: F811
    link = _link(prod_broker).start()
    try:
        link.publish("edgeloop/v1/models/tls-test/announce", b"", retain=True)  # the server user may announce
    finally:
        link.stop()
    other = make_pki(tmp_path / "other", "some other CA")
    with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _link(prod_broker, ca_file=str(other["ca.crt"])).start(timeout=5)
    with pytest.raises(MqttError, match="did not accept"):
        _link(prod_broker, password="not-the-password").start(timeout=5)


def test_missing_tls_file_is_named(tmp_path):
    from trainer.server.service import Service

    cfg = ServerConfig.model_validate({"mqtt": {"tls": True, "ca_file": str(tmp_path / "nope.crt"), "protocol": "5"},
                                       "store": {"data_dir": str(tmp_path / "data")}, "http": {"enabled": False}})
    service = Service(cfg)
    try:
        with pytest.raises(MqttError, match="nope.crt"):
            service.start()
    finally:
        service.stop()
