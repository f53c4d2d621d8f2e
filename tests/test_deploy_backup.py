"""deploy/backup-data.py against the real Store and Registry, and a restore drill with the real server.

1. A live data folder: the real ``Store`` ingests batches and the real
   ``Registry`` registers models, in threads, while the backup runs (twice,
   the second updating the first in place). Every sample row of the backup
   must have its image, and every model row its file with the recorded sha256.
2. The drill: the server process (``python -m trainer.server``) ingests
   frames over MQTT from the broker and takes labels over its REST API; a
   backup is taken while it runs; it then ingests more; it is stopped, its
   data folder deleted and restored from the backup. The restored folder
   holds exactly what the backup saw (counts, frame ids, image sha256s,
   labels, models and their files), and the server starts on it and ingests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import factories
import protocol
from agent_helpers import make_classifier
from edgeloop.broker import free_port, wait_port
from mqtt_util import wait_until
from protocol import topics
from trainer.publish.registry import NewModel, Registry
from trainer.store import Store, incoming

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "backup-data.py"
TOKEN = "backup-drill-token-7f3a9c"


def _script(*args: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=180)


def _samples(agent: str, start: int, n: int) -> list[protocol.Sample]:
    return [factories.sample(agent_id=agent, frame_id=f"{agent}.gate.{i:06d}", jpeg=factories.jpeg(seed=i))
            for i in range(start, start + n)]


def _register(registry: Registry, tmp: Path, seed: int):
    onnx_file = make_classifier(tmp / f"round-{seed}.onnx", version=seed, seed=seed)
    return registry.register(NewModel(name="shapes", file=onnx_file, task="classification",
                                      labels=("circle", "square", "triangle"), metrics={"accuracy": 0.5}))


def _consistent(folder: Path) -> int:
    """Every sample of the backed-up store has its image bytes; returns the number of samples."""
    db = sqlite3.connect(folder / "edgeloop.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete", "the backup must stand alone"
        missing = db.execute("SELECT count(*) FROM samples s JOIN examples e ON e.id = s.example_id "
                             "LEFT JOIN blobs b ON b.sha = e.blob WHERE b.sha IS NULL").fetchone()[0]
        assert missing == 0, f"{missing} samples without their image"
        n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        db.close()
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob("*.partial"))
    assert not (folder / "cache").exists(), "the image cache is derived data: not backed up"
    return n


def test_backup_of_a_live_store_and_registry_is_consistent(tmp_path):
    data = tmp_path / "data"
    store, registry = Store(data), Registry(data)
    store.ingest_samples([incoming(s) for s in _samples("live", 0, 20)])
    _register(registry, tmp_path, 1)
    store.image_path(store.sample_blobs()["live.gate.000000"], "jpg")  # something in cache/
    stop, written = threading.Event(), {"batches": 0, "models": 1}

    def ingest() -> None:
        start = 20
        while not stop.is_set():
            store.ingest_samples([incoming(s) for s in _samples("live", start, 10)])
            start += 10
            written["batches"] += 1

    def register() -> None:
        seed = 2
        while not stop.is_set() and seed < 12:
            _register(registry, tmp_path, seed)
            seed += 1
            written["models"] += 1

    threads = [threading.Thread(target=ingest), threading.Thread(target=register)]
    for t in threads:
        t.start()
    try:
        first = _script(data, tmp_path / "backup")
        assert first.returncode == 0, first.stderr
        second = _script("--verify", data, tmp_path / "backup")  # an update in place while writes go on
        assert second.returncode == 0, second.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert written["batches"] > 0, "the writer never ran during the backup"
    assert _consistent(tmp_path / "backup") >= 20
    assert "model file(s) match the registry" in second.stdout and "image(s) match their sha256" in second.stdout
    backed = Registry(tmp_path / "backup")
    try:
        assert len(backed.models("shapes")) >= 1
    finally:
        backed.close()
    store.close()
    registry.close()


def test_backup_refuses_what_it_cannot_vouch_for(tmp_path):
    data = tmp_path / "data"
    with Store(data) as store:
        store.ingest_samples([incoming(s) for s in _samples("stopped", 0, 5)])
    with Registry(data) as registry:
        record = _register(registry, tmp_path, 1)
    done = _script("--verify", data, tmp_path / "backup")  # a stopped server: no -wal or -shm left
    assert done.returncode == 0, done.stderr
    assert _consistent(tmp_path / "backup") == 5

    Path(record.file_path).write_bytes(b"not the model the registry hashed")  # disk damage after registration
    damaged = _script(data, tmp_path / "backup2")
    assert damaged.returncode == 1 and "has sha256" in damaged.stderr, damaged.stderr

    assert _script(tmp_path / "missing", tmp_path / "b3").returncode == 2
    (tmp_path / "empty").mkdir()
    refused = _script(tmp_path / "empty", tmp_path / "b4")
    assert refused.returncode == 2 and "no SQLite database" in refused.stderr
    not_empty = _script("--restore", tmp_path / "backup", data)
    assert not_empty.returncode == 2 and "not empty" in not_empty.stderr
    assert _script("--restore", tmp_path / "empty", tmp_path / "new").returncode == 2


# -- the restore drill --------------------------------------------------------------------------------


class Server:
    def __init__(self, tmp: Path, broker, data: Path) -> None:
        self.port = free_port()
        self.config = tmp / "server.toml"
        self.config.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "drill"\nbatch_ms = 20\n'
            f'[http]\nport = {self.port}\n[store]\ndata_dir = "{data}"\n'
            '[project]\ntask = "classification"\nlabels = ["circle", "square", "triangle"]\n')
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainer.server", "--config", str(self.config)],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "EDGELOOP_SERVER_TOKEN": TOKEN})
        wait_port("127.0.0.1", self.port, 60)
        assert wait_until(lambda: self.get("/healthz").get("mqtt_connected"), 30), self.log.read_text()[-2000:]
        return self

    def get(self, path: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "X-User": "drill",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def _send(broker, frames: list[protocol.Sample]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"drill-agent-{time.monotonic_ns()}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topics.sample_topic(f.agent_id, f.camera_id), protocol.encode(f), qos=1)
                 for f in frames]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _stored(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'edgeloop.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _snapshot(data: Path) -> dict:
    """What a restore must bring back: frames with their image hashes, labels, models with their files."""
    with Store(data) as store:
        frames = {f: hashlib.sha256(store.blob(sha)).hexdigest() for f, sha in store.sample_blobs().items()}
        rows = store.db.read().execute("SELECT s.frame_id, e.label, e.status, e.labeled_by FROM samples s "
                                       "JOIN examples e ON e.id = s.example_id WHERE e.label IS NOT NULL")
        labels = {f: (label, status, by) for f, label, status, by in rows.fetchall()}
    with Registry(data) as registry:
        models = {(m.version, m.sha256, m.size, hashlib.sha256(Path(m.file_path).read_bytes()).hexdigest())
                  for m in registry.models("shapes")}
    return {"frames": frames, "labels": labels, "models": models}


def test_restore_drill_with_the_real_server(broker, tmp_path):
    data = tmp_path / "data"
    with Registry(data) as registry:  # what a training round leaves behind
        for seed in (1, 2):
            _register(registry, tmp_path, seed)
    server = Server(tmp_path, broker, data).start()
    try:
        _send(broker, _samples("drill", 0, 120))
        assert wait_until(lambda: _stored(data) == 120, 60), server.log.read_text()[-2000:]
        items = server.get("/api/queue?limit=10")["items"]
        for item, label in zip(items[:6], ("circle", "square", "triangle") * 2):
            server.post(f"/api/items/{item['id']}/label", {"action": "label", "label": label})
        backup = _script("--verify", data, tmp_path / "backup")  # while the server runs
        assert backup.returncode == 0, backup.stderr
        assert "2 model file(s) match the registry" in backup.stdout
        assert "120 image(s) match their sha256" in backup.stdout
        expected = _snapshot(tmp_path / "backup")
        _send(broker, _samples("drill", 1000, 30))  # after the backup: lost by the restore, as it should be
        assert wait_until(lambda: _stored(data) == 150, 60)
    finally:
        server.stop()
    before = _snapshot(data)
    assert len(expected["frames"]) == 120 and len(expected["labels"]) == 6 and len(expected["models"]) == 2
    assert expected["frames"].items() <= before["frames"].items() and expected["labels"] == before["labels"]

    shutil.rmtree(data)  # the disk is gone
    restored = _script("--restore", tmp_path / "backup", data)
    assert restored.returncode == 0, restored.stderr
    assert _snapshot(data) == expected  # counts, frame ids, image hashes, labels, models and their files

    server = Server(tmp_path, broker, data).start()  # the server runs on the restored folder
    try:
        assert server.get("/healthz")["ok"]
        assert server.get("/api/queue?limit=1")["total"] == 120 - 6
        _send(broker, _samples("drill", 2000, 5))
        assert wait_until(lambda: _stored(data) == 125, 60), server.log.read_text()[-2000:]
    finally:
        server.stop()
