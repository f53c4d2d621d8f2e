"""The agent: capture threads -> inference loop -> sampler -> encoder -> outbox -> uplink.

Threads and what they may wait on:

* ``capture-<camera>`` (one per camera): the camera, and the FrameHub slot for
  files (live streams overwrite instead).
* ``inference``: the FrameHub only. It never touches the network or the disk;
  a picked frame goes into a bounded queue with ``put_nowait`` (a full queue
  is a counted ``queue_full`` drop, never a wait).
* ``encoder``: JPEG-encodes picked frames only, builds the Sample and writes it
  to the outbox (SQLite, its own writer thread).
* ``uplink``: MQTT, see agent.uplink; commands and configuration bundles
  (agent.bundles) are handled on its thread. ``updater``: downloads and
  model swaps; ``updater-commands``: rollbacks.

Every command is answered by a Status whose ``answered`` names it, published
once the command took effect: at once for ``ping``, ``reload_config`` and
``resend_outbox``; for ``rollback`` when the updater's command thread has
finished (or refused) it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protocol.version import SOFTWARE_VERSION as __version__
from protocol import Box, Command, ConfigBundle, Sample, Status, Telemetry, encode, ProtocolError
from protocol.embedding import quantize_embedding
from protocol.fields import PROSE_CONTROL_RE
from protocol.messages import MAX_BOXES
from protocol.topics import sample_topic

from .bundles import BundleKeeper
from .config import AgentConfig, ConfigError, load_config, trusted_keys
from .health import HealthWindow
from .metrics import ConfidenceHistogram, Counters, LatencyWindow, RateMeter
from .model import NonFiniteOutput, Prediction
from .modelstore import ModelStore
from .outbox import Outbox
from .sampling import Decision, Sampler
from .sources import CameraSource, Frame, FrameHub
from .updater import ModelHolder, Updater
from .uplink import Uplink

log = logging.getLogger(__name__)
ROLLBACK_THREAD = "updater-commands"  # agent.updater runs rollbacks there, one job per request, in order


@dataclass(frozen=True)
class Picked:
    frame: Frame
    prediction: Prediction
    decision: Decision
    model_name: str
    model_version: int


def score_floor(cfg: AgentConfig) -> float:
    """The lowest box score any configured strategy looks at (band strategies need sub-threshold boxes)."""
    lows = [getattr(s, "low", 1.0) for s in cfg.sampling.strategies]
    lows += [getattr(s, "min_score", 1.0) for s in cfg.sampling.strategies]
    return min(lows + [1.0])


class Agent:
    def __init__(self, cfg: AgentConfig, config_path: Path | None = None, seed: int | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        rng = random.Random(seed)
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.fps = RateMeter()
        self.camera_fps = {c.id: RateMeter() for c in cfg.cameras}
        self.hist = ConfidenceHistogram()  # of the model version that inferred last: reset on a swap
        self.camera_hist = {c.id: ConfidenceHistogram() for c in cfg.cameras}  # the same, per camera
        self._hist_version: int | None = None
        self.frames = 0  # inferred since start
        self.sampled = 0  # written to the outbox since start
        self.inference_errors = 0
        self.boot = uuid.uuid4().hex[:8]  # frame ids stay unique across restarts
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(cfg.data_dir / "outbox.sqlite", cfg.outbox.max_bytes)
        self.holder = ModelHolder()
        # Only an updater thread judges the window: without updates nobody would ever close it.
        self.health = HealthWindow(cfg.updates.health) if cfg.updates.enabled and cfg.updates.health.enabled \
            else None
        self.updater = Updater(cfg, ModelStore(cfg.data_dir / "models"), self.holder, self._status_changed,
                               score_floor(cfg), health=self.health)
        self.hub = FrameHub([c.id for c in cfg.cameras], self.counters)
        self.sources = [CameraSource(c, self.hub, self.counters, random.Random(rng.random())) for c in cfg.cameras]
        sample_seed = cfg.sampling.seed if cfg.sampling.seed is not None else rng.getrandbits(64)
        self.sampler = Sampler(cfg.sampling, random.Random(sample_seed), self.counters)
        self.picked: queue.Queue[Picked | None] = queue.Queue(maxsize=cfg.outbox.queue_size)
        self.uplink = Uplink(cfg, self.outbox, self.counters, random.Random(rng.random()), self.status,
                             self.telemetry, self.handle_command, self.updater.submit, on_config=self.handle_config)
        self._answers: list[str] = []  # command ids the next online Status answers
        self._rollbacks: deque[str] = deque()  # rollback commands the updater has not finished yet
        self._answers_lock = threading.Lock()
        self.file_cfg = cfg  # as read from the file; self.cfg has the applied bundle laid over it
        self.bundles = BundleKeeper(cfg, trusted_keys(cfg.updates), self._apply_config)
        self.bundles.load_saved()
        self.stop_event = threading.Event()
        self._threads = [threading.Thread(target=self._infer_loop, name="inference", daemon=True),
                         threading.Thread(target=self._encode_loop, name="encoder", daemon=True)]
        self._camera_summary = ""
        self._last_error_log = 0.0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> "Agent":
        self.updater.load_initial()
        self.uplink.start()
        if self.cfg.updates.enabled:
            self.updater.start()
        for t in self._threads:
            t.start()
        for s in self.sources:
            s.start()
        log.info("agent %s started: %d camera(s), model state %s", self.cfg.agent_id, len(self.sources),
                 self.holder.model_state)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for s in self.sources:
            s.stop()
        self._threads[0].join(10)
        self.picked.put(None)  # the encoder finishes what was picked before it stops
        self._threads[1].join(30)
        self.outbox.flush()
        self.uplink.stop()
        if self.cfg.updates.enabled:
            self.updater.stop()
        self.outbox.close()
        log.info("agent %s stopped", self.cfg.agent_id)

    def sources_done(self) -> bool:
        return all(s.ended for s in self.sources) and self.hub.idle() and self.picked.unfinished_tasks == 0

    def run(self, stop: threading.Event, exit_when_done: bool = False, drain_timeout_s: float = 30.0) -> None:
        """Watch cameras for status changes until ``stop`` (or, with exit_when_done, until all is sent)."""
        done_at = None
        while not stop.wait(0.5):
            self._watch_cameras()
            if not exit_when_done or not self.sources_done():
                continue
            done_at = done_at or time.monotonic()
            self.outbox.flush()
            if self.outbox.stats().pending == 0 or time.monotonic() - done_at > drain_timeout_s:
                return

    def _watch_cameras(self) -> None:
        summary = self._cameras_detail()
        if summary != self._camera_summary:
            self._camera_summary = summary
            self._status_changed()

    # -- hot path --------------------------------------------------------------------

    def _infer_loop(self) -> None:
        while not self.stop_event.is_set():
            frame = self.hub.take(0.2)
            if frame is None:
                continue
            try:
                self._infer(frame)
            except Exception:  # a bug after inference (decode, sampling) must not kill the loop silently
                self.counters.add("inference_error")
                if time.monotonic() - self._last_error_log > 5.0:
                    self._last_error_log = time.monotonic()
                    log.exception("processing %s frame %d failed", frame.camera_id, frame.seq)
            finally:
                self.hub.done()

    def _infer(self, frame: Frame) -> None:
        runner = self.holder.get()
        if runner is None:
            self.counters.add("no_model")
            return
        t0 = time.perf_counter()
        try:
            pred = runner.infer(frame.image)
        except NonFiniteOutput as e:  # never decoded, sampled or sent: the protocol refuses NaN
            self._failed(runner.version, "nonfinite", "nonfinite_output", frame, e)
            return
        except Exception as e:  # a frame the model chokes on must not stop the loop
            self._failed(runner.version, "error", "inference_error", frame, e)
            return
        self.latency.add(time.perf_counter() - t0)
        self.frames += 1
        self.fps.tick()
        self.camera_fps[frame.camera_id].tick()
        if self._hist_version != runner.version:  # telemetry compares histograms model against model
            self.hist, self._hist_version = ConfidenceHistogram(), runner.version
            self.camera_hist = {c: ConfidenceHistogram() for c in self.camera_hist}
        top = pred.top()
        camera_hist = self.camera_hist[frame.camera_id]
        for label, conf in top:
            self.hist.add(label, conf)
            camera_hist.add(label, conf)
        if self.health is not None:
            self.health.record(runner.version, "ok", max((c for _, c in top), default=None))
        decision = self.sampler.decide(frame.camera_id, pred, frame.image, frame.captured_at)
        if decision is None:
            return
        try:
            self.picked.put_nowait(Picked(frame, pred, decision, runner.name, runner.version))
        except queue.Full:
            self.counters.add("queue_full")
            self._log_error("encoder queue full: dropped a picked frame of %s", frame.camera_id)

    def _failed(self, version: int, outcome: str, counter: str, frame: Frame, e: Exception) -> None:
        self.inference_errors += 1  # non-finite outputs too: the server's rollout watches this figure
        self.counters.add(counter)
        if self.health is not None:
            self.health.record(version, outcome)
        self._log_error("inference failed on %s frame %d (v%d): %s", frame.camera_id, frame.seq, version, e)

    def _log_error(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5.0:  # one line per 5 s; the counters have the totals
            self._last_error_log = now
            log.error(msg, *args)

    def _encode_loop(self) -> None:
        quality = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.outbox.jpeg_quality]
        while (p := self.picked.get()) is not None:
            try:
                self._store(p, quality)
            finally:
                self.picked.task_done()

    def _store(self, p: Picked, quality: list[int]) -> None:
        try:
            sample = self._sample(p, quality)
            payload = encode(sample)
        except (ProtocolError, cv2.error, ValueError) as e:
            self.counters.add("encode_error")
            log.error("could not encode picked frame %s/%d: %s", p.frame.camera_id, p.frame.seq, e)
            return
        try:
            self.outbox.put(sample.frame_id, sample_topic(self.cfg.agent_id, p.frame.camera_id),
                            p.frame.camera_id, p.decision.uncertainty, payload).result(60)
        except Exception as e:  # disk full, I/O error: say so loudly, keep inferring
            self.counters.add("outbox_error")
            log.error("outbox write failed for %s: %s", sample.frame_id, e)
            return
        self.sampled += 1
        self.uplink.notify()

    def _sample(self, p: Picked, quality: list[int]) -> Sample:
        ok, buf = cv2.imencode(".jpg", p.frame.image, quality)
        if not ok:
            raise ValueError("JPEG encoding failed")
        pred, d = p.prediction, p.decision
        best = np.argsort(-pred.box_scores, kind="stable")[:MAX_BOXES]  # the protocol's cap per sample
        boxes = tuple(Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), int(lab))
                      for b, s, lab in zip(pred.boxes[best], pred.box_scores[best], pred.box_labels[best]))
        h, w = p.frame.image.shape[:2]
        return Sample(
            agent_id=self.cfg.agent_id, camera_id=p.frame.camera_id,
            frame_id=f"{self.cfg.agent_id}.{p.frame.camera_id}.{self.boot}-{p.frame.seq:08d}",
            captured_at=p.frame.captured_at, model_name=p.model_name, model_version=p.model_version,
            task=pred.task, labels=pred.labels, scores=tuple(float(s) for s in pred.scores), boxes=boxes,
            uncertainty=min(float(d.uncertainty), 1e6), strategy=d.strategy, reason=d.reason[:512],
            width=w, height=h, jpeg=buf.tobytes(),
            embedding=quantize_embedding(pred.embedding) if pred.embedding is not None else b"")

    # -- status, telemetry, commands ------------------------------------------------------

    def _cameras_detail(self) -> str:
        return "; ".join(f"camera {s.cfg.id}: {s.state} ({s.last_error})" for s in self.sources
                         if s.state == "reconnecting")

    def _status_changed(self) -> None:
        if threading.current_thread().name == ROLLBACK_THREAD:
            with self._answers_lock:  # a rollback finished or was refused: its command gets its answer
                if self._rollbacks:
                    self._answers.append(self._rollbacks.popleft())
        self.uplink.publish_status()

    def _answer(self, command_id: str) -> None:
        with self._answers_lock:
            self._answers.append(command_id)
        self.uplink.publish_status()

    def _take_answers(self, state: str) -> tuple[str, ...]:
        if state != "online":  # the last will and the clean-stop status answer nothing
            return ()
        with self._answers_lock:
            taken, self._answers = self._answers[:32], self._answers[32:]
        if self._answers:
            self.uplink.publish_status()
        return tuple(taken)

    def status(self, state: str) -> Status:
        with self.holder.lock:
            ref, runner = self.holder.ref, self.holder.runner
            model_state, detail = self.holder.model_state, self.holder.detail
        cams = self._cameras_detail()
        warning = f"warning: {runner.provider_warning}" if runner and runner.provider_warning else ""
        detail = "; ".join(x for x in (detail, self.bundles.detail, warning, cams) if x)
        return Status(agent_id=self.cfg.agent_id, state=state, at=time.time(), software_version=__version__,
                      model_name=runner.name if runner else self.cfg.model.name,
                      model_version=max(ref.version, 0) if ref else 0, model_state=model_state,
                      cameras=tuple(c.id for c in self.cfg.cameras), cohorts=tuple(self.cfg.groups),
                      detail=PROSE_CONTROL_RE.sub("?", detail[:1024]), provider=runner.provider if runner else "",
                      tags=dict(self.cfg.tags),
                      answered=self._take_answers(state), config_group=self.bundles.group or "",
                      config_version=self.bundles.version)

    def telemetry(self) -> Telemetry:
        p50, p99 = self.latency.percentiles_ms()
        stats = self.outbox.stats()
        ref, runner = self.holder.ref, self.holder.runner
        return Telemetry(
            agent_id=self.cfg.agent_id, at=time.time(), period_s=self.cfg.uplink.telemetry_period_s,
            model_version=max(ref.version, 0) if ref else 0, fps=self.fps.rate(), latency_p50_ms=p50,
            latency_p99_ms=p99, frames=self.frames, sampled=self.sampled, inference_errors=self.inference_errors,
            outbox_depth=stats.pending, outbox_bytes=stats.disk_bytes,
            drops={**self.counters.snapshot(), "evicted": stats.evicted},
            conf_hist=self.hist.snapshot(), camera_fps={k: m.rate() for k, m in self.camera_fps.items()},
            provider=runner.provider if runner else "",
            camera_hist={k: snap for k, h in self.camera_hist.items() if (snap := h.snapshot())})

    def handle_command(self, cmd: Command) -> None:
        if cmd.expired(time.time()):  # delivered late (a queue after a reconnect): the server gave up on it
            log.warning("command %s (%s) expired at %.0f: refused", cmd.command_id, cmd.action, cmd.expires_at)
            self.counters.add("commands_expired")
            self.holder.report(self.holder.model_state, f"command {cmd.command_id} ({cmd.action}) refused: expired")
            return
        log.info("command %s: %s %s", cmd.command_id, cmd.action, cmd.args or "")
        if cmd.action == "rollback":
            if self.cfg.updates.enabled:
                with self._answers_lock:
                    self._rollbacks.append(cmd.command_id)
                self.updater.request_rollback()  # answered when the updater's command thread is done
                return
            self.holder.report(self.holder.model_state, "rollback refused: updates are disabled on this agent")
        elif cmd.action == "reload_config":
            self._reload_config()
        elif cmd.action == "resend_outbox":
            self.uplink.resend_all()
        self._answer(cmd.command_id)  # ping: the answer is a fresh status

    def handle_config(self, bundle: ConfigBundle) -> None:
        """A configuration bundle for our group (uplink thread): applied or refused, the Status says which."""
        self.bundles.receive(bundle)
        self.uplink.publish_status()

    def _apply_config(self, effective: AgentConfig) -> None:
        """Make a config with a bundle laid over it the running one (only LIVE sections differ)."""
        if effective.sampling != self.cfg.sampling:
            s = effective.sampling
            self.sampler = Sampler(s, random.Random(s.seed), self.counters)
        self.cfg = effective
        self.uplink.cfg = effective  # telemetry period and receipt timeout are read on every step

    def _reload_config(self) -> None:
        """Apply a changed [sampling] section live; anything else needs a restart."""
        if self.config_path is None:
            self.holder.report(self.holder.model_state, "reload_config: agent was not started from a file")
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload_config refused: %s", e)
            self.holder.report(self.holder.model_state, f"reload_config refused: {e}"[:1000])
            return
        others = [k for k in type(new).model_fields if k != "sampling" and getattr(new, k) != getattr(self.file_cfg, k)]
        self.file_cfg = new.model_copy(update={k: getattr(self.file_cfg, k) for k in others})  # rest: at restart
        self._apply_config(self.bundles.rebase(self.file_cfg))
        note = f"; restart to apply {', '.join(others)}" if others else ""
        self.holder.report(self.holder.model_state, f"reload_config: sampling applied{note}")
        log.info("reload_config: sampling applied%s", note)
