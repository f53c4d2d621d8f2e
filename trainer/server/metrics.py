"""In-process counters, and /metrics written by the standard Prometheus client (``prometheus-client``).

``Metrics`` is what the collector counts into (``inc``, ``gauge``; thread-safe,
no I/O). ``render(service)`` builds one ``CollectorRegistry`` per scrape with a
custom collector that reads, at scrape time: this process's counters, the
store (queue, examples, dead letters, disk usage by category, retention),
the fleet (agents online/stale/offline, model versions), the registry
(rollouts, the fleet model) and the rounds table (training). Values that
live in the database are the same whichever process is scraped, so with
several collectors scrape each for its own counters and any one for the rest.
Every name is in ``HELP`` (tests/test_metrics_prom_docs.py checks that each is
documented). A part that fails to read (the store closing, no registry) is
logged and left out; a scrape never fails on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


# name -> (type, help). Every metric /metrics can show; the drift ones are written by trainer/drift/monitor.py.
HELP: dict[str, tuple[str, str]] = {
    # ingest (this process's collector)
    "edgeloop_ingest_received_total": ("counter", "MQTT messages taken from the broker"),
    "edgeloop_ingest_stored_total": ("counter", "sample frames newly stored"),
    "edgeloop_ingest_duplicates_total": ("counter", "sample frames received again after being stored (redeliveries)"),
    "edgeloop_ingest_batches_total": ("counter", "ingest commits"),
    "edgeloop_ingest_commit_seconds_total": ("counter", "time spent waiting for ingest commits"),
    "edgeloop_ingest_prepare_seconds_total": ("counter", "time spent decoding and hashing ingest batches"),
    "edgeloop_receipts_sent_total": ("counter", "receipts published to agents"),
    "edgeloop_ingest_errors_total": ("counter", "ingest batches that failed to commit and were retried"),
    "edgeloop_ingest_backpressure_waits_total": (
        "counter", "times the collector stopped reading MQTT: mqtt.max_inflight_bytes held"),
    "edgeloop_ingest_inflight_bytes": ("gauge", "payload bytes received and not yet committed"),
    "edgeloop_dead_letters_total": ("counter", "messages refused, by reason (this process; store_full: refused "
                                               "for now, the agent keeps the frame)"),
    "edgeloop_mqtt_connected": ("gauge", "1 while the collector is connected to the broker"),
    # store
    "edgeloop_dead_letters_stored": ("gauge", "dead letters in the database, by reason"),
    "edgeloop_queue_depth": ("gauge", "samples waiting for review"),
    "edgeloop_examples_total": ("gauge", "examples in the database"),
    # storage and retention
    "edgeloop_storage_bytes": ("gauge", "image bytes by category (labeled, unreviewed, rejected, skipped)"),
    "edgeloop_storage_examples": ("gauge", "examples by category (labeled, unreviewed, rejected, skipped)"),
    "edgeloop_storage_total_bytes": ("gauge", "image bytes in the store (each stored image once)"),
    "edgeloop_storage_limit_bytes": ("gauge", "retention.hard_limit_bytes (absent when unset)"),
    "edgeloop_store_full": ("gauge", "1 while new samples are refused (storage at retention.hard_limit_bytes)"),
    "edgeloop_retention_deleted_total": ("counter", "examples deleted by retention, by reason (all processes)"),
    "edgeloop_retention_passes_total": ("counter", "retention passes run by this process"),
    # fleet
    "edgeloop_agents": ("gauge", "agents by state: online, stale (online but silent), offline, unknown"),
    "edgeloop_agents_model_version": ("gauge", "agents by the model name and version they run"),
    # publishing and rollout
    "edgeloop_model_fleet_version": ("gauge", "version of the model in state fleet, by model name"),
    "edgeloop_rollout_active": ("gauge", "1 while a rollout runs or is paused, by model name"),
    "edgeloop_rollout_stage": ("gauge", "stage (1-based) of the latest rollout, by model name"),
    "edgeloop_rollout_version": ("gauge", "version the latest rollout announces, by model name"),
    # training
    "edgeloop_rounds": ("gauge", "training rounds in the store, by state (queued, running, done, failed, cancelled)"),
    "edgeloop_round_active": ("gauge", "1 while a round is queued or running (any worker)"),
    "edgeloop_round_epochs": ("gauge", "epochs finished by the active round"),
    "edgeloop_round_trigger_counted": ("gauge", "labels (or corrections) counted towards the next round"),
    "edgeloop_round_trigger_batch": ("gauge", "the batch size that starts the next round"),
    "edgeloop_round_last_finished_timestamp_seconds": ("gauge", "when the last round ended (Unix time)"),
    # drift (written by trainer/drift/monitor.py)
    "edgeloop_drift_psi": ("gauge", "PSI of the agent's recent confidence histogram against its model's test split"),
    "edgeloop_drift_alerts_total": ("counter", "drift alerts fired, by agent"),
    "edgeloop_drift_alert_channel_total": ("counter", "drift alert deliveries and failures, by channel"),
}
_INGEST = ("received", "stored", "duplicates", "batches", "prepare_seconds", "commit_seconds", "errors",
           "backpressure_waits")


def _family(name: str, labels: tuple[str, ...] = ()):
    kind, text = HELP[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, text, labels=list(labels))


def _one(name: str, value: float):
    f = _family(name)
    f.add_metric([], float(value))
    return f


def _by(name: str, label: str, values: dict) -> object:
    f = _family(name, (label,))
    for key, v in sorted(values.items(), key=lambda kv: str(kv[0])):
        f.add_metric([str(key)], float(v))
    return f


def process_families(metrics: Metrics) -> list:
    snap = metrics.snapshot()
    out = [_one(f"edgeloop_ingest_{n}_total", snap["counters"].get(f"ingest_{n}", 0)) for n in _INGEST]
    out.append(_one("edgeloop_receipts_sent_total", snap["counters"].get("receipts_sent", 0)))
    out.append(_by("edgeloop_dead_letters_total", "reason",
                   {r: v for (n, r), v in snap["labelled"].items() if n == "dead_letters"}))
    out.append(_one("edgeloop_mqtt_connected", snap["gauges"].get("mqtt_connected", 0)))
    out.append(_one("edgeloop_ingest_inflight_bytes", snap["gauges"].get("ingest_inflight_bytes", 0)))
    return out


def store_families(stored_dead_letters: dict[str, int], queue_depth: int, examples: int) -> list:
    return [_by("edgeloop_dead_letters_stored", "reason", stored_dead_letters),
            _one("edgeloop_queue_depth", queue_depth), _one("edgeloop_examples_total", examples)]


def storage_families(service) -> list:
    from trainer.store.retention import usage

    store = service.store
    u = service.meter.last if service.meter is not None and service.meter.last is not None else usage(store.db.read())
    out = [_by("edgeloop_storage_bytes", "category", u.bytes), _by("edgeloop_storage_examples", "category", u.examples),
           _one("edgeloop_storage_total_bytes", u.total_bytes)]
    limit = service.config.retention.hard_limit_bytes
    if limit is not None:
        out.append(_one("edgeloop_storage_limit_bytes", limit))
    out.append(_one("edgeloop_store_full", 1 if service.meter is not None and service.meter.full() else 0))
    counters = store.counters()
    out.append(_by("edgeloop_retention_deleted_total", "reason",
                   {k[len("retention_"):]: v for k, v in counters.items() if k.startswith("retention_")}))
    out.append(_one("edgeloop_retention_passes_total", service.retention.runs if service.retention else 0))
    return out


def fleet_families(service) -> list:
    agents = service.store.fleet()
    states = Counter({"online": 0, "stale": 0, "offline": 0})
    versions: Counter[tuple[str, str]] = Counter()
    for a in agents:
        states["stale" if a["stale"] else a["state"]] += 1
        if a["model_name"]:
            versions[(a["model_name"], str(a["model_version"]))] += 1
    f = _family("edgeloop_agents_model_version", ("model", "version"))
    for (model, version), n in sorted(versions.items()):
        f.add_metric([model, version], n)
    return [_by("edgeloop_agents", "state", states), f]


def rollout_families(service) -> list:
    registry, cfg = service.registry, service.config
    name = (cfg.publish.model_name if cfg.publish else cfg.rounds.model_name if cfg.rounds else None)
    if registry is None or name is None:
        return []
    out = []
    current = registry.current(name)
    if current is not None:
        out.append(_by("edgeloop_model_fleet_version", "model", {name: current.version}))
    rows = registry.rollouts(name, limit=1)
    if rows:
        row = rows[0]
        out += [_by("edgeloop_rollout_active", "model", {name: 1 if row["state"] in ("running", "paused") else 0}),
                _by("edgeloop_rollout_stage", "model", {name: int(row["stage"]) + 1}),
                _by("edgeloop_rollout_version", "model", {name: row["version"]})]
    return out


def training_families(service) -> list:
    rounds = service.rounds
    if rounds is None:
        return []
    jobs = rounds.jobs
    counts = dict.fromkeys(("queued", "running", "done", "failed", "cancelled"), 0)
    counts.update(jobs.counts())
    active = jobs.active()
    out = [_by("edgeloop_rounds", "state", counts), _one("edgeloop_round_active", 1 if active else 0),
           _one("edgeloop_round_epochs", len(active.epochs) if active else 0)]
    last = jobs.last_finished()
    if last is not None and last.finished:
        out.append(_one("edgeloop_round_last_finished_timestamp_seconds", last.finished))
    trigger = rounds.trigger_state() if hasattr(rounds, "trigger_state") else None
    if trigger:
        out += [_one("edgeloop_round_trigger_counted", trigger["counted"]),
                _one("edgeloop_round_trigger_batch", trigger["batch_size"])]
    return out


class _Scrape:
    """A prometheus-client collector over one scrape's families."""

    def __init__(self, parts: list) -> None:
        self.parts = parts

    def collect(self):
        for part in self.parts:
            try:
                families = part()
            except Exception:  # one unreadable part must not fail the scrape
                log.exception("metrics: %s failed", getattr(part, "__name__", part))
                continue
            yield from families


def _exposition(parts: list) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(parts))
    return generate_latest(registry).decode()


def prometheus_text(metrics: Metrics, stored_dead_letters: dict[str, int], queue_depth: int,
                    examples: int) -> str:
    """The collector's and the store's basic metrics (what /metrics held before the fleet, rollout parts)."""
    return _exposition([lambda: process_families(metrics),
                        lambda: store_families(stored_dead_letters, queue_depth, examples)])


def render(service) -> str:
    """Everything /metrics serves for a running ``trainer.server.service.Service``."""
    t0 = time.perf_counter()
    store = service.store

    def store_part() -> list:
        return store_families(store.dead_letter_counts(), store.queue_depth(), store.count())

    text = _exposition([lambda: process_families(service.metrics), store_part, lambda: storage_families(service),
                        lambda: fleet_families(service), lambda: rollout_families(service),
                        lambda: training_families(service)])
    drift = getattr(service.publishing, "drift", None)  # trainer.drift.monitor: PSI and alerts per agent
    if drift is not None:
        text += drift.prometheus_text()
    log.debug("metrics rendered in %.3fs", time.perf_counter() - t0)
    return text
