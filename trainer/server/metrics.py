"""In-process counters and their Prometheus text form."""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    """Thread-safe counters; labelled ones are keyed by (name, label value)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._labelled: Counter[tuple[str, str]] = Counter()
        self._gauges: dict[str, float] = {}

    def inc(self, name: str, n: int | float = 1, label: str | None = None) -> None:
        with self._lock:
            if label is None:
                self._counts[name] += n
            else:
                self._labelled[(name, label)] += n

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str, label: str | None = None) -> float:
        with self._lock:
            return self._counts[name] if label is None else self._labelled[(name, label)]

    def snapshot(self) -> dict:
        with self._lock:
            return {"counters": dict(self._counts), "labelled": dict(self._labelled), "gauges": dict(self._gauges)}


HELP = {
    "edgeloop_ingest_received_total": "MQTT messages taken from the broker",
    "edgeloop_ingest_stored_total": "sample frames newly stored",
    "edgeloop_ingest_duplicates_total": "sample frames received again after being stored (redeliveries)",
    "edgeloop_ingest_batches_total": "ingest commits",
    "edgeloop_ingest_commit_seconds_total": "time spent waiting for ingest commits",
    "edgeloop_ingest_prepare_seconds_total": "time spent decoding and hashing ingest batches",
    "edgeloop_receipts_sent_total": "receipts published to agents",
    "edgeloop_ingest_errors_total": "ingest batches that failed to commit and were retried",
    "edgeloop_dead_letters_total": "messages refused, by reason (this process)",
    "edgeloop_dead_letters_stored": "dead letters in the database, by reason",
    "edgeloop_queue_depth": "samples waiting for review",
    "edgeloop_examples_total": "examples in the database",
    "edgeloop_mqtt_connected": "1 while the collector is connected to the broker",
    "edgeloop_ingest_backpressure_waits_total": "times the collector stopped reading MQTT: mqtt.max_inflight_bytes held",
    "edgeloop_ingest_inflight_bytes": "payload bytes received and not yet committed",
}


def prometheus_text(metrics: Metrics, stored_dead_letters: dict[str, int], queue_depth: int,
                    examples: int) -> str:
    snap = metrics.snapshot()
    lines: list[str] = []

    def emit(name: str, kind: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {HELP.get(name, name)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    for name in ("received", "stored", "duplicates", "batches", "prepare_seconds", "commit_seconds", "errors",
                 "backpressure_waits"):
        emit(f"edgeloop_ingest_{name}_total", "counter", [("", snap["counters"].get(f"ingest_{name}", 0))])
    emit("edgeloop_receipts_sent_total", "counter", [("", snap["counters"].get("receipts_sent", 0))])
    dl = sorted((label, v) for (name, label), v in snap["labelled"].items() if name == "dead_letters")
    emit("edgeloop_dead_letters_total", "counter", [(f'{{reason="{_esc(r)}"}}', v) for r, v in dl])
    emit("edgeloop_dead_letters_stored", "gauge",
         [(f'{{reason="{_esc(r)}"}}', v) for r, v in sorted(stored_dead_letters.items())])
    emit("edgeloop_queue_depth", "gauge", [("", queue_depth)])
    emit("edgeloop_examples_total", "gauge", [("", examples)])
    emit("edgeloop_mqtt_connected", "gauge", [("", snap["gauges"].get("mqtt_connected", 0))])
    emit("edgeloop_ingest_inflight_bytes", "gauge", [("", snap["gauges"].get("ingest_inflight_bytes", 0))])
    return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
