"""The drift monitor: every agent's recent confidence histogram against its model's reference, and alerts.

``DriftMonitor.on_telemetry`` is called for every decoded Telemetry (by the
publishing service's ``FleetWatch``, on paho's network thread): it keeps a
short list of the agent's cumulative ``conf_hist`` snapshots, takes the
counts of the last ``window_s`` (``psi.window``), compares them with the
reference of the model version the agent runs (``Registry.reference``, read
once per version) and asks the pure ``psi.decide_alert``. It never waits on
the network: an alert goes into a bounded queue (full: dropped, counted,
logged) that one ``drift-alerts`` thread drains, publishing the MQTT event,
POSTing the webhook (with ``webhook_timeout_s``) and, when configured,
raising the sampling budget of the agent's configuration group through the
server's configuration bundles (``trainer.fleet.bundles.Bundles``, attached
with ``attach_bundles``; without them the decision is logged and counted).

Each agent has a pooled track (``conf_hist``, all its cameras) and, from
agents of protocol minor 4 on, one track per camera (``camera_hist``), with
the same window, levels and hysteresis. A camera track alerts (the event
names the camera) only when the agent reports two cameras or more: with one,
the pooled track is that camera and alerts alone. The budget raise stays one
per configuration group per cooldown, whichever track fired.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol import Status, Telemetry
from protocol.topics import ROOT

from .psi import AlertThresholds, Hist, decide_alert, joint_psi, level, per_class_psi, raised_budget, window

log = logging.getLogger(__name__)
EVENT_TOPIC = ROOT + "/events/drift/{agent_id}"  # QoS 1, not retained; JSON (docs/publishing.md, "Drift")
MAX_SNAPSHOTS = 256


def drift_topic(agent_id: str) -> str:
    return EVENT_TOPIC.format(agent_id=agent_id)


class DriftConfig(BaseModel):
    """``[publish.drift]``: comparing live confidence histograms with each model's test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    epsilon: float = Field(1e-3, gt=0.0, le=0.1)  # PSI smoothing of empty cells
    window_s: float = Field(600.0, ge=1.0, le=7 * 86400)  # the recent counts compared
    min_samples: int = Field(200, ge=1, le=10**9)  # frames in the window before an agent is judged
    min_class_samples: int = Field(50, ge=1, le=10**9)  # frames of a class before its own PSI is shown
    alert_psi: float = Field(0.25, gt=0.0, le=10.0)
    clear_psi: float = Field(0.2, ge=0.0, le=10.0)
    webhook_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    webhook_timeout_s: float = Field(5.0, gt=0.0, le=60.0)
    queue_size: int = Field(100, ge=1, le=100000)
    raise_budget: bool = False  # on an alert, raise sampling.per_minute of the agent's configuration group
    budget_factor: float = Field(2.0, gt=1.0, le=100.0)
    budget_base_per_minute: int = Field(10, ge=0, le=100000)  # assumed when the group's bundle sets none
    budget_max_per_minute: int = Field(600, ge=1, le=100000)
    budget_cooldown_s: float = Field(3600.0, ge=0.0, le=30 * 86400)  # one raise per group per this long

    @model_validator(mode="after")
    def _hysteresis(self) -> "DriftConfig":
        if self.clear_psi > self.alert_psi:
            raise ValueError(f"clear_psi ({self.clear_psi}) must not be above alert_psi ({self.alert_psi})")
        return self

    def thresholds(self) -> AlertThresholds:
        return AlertThresholds(self.alert_psi, self.clear_psi, self.min_samples)


