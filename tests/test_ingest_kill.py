"""Collector killed -9 three times while an agent-like publisher sends 1,000 frames: exactly 1,000 stored."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import factories
import protocol
from protocol import topics
from trainer.store import Store

AGENT = "kill-agent"
N = 1000
RESEND_AFTER_S = 4.0
ROOT = Path(__file__).resolve().parents[1]


class Publisher:
    """Sends frames at a steady pace and resends any not receipted after a timeout, like the agent."""

    def __init__(self, broker, frames: list[protocol.Sample]) -> None:
        self.frames = {f.frame_id: f for f in frames}
        self.sent_at: dict[str, float] = {}
        self.receipted: set[str] = set()
        self.resends = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kill-agent-pub")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.receipt_topic(AGENT), qos=1)
        self.client.on_message = self._on_receipt
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_receipt(self, client, userdata, msg) -> None:
        r = protocol.decode(msg.topic, msg.payload)
        with self.lock:
            self.receipted.update(r.stored)

    def send(self, frame_id: str) -> None:
        f = self.frames[frame_id]
        with self.lock:
            self.sent_at[frame_id] = time.monotonic()
        self.client.publish(protocol.topic_for(f), protocol.encode(f), qos=1)

    def resend_due(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [f for f, t in self.sent_at.items() if f not in self.receipted and now - t > RESEND_AFTER_S]
        self.resends += len(due)
        for frame_id in due:
            self.send(frame_id)

    def done(self) -> int:
        with self.lock:
            return len(self.receipted)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _start_collector(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "trainer.server", "--config", str(config)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_collector_killed_three_times_stores_each_frame_once(broker, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "kill-test"\n'
                      f'batch_ms = 20\n[http]\nenabled = false\n[store]\ndata_dir = "{tmp_path / "data"}"\n')
    log = tmp_path / "collector.log"
    frames = [factories.sample(agent_id=AGENT, frame_id=f"{AGENT}.gate.{i:05d}", jpeg=factories.jpeg(seed=i))
              for i in range(N)]
    expected = {f.frame_id: hashlib.sha256(f.jpeg).hexdigest() for f in frames}
    proc = _start_collector(config, log)
    pub = Publisher(broker, frames)
    kills, kill_at = 0, [150, 450, 750]
    try:
        time.sleep(1.0)  # first session created, so messages are queued for it from now on
        ids = list(expected)
        deadline = time.monotonic() + 150
        while pub.done() < N and time.monotonic() < deadline:
            for frame_id in ids[:25]:
                pub.send(frame_id)
            ids = ids[25:]
            if kills < 3 and N - len(ids) >= kill_at[kills]:  # paced by frames sent, not receipts
                # Kill in the middle of a burst, so frames are in flight, half-written or committed but
                # not yet acknowledged.
                for frame_id in ids[:100]:
                    pub.send(frame_id)
                ids = ids[100:]
                time.sleep(0.03 * (kills + 1))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                kills += 1
                time.sleep(0.3)
                proc = _start_collector(config, log)
            pub.resend_due()
            time.sleep(0.05)
        assert kills == 3, f"only {kills} kills happened; receipted {pub.done()}"
        assert pub.done() == N, f"{pub.done()} of {N} receipted; log:\n{log.read_text()[-3000:]}"
    finally:
        pub.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
    with Store(tmp_path / "data") as store:
        assert store.count() == N
        stored = store.sample_blobs()
        assert stored == expected
        for frame_id, sha in stored.items():
            assert hashlib.sha256(store.blob(sha)).hexdigest() == sha
        assert len(set(store.frame_ids())) == N
        print(f"counters {store.counters()}, publisher resends {pub.resends}")
