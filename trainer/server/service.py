"""What the server process owns besides HTTP: the store, the metrics and the collector.

``run_until_signal`` runs a Service as a process without HTTP (``edgeloop server`` with
``[http] enabled = false``, ``edgeloop collector``, ``edgeloop worker``): the main thread waits on
an event that SIGINT or SIGTERM sets, then stops the service's threads.
"""

from __future__ import annotations

import logging
import signal
import threading

from trainer.store import Store

from .config import ServerConfig, resolve_client_id
from .ingest import Collector
from .metrics import Metrics

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config: ServerConfig) -> None:
        self.config = resolve_client_id(config)  # the default MQTT client id: host name + data dir's suffix
        self.metrics = Metrics()
        self.store: Store | None = None
        self.collector: Collector | None = None
        self.registry = None  # trainer.publish.registry.Registry, with [rounds] or [publish]
        self.publishing = None  # trainer.publish.service.PublishingService, with [publish]
        self.rounds = None  # trainer.rounds.pipeline.RoundManager, with [rounds]
        self.assist = None  # trainer.assist.worker.Assist, with [assist]
        self.fleet = None  # trainer.fleet.service.FleetService (commands, config bundles), with MQTT
        self.meter = None  # trainer.store.retention.StorageMeter: usage by category, the hard limit
        self.retention = None  # trainer.store.retention.RetentionThread, with [roles] retention or a collector
        self._stop = threading.Event()
        self._hasher: threading.Thread | None = None

    def start(self) -> "Service":
        cfg = self.config
        self.store = Store(cfg.store.data_dir, url=cfg.store.store_url(), busy_timeout_ms=cfg.store.busy_timeout_ms,
                           pool_size=cfg.store.pool_size, queue_config=cfg.queue)
        p = cfg.project
        self.store.configure_project(name=p.name, task=p.task, labels=p.labels, batch_size=p.batch_size)
        roles = cfg.roles  # which parts run in this process (trainer/roles/config.py)
        collecting = cfg.mqtt.enabled and roles.collector
        if roles.retention or collecting:
            from trainer.store.retention import RetentionThread, StorageMeter

            self.meter = StorageMeter(cfg.retention.hard_limit_bytes)
            self.retention = RetentionThread(self.store, cfg.retention, self.meter, prune=roles.retention).start()
        if collecting:
            self.collector = Collector(self.store, cfg.mqtt, self.metrics, meter=self.meter)
            self.collector.start()
        if cfg.mqtt.enabled and (collecting or cfg.http.enabled):
            from trainer.fleet.service import FleetService

            self.fleet = FleetService.open(cfg, self.store)
        self._start_training_side()
        if cfg.assist:
            from trainer.assist.worker import Assist  # onnxruntime and OpenCV only when configured

            self.assist = Assist(self.store, cfg.assist).start()  # a teacher that fails to load is logged, not fatal
        self._stop.clear()
        self._hasher = threading.Thread(target=self._hash_loop, name="phash", daemon=True)
        self._hasher.start()
        if self.publishing:
            threading.Thread(target=self._refresh_loop, name="announce-refresh", daemon=True).start()
        log.info("store at %s", cfg.store.data_dir.resolve())
        return self

    def _start_training_side(self) -> None:
        cfg = self.config
        if not (cfg.rounds or cfg.publish):
            return
        # Imported here: a collector-only server needs none of it.
        from trainer.publish.registry import Registry
        from trainer.publish.service import PublishingService
        from trainer.rounds.pipeline import RoundManager

        self.registry = Registry(cfg.store.data_dir, url=cfg.store.store_url())
        if cfg.publish:
            self.publishing = PublishingService.open(cfg.publish, registry=self.registry,
                                                     client_id=f"{cfg.mqtt.client_id}-publisher")
            if self.fleet is not None:  # a drift alert may raise a group's sampling budget through its bundle
                self.publishing.drift.attach_bundles(self.fleet.bundles)
        if cfg.rounds:
            rounds_cfg = cfg.rounds
            if rounds_cfg.work_dir is None:
                rounds_cfg = rounds_cfg.model_copy(update={"work_dir": cfg.store.data_dir / "rounds"})
            controller = self.publishing.controller if self.publishing else None
            roles = cfg.roles
            self.rounds = RoundManager(self.store, self.registry, rounds_cfg, rollout=controller,
                                       runs_jobs=roles.worker, owner=roles.worker_id or None,
                                       lease_s=roles.worker_lease_s)
            self.rounds.start_auto()
            if roles.worker:
                self.rounds.serve_jobs(roles.worker_poll_s)  # rounds enqueued elsewhere, or whose worker died

    def _refresh_loop(self) -> None:
        """Re-sign the live announcement before it expires, so agents that join late still accept it."""
        while not self._stop.wait(3600.0):
            try:
                self.publishing.publisher.refresh(self.publishing.config.model_name)
            except Exception:
                log.exception("announcement refresh failed; retrying in an hour")

    def _hash_loop(self) -> None:
        """Perceptual hashes for near-duplicate clusters, computed after ingest, off its critical path."""
        while not self._stop.is_set():
            try:
                done = self.store.fill_phashes()
            except Exception:  # a failed pass is retried; it must never take the server down
                log.exception("perceptual hash pass failed")
                done = 0
            if not done:
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._hasher:
            self._hasher.join(30)
            self._hasher = None
        if self.assist:
            self.assist.stop()
            self.assist = None
        if self.retention:
            self.retention.stop()
            self.retention = None
        if self.rounds:
            self.rounds.close()
            self.rounds = None
        if self.publishing:
            self.publishing.close()
            self.publishing = None
        if self.registry:
            self.registry.close()
            self.registry = None
        if self.fleet:
            self.fleet.close()
            self.fleet = None
        if self.collector:
            self.collector.stop()
            self.collector = None
        if self.store:
            self.store.close()
            self.store = None


def run_until_signal(config: ServerConfig, banner: str) -> int:
    """Start a Service, print ``banner``, and stop it on SIGINT or SIGTERM (call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service = Service(config).start()
    print(banner, flush=True)
    try:
        stop.wait()
    finally:
        service.stop()
    return 0
