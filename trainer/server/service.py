"""What the server process owns besides HTTP: the store, the metrics and the collector."""

from __future__ import annotations

import logging
import threading

from trainer.store import Store

from .config import ServerConfig
from .ingest import Collector
from .metrics import Metrics

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store: Store | None = None
        self.collector: Collector | None = None
        self._stop = threading.Event()
        self._hasher: threading.Thread | None = None

    def start(self) -> "Service":
        cfg = self.config
        self.store = Store(cfg.store.data_dir, busy_timeout_ms=cfg.store.busy_timeout_ms)
        p = cfg.project
        self.store.configure_project(name=p.name, task=p.task, labels=p.labels, batch_size=p.batch_size)
        if cfg.mqtt.enabled:
            self.collector = Collector(self.store, cfg.mqtt, self.metrics)
            self.collector.start()
        self._stop.clear()
        self._hasher = threading.Thread(target=self._hash_loop, name="phash", daemon=True)
        self._hasher.start()
        log.info("store at %s", cfg.store.data_dir.resolve())
        return self

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
        if self.collector:
            self.collector.stop()
            self.collector = None
        if self.store:
            self.store.close()
            self.store = None
