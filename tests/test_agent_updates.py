"""Signed model updates against a real HTTP server: install, refuse, roll back, survive a crash."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import onnx
import pytest

from agent.config import parse_config
from agent.modelstore import ModelStore
from agent.updater import ModelHolder, Updater
from agent_helpers import (ROOT, Collector, announcement, base_config, classifier_card, make_classifier,
                           keys, running, site, write_config)
from mqtt_util import publish, wait_until
from protocol import Command, encode
from protocol.manifest import Cohort, generate_keypair, load_private_key
from protocol.topics import announce_topic, command_topic



class Rig:
    """An Updater with its holder and store, as the agent wires them, minus MQTT."""

    def __init__(self, tmp_path: Path, public_pem: str, **updates) -> None:
        self.tmp = tmp_path
        model = make_classifier(tmp_path / "v1.onnx", version=1) if not (tmp_path / "v1.onnx").exists() \
            else tmp_path / "v1.onnx"
        raw = base_config(tmp_path, type("B", (), {"host": "127.0.0.1", "port": 1})(), model,
                          updates={"enabled": True, "trusted_keys": [public_pem], "allow_http": True, **updates})
        raw["groups"] = ["lab"]
        self.cfg = parse_config(raw, tmp_path)
        self.changes = 0
        self.start()

    def start(self) -> None:
        self.holder = ModelHolder()
        self.store = ModelStore(self.cfg.data_dir / "models")
        self.updater = Updater(self.cfg, self.store, self.holder, self._changed)
        self.updater.load_initial()

    def _changed(self) -> None:
        self.changes += 1

    @property
    def version(self) -> int:
        return self.holder.ref.version

    def version_dirs(self) -> list[str]:
        return sorted(p.name for p in self.store.root.glob("v*"))


def publish_model(root: Path, name: str, **kw) -> Path:
    return make_classifier(root / name, **kw)


def test_update_installs_keeps_previous_and_rolls_back(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    rig = Rig(tmp_path, pub)
    assert (rig.version, rig.holder.model_state) == (1, "ok")
    v2 = publish_model(root, "v2.onnx", version=2, seed=2, embed_card=False)
    assert rig.updater.apply(announcement(v2, key, f"{url}/v2.onnx", 2))
    assert (rig.version, rig.holder.model_state) == (2, "ok") and "updated to v2" in rig.holder.detail
    assert sorted(p.name for p in (rig.store.root / "v2").iterdir()) == ["card.json", "model.onnx"]
    state = rig.store.load()
    assert (state.current.version, state.previous.version) == (2, 1)
    assert rig.holder.get().infer(__import__("numpy").zeros((20, 20, 3), "uint8")).scores.shape == (3,)

    assert rig.updater.rollback()
    assert (rig.version, rig.holder.model_state) == (1, "reverted")
    again = rig.updater.apply(announcement(v2, key, f"{url}/v2.onnx", 2))  # the retained one comes back
    assert not again and (rig.version, rig.holder.model_state) == (1, "reverted")  # quietly ignored
    v3 = publish_model(root, "v3.onnx", version=3, seed=3, embed_card=False)
    assert rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3))
    assert rig.version_dirs() == ["v3"]  # current v3, previous is the configured v1 file
    rig.start()  # a restart runs what state.json says
    assert (rig.version, rig.holder.model_state) == (3, "ok")


def _tamper(ann):
    manifest = bytearray(ann.manifest)
    manifest[manifest.index(b'"version":2') + 10] = ord("9")
    return dataclasses.replace(ann, manifest=bytes(manifest))


def _external_data_model(root: Path) -> Path:
    model = onnx.load(str(make_classifier(root / "tmp.onnx", version=2, embed_card=False)))
    onnx.save(model, str(root / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return root / "ext.onnx"


def _refusal_cases(root: Path, url: str, key):
    good = publish_model(root, "v2.onnx", version=2, seed=2, embed_card=False)
    other_key = load_private_key(generate_keypair()[0])
    junk = root / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 100)
    wrong_shape = publish_model(root, "wide.onnx", version=2, n_out=5, embed_card=False)
    ext = _external_data_model(root)
    shutil.copy(good, root / "swapped.onnx")
    publish_model(root, "swapped.onnx", version=2, seed=9, embed_card=False)  # served bytes != signed bytes
    return {
        "bad_signature": _tamper(announcement(good, key, f"{url}/v2.onnx", 2)),
        "wrong key": dataclasses.replace(announcement(good, other_key, f"{url}/v2.onnx", 2)),
        "expired": announcement(good, key, f"{url}/v2.onnx", 2, expires_in=-10),
        "sha256_mismatch": announcement(good, key, f"{url}/swapped.onnx", 2),
        "size_mismatch": announcement(good, key, f"{url}/v2.onnx", 2, size=good.stat().st_size - 10),
        "not an ONNX model": announcement(junk, key, f"{url}/junk.onnx", 2),
        "external_data": announcement(ext, key, f"{url}/ext.onnx", 2),
        "expected 3 values for 3 labels": announcement(wrong_shape, key, f"{url}/wide.onnx", 2),
        "download_failed": announcement(good, key, f"{url}/missing.onnx", 2),
        "bad_card": announcement(good, key, f"{url}/v2.onnx", 2, card=classifier_card(version=7)),
    }


def test_bad_announcements_are_refused_and_the_old_model_keeps_running(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    rig = Rig(tmp_path, pub)
    runner = rig.holder.get()
    for expected, ann in _refusal_cases(root, url, key).items():
        assert not rig.updater.apply(ann), expected
        assert rig.holder.get() is runner and rig.version == 1
        assert rig.holder.model_state == "failed"
        want = "bad_signature" if expected == "wrong key" else expected
        assert want in rig.holder.detail and "still running v1" in rig.holder.detail, rig.holder.detail
        assert rig.version_dirs() == [] and list(rig.store.incoming.iterdir()) == []
        assert rig.store.load().current is None  # never committed
    assert rig.changes >= 10


def test_downgrade_cohort_http_and_size_cap(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    rig = Rig(tmp_path, pub, allow_http=False)
    v3 = publish_model(root, "v3.onnx", version=3, embed_card=False)
    assert not rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3))
    assert "insecure_url" in rig.holder.detail
    rig = Rig(tmp_path, pub, max_download_bytes=1024)
    assert not rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3, size=4096))
    assert "too_large" in rig.holder.detail
    rig = Rig(tmp_path, pub)
    not_us = Cohort(stage="canary", percent=0, agents=("someone-else",), groups=("other",))
    assert not rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3, cohort=not_us))
    assert rig.holder.model_state == "ok"  # not for us is not an error
    ours = Cohort(stage="canary", percent=0, groups=("lab",))
    assert rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3, cohort=ours))
    v2 = publish_model(root, "v2.onnx", version=2, embed_card=False)
    assert not rig.updater.apply(announcement(v2, key, f"{url}/v2.onnx", 2))
    assert "downgrade" in rig.holder.detail and rig.version == 3
    assert not rig.updater.apply(announcement(v3, key, f"{url}/v3.onnx", 3))  # same version: ignored quietly
    assert rig.version == 3


def test_crash_at_any_step_leaves_old_or_new(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    rig = Rig(tmp_path, pub)
    v2 = publish_model(root, "v2.onnx", version=2, embed_card=False)
    # crash during the download: a partial file in incoming/
    (rig.store.incoming / "v2.part").write_bytes(v2.read_bytes()[:100])
    # crash after the move into v2/ but before state.json was replaced
    shutil.copy(v2, tmp_path / "copy.onnx")
    rig.store.install(2, tmp_path / "copy.onnx", classifier_card(version=2))
    (rig.store.root / "state.json.tmp").write_text("{half a state fi")  # crash inside the atomic write
    rig.start()
    assert rig.version == 1 and list(rig.store.incoming.iterdir()) == []
    assert not (rig.store.root / "state.json.tmp").exists()
    # the update after restart works over the leftovers
    assert rig.updater.apply(announcement(v2, key, f"{url}/v2.onnx", 2))
    rig.start()
    assert (rig.version, rig.holder.model_state) == (2, "ok")
    # a current model damaged on disk: the agent falls back to the previous one and says so
    (rig.store.root / "v2" / "model.onnx").write_bytes(b"bit rot")
    rig.start()
    assert (rig.version, rig.holder.model_state) == (1, "reverted")
    assert "fell back" in rig.holder.detail


def test_update_and_rollback_over_mqtt(broker, tmp_path, keys, site):
    """The whole path: a retained announcement, the status it produces, a rollback command."""
    from agent.config import load_config
    
    key, pub = keys
    root, url = site
    model = make_classifier(tmp_path / "v1.onnx", version=1)
    cfg = base_config(tmp_path, broker, model, updates={"enabled": True, "trusted_keys": [pub], "allow_http": True})
    path = write_config(tmp_path / "a.toml", cfg)
    v2 = publish_model(root, "v2.onnx", version=2, seed=4, embed_card=False)
    collector = Collector(broker.host, broker.port, send_receipts=True)
    try:
        with running(path) as agent:
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(_tamper(announcement(v2, key, f"{url}/v2.onnx", 2))), retain=True)
            assert wait_until(lambda: (s := collector.last_status()) and s.model_state == "failed", 20)
            assert "bad_signature" in collector.last_status().detail
            frames = agent.frames
            assert wait_until(lambda: agent.frames > frames + 10, 10)  # still inferring on v1
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(v2, key, f"{url}/v2.onnx", 2)), retain=True)
            assert wait_until(lambda: (s := collector.last_status()) and s.model_version == 2
                              and s.model_state == "ok", 20)
            assert wait_until(lambda: any(s.model_version == 2 for s in list(collector.received)), 10)
            cmd = Command(command_id="c1", action="rollback", issued_at=time.time())
            publish(broker.host, broker.port, command_topic("agent-1"), encode(cmd))
            assert wait_until(lambda: (s := collector.last_status()) and s.model_version == 1
                              and s.model_state == "reverted", 20)
    finally:
        collector.close()


def test_agent_without_a_usable_model_waits_for_an_update(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    (tmp_path / "v1.onnx").write_bytes(b"not a model")
    rig = Rig(tmp_path, pub)
    assert rig.holder.get() is None and rig.holder.model_state == "failed"
    assert "v1.onnx is not a loadable ONNX model" in rig.holder.detail
    v2 = publish_model(root, "v2.onnx", version=2, embed_card=False)
    assert rig.updater.apply(announcement(v2, key, f"{url}/v2.onnx", 2))
    assert (rig.version, rig.holder.model_state) == (2, "ok") and rig.holder.get() is not None


@pytest.mark.slow
def test_agent_killed_during_a_download_restarts_on_the_old_model(broker, tmp_path, keys):
    """kill -9 while the model is half downloaded: the restart runs v1, then installs v2 from the retained
    announcement."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


    key, pub = keys
    v2 = make_classifier(tmp_path / "www" / "v2.onnx", version=2, seed=5, embed_card=False)
    body, release = v2.read_bytes(), threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            release.wait(20)  # the first agent dies here
            self.wfile.write(body[len(body) // 2:])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v2.onnx"
    model = make_classifier(tmp_path / "v1.onnx", version=1)
    cfg = write_config(tmp_path / "a.toml", base_config(
        tmp_path, broker, model, updates={"enabled": True, "trusted_keys": [pub], "allow_http": True}))
    publish(broker.host, broker.port, announce_topic("shapes"), encode(announcement(v2, key, url, 2)), retain=True)
    models = tmp_path / "data" / "models"
    cmd = [sys.executable, "-m", "edgeloop", "agent", "--config", str(cfg)]
    collector = Collector(broker.host, broker.port)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        part = models / "incoming" / "v2.part"
        assert wait_until(lambda: part.exists() and part.stat().st_size > 0, 30)
        proc.kill()
        proc.wait(10)
        assert not (models / "v2").exists()
        state = ModelStore(models).load()
        assert state.current is None or state.current.version == 1
        assert wait_until(lambda: collector.last_status().state == "offline", 10)
        seen = len(collector.statuses)
        release.set()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: (s := collector.last_status()).model_version == 2 and s.model_state == "ok", 30)
        after = [s for s in collector.statuses[seen:] if s.state == "online"]
        assert after[0].model_version == 1  # it came back on the old model first
        assert not (models / "incoming" / "v2.part").exists()
    finally:
        proc.kill()
        proc.wait(10)
        server.shutdown()
        collector.close()
