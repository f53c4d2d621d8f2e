"""Signed manifests announced on the real broker, and model downloads through the real router."""

from __future__ import annotations

import hashlib
import os
import queue
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mqtt_util import Recorder

from protocol import Announcement, ProtocolError, decode
from protocol.manifest import Cohort, load_public_key, verify
from protocol.topics import announce_topic
from trainer.publish import keys
from trainer.publish.mqttlink import MqttLink, MqttSettings
from trainer.publish.publisher import PublishConfig, PublishError, Publisher
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import router
from trainer.publish.simfleet import tiny_classifier

BASE = "http://models.test:8080"


@pytest.fixture
def env(tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "data")
    link = MqttLink(MqttSettings(broker.host, broker.port, client_id="pub-test")).start()
    publisher = Publisher(registry, keys.load_signing_key(files.private), link, PublishConfig(base_url=BASE))
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    yield publisher, registry, load_public_key(files.public_b64), TestClient(app), broker, tmp_path
    link.stop()
    registry.close()


def register(registry: Registry, tmp_path: Path, name: str = "m", card_name: str | None = None, seed: int = 0):
    f = tiny_classifier(tmp_path / f"in-{seed}.onnx", card_name or name, ("cat", "dog"), seed=seed)
    return registry.register(NewModel(name=name, file=f, task="classification", labels=("cat", "dog")))


def test_announcement_is_retained_signed_and_promises_the_file(env):
    publisher, registry, public, _client, broker, tmp_path = env
    m = register(registry, tmp_path)
    p = publisher.announce("m", m.version, Cohort(stage="canary", percent=10, agents=("cam-1",)))
    late = Recorder(broker.host, broker.port, [announce_topic("m")])
    try:
        topic, payload, retained = late.get()
    finally:
        late.close()
    assert retained and topic == announce_topic("m")
    ann = decode(topic, payload)
    assert isinstance(ann, Announcement) and ann.url == f"{BASE}/models/m/1.onnx"
    man = verify(ann.manifest, ann.signature, [public])
    assert (man.name, man.version, man.sha256, man.size) == ("m", 1, m.sha256, m.size)
    assert man.sha256 == hashlib.sha256(Path(m.file_path).read_bytes()).hexdigest()
    assert man.labels == ("cat", "dog") and man.task == "classification"
    assert man.card["version"] == 1 and man.card["name"] == "m" and man.card["input"]["width"] == 8
    assert man.cohort == Cohort(stage="canary", percent=10, agents=("cam-1",))
    assert man.expires - man.created == PublishConfig(base_url=BASE).expiry_s
    assert registry.publications("m", 1)[0]["manifest"] == p.data == ann.manifest


def test_download_serves_exact_bytes_only_after_announcement(env):
    publisher, registry, _public, client, _broker, tmp_path = env
    m = register(registry, tmp_path)
    assert client.get("/models/m/1.onnx").status_code == 404  # registered is not enough
    publisher.announce("m", 1, Cohort())
    r = client.get("/models/m/1.onnx")
    assert r.status_code == 200
    assert r.content == Path(m.file_path).read_bytes()
    assert int(r.headers["content-length"]) == m.size
    assert r.headers["x-content-sha256"] == m.sha256
    head = client.head("/models/m/1.onnx")
    assert head.status_code == 200 and head.headers["x-content-sha256"] == m.sha256
    for bad in ("/models/m/2.onnx", "/models/x/1.onnx", "/models/m/one.onnx", "/models/..%2Fdata/1.onnx",
                "/models/m/0.onnx"):
        assert client.get(bad).status_code in (404, 422), bad


def test_tampered_file_fails_the_signed_sha256(env):
    publisher, registry, public, client, _broker, tmp_path = env
    m = register(registry, tmp_path)
    p = publisher.announce("m", 1, Cohort())
    path = Path(m.file_path)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    body = client.get("/models/m/1.onnx").content
    man = verify(p.data, p.signature, [public])
    assert len(body) == man.size and hashlib.sha256(body).hexdigest() != man.sha256
    path.write_bytes(bytes(data) + b"x")  # a size change is caught by the server itself
    assert client.get("/models/m/1.onnx").status_code == 500


def test_other_key_and_expiry_are_refused(env, tmp_path):
    publisher, registry, public, _client, _broker, _tmp = env
    register(registry, tmp_path)
    p = publisher.announce("m", 1, Cohort())
    stranger = load_public_key(keys.generate(tmp_path / "stranger").public_b64)
    with pytest.raises(ProtocolError) as e:
        verify(p.data, p.signature, [stranger])
    assert e.value.reason == "bad_signature"
    old = Publisher(registry, publisher.key, publisher.sender, PublishConfig(base_url=BASE, expiry_s=60),
                    clock=lambda: 1_000_000.0)
    stale = old.announce("m", 1, Cohort())
    assert verify(stale.data, stale.signature, [public], now=1_000_059.0).version == 1
    with pytest.raises(ProtocolError) as e:
        verify(stale.data, stale.signature, [public])
    assert e.value.reason == "expired"
    tampered = stale.data.replace(b'"version":1', b'"version":9')
    with pytest.raises(ProtocolError):
        verify(tampered, stale.signature, [public], now=1_000_001.0)


def test_card_must_name_the_registered_model_and_exist(env):
    publisher, registry, _public, _client, _broker, tmp_path = env
    register(registry, tmp_path, name="m", card_name="other")
    with pytest.raises(PublishError, match="card names model 'other'"):
        publisher.announce("m", 1, Cohort())
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"not onnx at all")
    registry.register(NewModel(name="m", file=bare, task="classification", labels=("a",)))
    with pytest.raises(PublishError, match="not a readable ONNX"):
        publisher.announce("m", 2, Cohort())
    assert registry.publications() == []


def test_withdraw_clears_the_retained_announcement(env):
    publisher, registry, _public, _client, broker, tmp_path = env
    register(registry, tmp_path)
    publisher.announce("m", 1, Cohort())
    publisher.withdraw("m")
    late = Recorder(broker.host, broker.port, [announce_topic("m")])
    try:
        with pytest.raises(queue.Empty):
            late.get(timeout=0.5)
    finally:
        late.close()


def test_refresh_resigns_a_live_announcement_before_it_expires(env):
    publisher, registry, public, _client, _broker, tmp_path = env
    register(registry, tmp_path)
    now = [1_000_000.0]
    pub = Publisher(registry, publisher.key, publisher.sender, PublishConfig(base_url=BASE, expiry_s=100),
                    clock=lambda: now[0])
    assert pub.refresh("m") is None  # nothing announced yet
    first = pub.announce("m", 1, Cohort(stage="canary", agents=("a1",)))
    registry.set_state("m", 1, "published")
    now[0] += 40
    assert pub.refresh("m") is None  # still more than half valid
    now[0] += 20
    again = pub.refresh("m")
    assert again.manifest.expires == first.manifest.expires + 60
    assert again.manifest.cohort == first.manifest.cohort and again.manifest.version == 1
    registry.set_state("m", 1, "halted", "canaries failed")
    now[0] += 60
    assert pub.refresh("m") is None  # a halted model is never re-announced
