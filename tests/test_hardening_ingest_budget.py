"""Finding 9 of issue 11 (ingest side): the collector holds a bounded number of payload bytes.

Before, every message the broker delivered waited in an unbounded queue: a burst of 8 MiB samples
left the collector at 650 MiB resident. Now the MQTT network thread waits while
``mqtt.max_inflight_bytes`` are received but not yet committed, so TCP and the broker hold the rest
(agents keep unreceipted frames in their outbox, so waiting loses nothing). The test holds the store's
commit back (a stalled disk), sends 16 MiB, and counts the bytes the collector has taken in: no timing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import factories
import protocol
from mqtt_util import wait_until
from test_ingest_collector import _config, _publish_all
from trainer.server.service import Service

MIB = 1024 * 1024
N = 16  # under the broker's per-client in-flight window, so without a bound all would be delivered at once
LIMIT = 4 * MIB


def _big_samples() -> list:
    out = []
    for i in range(N):
        jpeg = factories.jpeg(1024, 1024, seed=i, quality=95)
        assert MIB <= len(jpeg) < 2 * MIB
        out.append(factories.sample(frame_id=f"cam-agent-1.gate.{i:04d}", jpeg=jpeg, width=1024, height=1024))
    return out


def test_a_stalled_store_bounds_the_bytes_taken_in(broker, tmp_path: Path) -> None:
    svc = Service(_config(broker, tmp_path, max_inflight_bytes=LIMIT, batch_ms=5)).start()
    disk = threading.Event()
    try:
        collector = svc.collector
        assert collector.connected.wait(10)
        taken, lock = [0], threading.Lock()
        deliver = collector.client.on_message

        def counting(client, userdata, msg) -> None:  # what the network thread has taken off the socket
            with lock:
                taken[0] += len(msg.payload)
            deliver(client, userdata, msg)
        collector.client.on_message = counting
        ingest = svc.store.ingest_samples_async

        def stalled(prepared):
            disk.wait(60)
            return ingest(prepared)
        svc.store.ingest_samples_async = stalled
        samples = _big_samples()
        biggest = max(len(protocol.encode(s)) for s in samples)
        _publish_all(broker, [(protocol.topic_for(s), protocol.encode(s)) for s in samples])
        # Either the collector says it is waiting for room, or (no bound) it has taken everything in.
        budget = getattr(collector, "budget", None)
        assert wait_until(lambda: (budget is not None and budget.waiting) or taken[0] >= N * MIB, timeout=30)
        with lock:
            held = taken[0]
        assert held <= LIMIT + biggest, f"{held / MIB:.1f} MiB taken in with the store stalled"
        assert budget.held <= max(LIMIT, biggest) and budget.peak <= max(LIMIT, biggest)
        disk.set()
        assert wait_until(lambda: svc.store.count() == N, timeout=60)
        assert wait_until(lambda: budget.held == 0)
        assert svc.metrics.get("ingest_backpressure_waits") >= 1
    finally:
        disk.set()
        svc.stop()