@dataclass
class AgentDrift:
    """One histogram stream: an agent's pooled one (``camera`` empty) or one of its cameras'."""

    agent_id: str
    camera: str = ""
    model_version: int = 0
    snapshots: deque = field(default_factory=lambda: deque(maxlen=MAX_SNAPSHOTS))  # (at, hist)
    live: Hist = field(default_factory=dict)
    psi: float | None = None
    per_class: dict = field(default_factory=dict)
    samples: int = 0
    level: str = "insufficient"
    reference_version: int | None = None
    alerting: bool = False
    alerts: int = 0
    updated: float = 0.0
    history: deque = field(default_factory=lambda: deque(maxlen=120))  # (at, psi) for the chart
    cameras: dict[str, "AgentDrift"] = field(default_factory=dict)  # on the pooled track only


class DriftMonitor:
    def __init__(self, registry, model_name: str, config: DriftConfig, publish: Callable[[str, bytes], None],
                 status_of: Callable[[str], Status | None] = lambda _a: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.model_name = model_name
        self.config = config
        self._publish = publish  # (topic, payload): QoS 1, waits for the PUBACK; only the alert thread calls it
        self.status_of = status_of
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.alert_counts: Counter[tuple[str, str]] = Counter()  # (agent, camera or "") -> alerts fired
        self._agents: dict[str, AgentDrift] = {}
        self._refs: dict[int, tuple[float, dict | None]] = {}  # version -> (looked up at, reference)
        self._budget_at: dict[str, float] = {}  # group -> last raise
        self._bundles = None
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(config.queue_size)
        self._thread = threading.Thread(target=self._alert_loop, name="drift-alerts", daemon=True)
        self._thread.start()

    def attach_bundles(self, bundles) -> None:
        """The server's ``trainer.fleet.bundles.Bundles``: lets an alert raise a group's sampling budget."""
        self._bundles = bundles

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(self.config.webhook_timeout_s + 5)

    # -- ingest side (paho's thread): never waits on the network -------------------------------------
    def on_telemetry(self, t: Telemetry) -> None:
        if not self.config.enabled:
            return
        now = self.clock()
        ref = self._reference(t.model_version, now)
        with self._lock:
            a = self._agents.setdefault(t.agent_id, AgentDrift(t.agent_id))
            if a.model_version != t.model_version:
                a.cameras.clear()  # the agent's per-camera histograms restart at a swap too
            events = [self._update(a, t.model_version, t.conf_hist, ref, now, alerts_on=True)]
            for camera, hist in t.camera_hist.items():
                c = a.cameras.setdefault(camera, AgentDrift(t.agent_id, camera))
                events.append(self._update(c, t.model_version, hist, ref, now, len(t.camera_hist) > 1))
        for event in events:
            if event is not None:
                log.warning("drift alert %s for %s%s: PSI %.3f over %d frames (model v%d)", event["state"],
                            t.agent_id, f" camera {event['camera']}" if event["camera"] else "", event["psi"],
                            event["samples"], t.model_version)
                self._enqueue(event)

    def _update(self, a: AgentDrift, version: int, hist: Hist, ref: dict | None, now: float,
                alerts_on: bool) -> dict | None:
        """One track's new window, PSI and level; the alert event when it fires or clears (caller holds the lock)."""
        if a.model_version != version:
            a.snapshots.clear()
            a.model_version = version
        live = self._window(a, hist, now)
        a.live, a.samples, a.updated = live, sum(sum(v) for v in live.values()), now
        a.reference_version = ref["version"] if ref else None
        a.psi = joint_psi(ref["hist"], live, self.config.epsilon) if ref and a.samples else None
        a.per_class = per_class_psi(ref["hist"], live, self.config.epsilon,
                                    self.config.min_class_samples) if ref else {}
        a.level = level(a.psi, a.samples, self.config.min_samples) if ref else "no_reference"
        if a.psi is not None:
            a.history.append((now, round(a.psi, 4)))
        decision = decide_alert(a.alerting, a.psi, a.samples, self.config.thresholds()) if alerts_on else "none"
        if decision == "none":
            return None
        a.alerting = decision == "fire"
        if a.alerting:
            a.alerts += 1
            self.alert_counts[(a.agent_id, a.camera)] += 1
        return self._event(a, "fired" if a.alerting else "cleared", now)

    def _window(self, a: AgentDrift, hist: Hist, now: float) -> Hist:
        """Counts of the last window_s (or since the swap, while the monitor knows less than a window)."""
        base = None
        while a.snapshots and a.snapshots[0][0] <= now - self.config.window_s:
            base = a.snapshots.popleft()
        if base is not None:  # keep the newest snapshot older than the window as the next base
            a.snapshots.appendleft(base)
        live = window(hist, base[1] if base else None)
        if live is None:  # counts went down: the agent restarted; start over from this snapshot
            a.snapshots.clear()
            live = window(hist, None)
        a.snapshots.append((now, {k: tuple(v) for k, v in hist.items()}))
        return live

    def _reference(self, version: int, now: float) -> dict | None:
        cached = self._refs.get(version)
        if cached is not None and (cached[1] is not None or now - cached[0] < 60.0):
            return cached[1]
        ref = self.registry.reference(self.model_name, version) if version > 0 else None
        self._refs[version] = (now, ref)
        return ref

    def _event(self, a: AgentDrift, state: str, now: float) -> dict:
        status = self.status_of(a.agent_id)
        return {"kind": "drift", "state": state, "agent_id": a.agent_id, "camera": a.camera,
                "model_name": self.model_name,
                "model_version": a.model_version, "reference_version": a.reference_version,
                "psi": round(a.psi or 0.0, 4), "level": a.level, "samples": a.samples,
                "per_class": {k: (round(v, 4) if v is not None else None) for k, v in a.per_class.items()},
                "alert_psi": self.config.alert_psi, "cameras": list(status.cameras) if status else [],
                "config_group": status.config_group if status else "", "at": now}

    def _enqueue(self, event: dict) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.counters["alerts_dropped"] += 1
            log.error("drift alert queue full (%d): dropped the %s alert of %s", self.config.queue_size,
                      event["state"], event["agent_id"])

    # -- the alert thread -----------------------------------------------------------------------------
    def _alert_loop(self) -> None:
        while (event := self._queue.get()) is not None:
            for name, action in (("mqtt", self._send_mqtt), ("webhook", self._send_webhook),
                                 ("budget", self._raise_budget)):
                try:
                    action(event)
                except Exception as e:  # one failing channel must not stop the others
                    self.counters[f"{name}_failures"] += 1
                    log.error("drift alert of %s: %s failed: %s", event["agent_id"], name, e)

    def _send_mqtt(self, event: dict) -> None:
        self._publish(drift_topic(event["agent_id"]), json.dumps(event).encode())
        self.counters["mqtt_events"] += 1

    def _send_webhook(self, event: dict) -> None:
        if not self.config.webhook_url:
            return
        req = urllib.request.Request(self.config.webhook_url, data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "edgeloop-drift"})
        with urllib.request.urlopen(req, timeout=self.config.webhook_timeout_s) as r:
            r.read(1024)
        self.counters["webhooks"] += 1

    def _raise_budget(self, event: dict) -> None:
        """On a fired alert, push a bundle with a higher sampling.per_minute for the agent's group."""
        group = event.get("config_group") or ""
        if not self.config.raise_budget or event["state"] != "fired":
            return
        if not group:
            self.counters["budget_no_group"] += 1
            log.warning("drift on %s: no configuration group in its status, budget left as is", event["agent_id"])
            return
        now = self.clock()
        if now - self._budget_at.get(group, -1e18) < self.config.budget_cooldown_s:
            return
        if self._bundles is None:
            self.counters["budget_no_bundles"] += 1
            log.warning("drift on %s: would raise the sampling budget of group %s, but configuration bundles"
                        " are off on this server", event["agent_id"], group)
            return
        versions = self._bundles.versions(group, 1)
        settings = dict(versions[0]["settings"]) if versions else {}
        sampling = dict(settings.get("sampling", {}))
        new = raised_budget(sampling.get("per_minute"), self.config.budget_base_per_minute,
                            self.config.budget_factor, self.config.budget_max_per_minute)
        self._budget_at[group] = now
        if new is None:
            log.info("drift on %s: group %s is at the budget cap already", event["agent_id"], group)
            return
        settings["sampling"] = {**sampling, "per_minute": new}
        where = event["agent_id"] + (f" camera {event['camera']}" if event.get("camera") else "")
        self._bundles.push(group, settings, "drift-monitor", note=f"drift on {where}: PSI"
                           f" {event['psi']:.2f}, sampling.per_minute -> {new}",
                           parent_version=versions[0]["version"] if versions else 0)
        self.counters["budget_raises"] += 1

    # -- reads ----------------------------------------------------------------------------------------
    def agents(self) -> list[dict]:
        with self._lock:
            rows = [self._row(a) for a in sorted(self._agents.values(), key=lambda a: a.agent_id)]
        return rows

    def agent(self, agent_id: str, detail: bool = True) -> dict | None:
        with self._lock:
            a = self._agents.get(agent_id)
            if a is None:
                return None
            row = self._row(a, detail)
            live = {k: list(v) for k, v in a.live.items()}
            history = list(a.history)
        ref = self._refs.get(a.model_version, (0, None))[1]
        return {**row, "live": live, "reference": ref["hist"] if ref else None, "history": history}

    def _row(self, a: AgentDrift, detail: bool = False) -> dict:
        status = self.status_of(a.agent_id)
        return {"agent_id": a.agent_id, "cameras": list(status.cameras) if status else [],
                "config_group": status.config_group if status else "", **self._figures(a),
                "per_camera": [{"camera": c.camera, **self._figures(c),
                                **({"live": {k: list(v) for k, v in c.live.items()}} if detail else {})}
                               for c in sorted(a.cameras.values(), key=lambda c: c.camera)]}

    @staticmethod
    def _figures(a: AgentDrift) -> dict:
        return {"model_version": a.model_version, "reference_version": a.reference_version, "psi": a.psi,
                "level": a.level, "samples": a.samples, "per_class": dict(a.per_class), "alerting": a.alerting,
                "alerts": a.alerts, "updated": a.updated}

    def prometheus_text(self) -> str:
        """Lines for /metrics: PSI and alerts per agent (pooled) and per camera, alert channel counters."""
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        def labels(key: tuple[str, str]) -> str:
            agent, camera = key
            return f'agent="{esc(agent)}"' + (f',camera="{esc(camera)}"' if camera else "")
        with self._lock:
            tracks = [t for a in self._agents.values() for t in (a, *a.cameras.values())]
            psi = [((t.agent_id, t.camera), t.psi) for t in tracks if t.psi is not None]
            alerts = dict(self.alert_counts)
            counters = dict(self.counters)
        lines = ["# HELP edgeloop_drift_psi PSI of the agent's recent confidence histogram against its model's"
                 " test split", "# TYPE edgeloop_drift_psi gauge"]
        lines += [f"edgeloop_drift_psi{{{labels(k)}}} {v:.6g}" for k, v in sorted(psi)]
        lines += ["# HELP edgeloop_drift_alerts_total drift alerts fired, by agent",
                  "# TYPE edgeloop_drift_alerts_total counter"]
        lines += [f"edgeloop_drift_alerts_total{{{labels(k)}}} {n}" for k, n in sorted(alerts.items())]
        lines += ["# HELP edgeloop_drift_alert_channel_total drift alert deliveries and failures, by channel",
                  "# TYPE edgeloop_drift_alert_channel_total counter"]
        lines += [f'edgeloop_drift_alert_channel_total{{channel="{esc(k)}"}} {n}' for k, n in sorted(counters.items())]
        return "\n".join(lines) + "\n"
