"""Labelling over real HTTP, MQTT ingest and a long export in another process, all at once: no locks."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

import factories
import protocol
from mqtt_util import wait_until
from trainer.data.store_io import import_examples
from trainer.dataset import Example
from trainer.server.config import ServerConfig
from trainer.server.embedded import EmbeddedServer

TOKEN = "concurrency-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 300


def _seed_imports(store, tmp_path: Path, n: int = 300) -> None:
    src = tmp_path / "src"
    src.mkdir()
    examples = []
    for i in range(n):
        path = src / f"im{i}.jpg"
        path.write_bytes(factories.jpeg(width=160, height=120, seed=10_000 + i))
        examples.append(Example(id=f"im{i}", image_path=path, label=("circle", "square", "triangle")[i % 3]))
    assert import_examples(store, examples, fmt="imagefolder", task="classification") == n


def _publish(broker, stop: threading.Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for i in range(N_FRAMES):
        s = factories.sample(frame_id=f"cam-agent-1.gate.{i:05d}", jpeg=factories.jpeg(seed=i), uncertainty=i / N_FRAMES)
        client.publish(protocol.topic_for(s), protocol.encode(s), qos=1).wait_for_publish(10)
    stop.wait(30)
    client.loop_stop()
    client.disconnect()


def _label(url: str, user: str, errors: list, done: list) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-User": user}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for n in range(60):
            items = http.get("/api/queue", params={"limit": 5, "offset": 5 if user == "b" else 0})
            if items.status_code != 200:
                errors.append((items.status_code, items.text))
                continue
            for item in items.json()["items"][:1]:
                r = http.post(f"/api/items/{item['id']}/label", json={"action": "label", "label": "square"})
                if r.status_code >= 500:
                    errors.append((r.status_code, r.text))
                done.append(r.status_code)
            if n % 7 == 0:
                http.post("/api/undo")
            http.get("/api/dataset/stats")


@pytest.mark.slow
def test_labels_ingest_and_export_together(broker, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    config = ServerConfig.model_validate({"mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 10},
                                          "http": {"port": 0}, "store": {"data_dir": str(tmp_path / "data")}})
    with EmbeddedServer(config, TOKEN) as srv:
        store = srv.service.store
        _seed_imports(store, tmp_path)
        stop = threading.Event()
        publisher = threading.Thread(target=_publish, args=(broker, stop))
        publisher.start()
        assert wait_until(lambda: store.queue_depth() > 20, timeout=20)
        exports = [subprocess.Popen([sys.executable, "-m", "edgeloop", "dataset", "export", fmt, str(tmp_path / f"out-{fmt}"),
                                     "--data-dir", str(tmp_path / "data")], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for fmt in ("coco", "imagefolder")]
        errors: list = []
        done: list = []
        labellers = [threading.Thread(target=_label, args=(srv.url, u, errors, done)) for u in ("a", "b")]
        for t in labellers:
            t.start()
        for t in labellers:
            t.join(120)
        results = [p.communicate(timeout=120) for p in exports]
        stop.set()
        publisher.join(60)
        assert wait_until(lambda: store.count("pending_review") + store.count("labeled") >= 300 + N_FRAMES,
                          timeout=30)
    assert not errors
    assert done and all(code == 200 for code in done)
    for p, (out, err) in zip(exports, results):
        assert p.returncode == 0, err
        assert "database is locked" not in err
        assert int(out.split()[1]) >= 300
    assert "database is locked" not in caplog.text
    assert len(list((tmp_path / "out-coco" / "images").iterdir())) >= 300
