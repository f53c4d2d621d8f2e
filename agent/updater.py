"""Model updates: verify, download, check, load, swap; rollback; start-up choice.

An announcement is trusted only after each step passes, in this order:

1. the Ed25519 signature over the manifest bytes matches a trusted key, and
   the manifest has not expired;
2. it names our model, a version higher than the one running and not blocked
   by an earlier rollback, and its cohort includes this agent;
3. its card parses and agrees with the manifest (name, version, task, labels);
4. the download (http only when allowed, agent.download) stops at the signed
   size and the size cap and at ``download_deadline_s`` for the whole
   transfer, and its size and sha256 match the manifest, before any parsing;
5. the file holds no external-data references (agent.onnxcheck);
6. it loads from its own directory, warms up, and its shapes fit the card.

Only then is state.json replaced (the commit point, see agent.modelstore) and
the running model swapped under the holder's lock. Any failure leaves the
running model untouched and is reported in the log and the Status.

With a health window (agent.health), the new model then runs on probation:
the Status says ``updating`` until the window passes (``ok``) or fails, in
which case the updater goes back to the previous model, blocks the failed
version so its retained announcement is never installed again, and reports
``reverted`` with the reason. ``state.json``'s ``last.probation`` names the
version still on probation, so a restart before the verdict opens a new window.

Probation always ends in a verdict: an announcement that arrives while a
version is on probation is checked (signature, version, cohort) and then
held, the newest one only, until the window passes or fails; only then is it
installed. A failed window goes back to ``state.json``'s ``good`` (the last
version that passed its window), which pruning never deletes.

Threads: the ``updater`` thread takes announcements (and judges the health
window five times a second); it may wait on a download (bounded by
``download_deadline_s``) and on loading a model. Commands have their own
``updater-commands`` thread, so a rollback never queues behind a download:
``request_rollback`` cancels the download in flight (its socket is shut
down) and stops an install that has not reached its commit point; the
rollback then waits only for the updater's lock, which an install holds for
the moment the cancellation takes to land, or for a model load in progress.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from protocol import Announcement, ProtocolError
from protocol.manifest import Manifest, verify
from protocol.modelcard import ModelCard, card_from_dict

from .config import AgentConfig, trusted_keys
from .download import Download, DownloadError
from .health import HealthWindow
from .model import ModelError, ModelRunner
from .modelstore import ModelRef, ModelState, ModelStore
from .onnxcheck import OnnxFormatError, external_data_tensors

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.2  # how often the updater thread looks at the health window


class UpdateRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ModelHolder:
    """The running model; the inference loop reads it, updates swap it, both under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runner: ModelRunner | None = None
        self.ref: ModelRef | None = None
        self.model_state = "none"  # Status.MODEL_STATES
        self.detail = ""

    def get(self) -> ModelRunner | None:
        with self.lock:
            return self.runner

    def swap(self, runner: ModelRunner | None, ref: ModelRef | None, state: str, detail: str) -> None:
        with self.lock:
            self.runner, self.ref = runner, ref
            self.model_state, self.detail = state, detail

    def report(self, state: str, detail: str) -> None:
        with self.lock:
            self.model_state, self.detail = state, detail


class Updater:
    def __init__(self, cfg: AgentConfig, store: ModelStore, holder: ModelHolder, on_change: Callable[[], None],
                 score_floor: float = 1.0, clock: Callable[[], float] = time.time,
                 health: HealthWindow | None = None) -> None:
        self.cfg = cfg
        self.health = health  # None: no probation (nobody feeds it frames), a loaded model is "ok" at once
        self.store = store
        self.holder = holder
        self.on_change = on_change
        self.score_floor = score_floor
        self.clock = clock
        self.keys = trusted_keys(cfg.updates)
        self._jobs: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self._commands: queue.Queue = queue.Queue(maxsize=8)
        self._command_thread = threading.Thread(target=self._run_commands, name="updater-commands", daemon=True)
        self._cancel_lock = threading.Lock()
        self._transfer: Download | None = None  # the transfer in flight, for request_rollback to cancel
        self._epoch = 0  # bumped by every rollback request: an install begun before it never commits
        self._lock = threading.Lock()  # one update or rollback at a time
        self._deferred: tuple[Announcement, int] | None = None  # (announcement, version) held during probation

    # -- start-up --------------------------------------------------------------

    def _load(self, ref: ModelRef) -> ModelRunner:
        m = self.cfg.model
        card = card_from_dict(ref.card, f"{ref.path} card") if ref.card else None
        return ModelRunner.load(Path(ref.path), m.providers, card=card, card_file=None if card else m.card,
                                intra=m.intra_op_threads, inter=m.inter_op_threads, score_floor=self.score_floor)

    def load_initial(self) -> None:
        """Run what state.json says, else its previous model, else the configured one."""
        self.store.prepare()
        state = self.store.load()
        configured = ModelRef(-1, str(self.cfg.model.path))
        errors = []
        for ref in (state.current, state.previous, configured):
            if ref is None:
                continue
            try:
                runner = self._load(ref)
            except (ModelError, ProtocolError) as e:
                errors.append(str(e))
                log.error("cannot run model %s: %s", ref.path, e)
                continue
            ref = replace(ref, version=runner.version) if ref.version < 0 else ref
            detail = "" if not errors else f"fell back to {Path(ref.path).name} v{ref.version}: {errors[0]}"
            self.holder.swap(runner, ref, "ok" if not errors else "reverted", detail)
            log.info("running model %s v%d from %s", runner.name, ref.version, ref.path)
            if not errors and ref is state.current and state.last.get("probation") == ref.version:
                self._probation(ref, state.previous, f"v{ref.version} restarted before its health window passed")
            return
        self.holder.report("failed", "; ".join(errors)[:1000])
        log.error("no usable model: inference waits for a model update")

    # -- thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._command_thread.start()

    def stop(self) -> None:
        self._cancel_install()
        for q in (self._jobs, self._commands):
            try:
                q.put_nowait(None)
            except queue.Full:
                pass
        self._thread.join(10)
        self._command_thread.join(10)

    def submit(self, announcement: Announcement) -> None:
        try:
            self._jobs.put_nowait(("announce", announcement))
        except queue.Full:
            log.warning("update queue full: announcement dropped (a retained one comes again on reconnect)")

    def request_rollback(self) -> None:
        """Called from the MQTT thread: abort an install in flight, then roll back on the command thread."""
        self._cancel_install()
        try:
            self._commands.put_nowait(("rollback", None))
        except queue.Full:
            log.warning("command queue full: rollback dropped")

    def _cancel_install(self) -> None:
        with self._cancel_lock:
            self._epoch += 1
            download = self._transfer
        if download is not None:
            log.warning("cancelling the model download in flight (%s)", download.url)
            download.cancel()

    def _cancelled(self, epoch: int) -> bool:
        with self._cancel_lock:
            return self._epoch != epoch

    def _run_commands(self) -> None:
        while (job := self._commands.get()) is not None:
            try:
                self.rollback()
            except Exception:  # keep the thread alive
                log.exception("model %s failed unexpectedly", job[0])
                self.holder.report("failed", f"{job[0]} failed unexpectedly; see the agent log")
                self.on_change()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=HEALTH_POLL_S)
            except queue.Empty:
                job = ("health", None)
            if job is None:
                return
            kind, arg = job
            try:
                if kind == "announce":
                    self.apply(arg)
                self.check_health()  # also installs an announcement held during a probation that just ended
            except Exception:  # keep the updater alive whatever a bad announcement triggers
                log.exception("model %s failed unexpectedly", kind)
                self.holder.report("failed", f"{kind} failed unexpectedly; see the agent log")
                self.on_change()

    # -- update --------------------------------------------------------------------

    def apply(self, ann: Announcement) -> bool:
        """Process one announcement; True when the new model now runs."""
        with self._lock:
            try:
                manifest = self._check_manifest(ann)
            except UpdateRefused as e:
                if e.reason in ("not_newer", "not_ours", "not_in_cohort", "blocked"):
                    # quiet: a retained announcement comes back on every reconnect
                    log.info("announcement ignored: %s", e.detail)
                    return False
                return self._refused(e, None)
            if self.health is not None and self.health.probation is not None:
                self._defer(ann, manifest.version, self.health.probation)
                return False
            try:
                return self._install(ann, manifest)
            except UpdateRefused as e:
                return self._refused(e, manifest.version)

    def _defer(self, ann: Announcement, version: int, probation: int) -> None:
        """Hold an announcement until the version on probation has its verdict (the newest one wins)."""
        if self._deferred is None or version >= self._deferred[1]:
            self._deferred = (ann, version)
        log.info("v%d announced while v%d is on probation: it is installed after v%d's health verdict",
                 version, probation, probation)

    def apply_deferred(self) -> bool:
        """Install the announcement held during a probation that has now ended; True when it runs."""
        with self._lock:
            if self._deferred is None or (self.health is not None and self.health.probation is not None):
                return False
            ann, self._deferred = self._deferred[0], None
        return self.apply(ann)

    def _refused(self, e: UpdateRefused, version: int | None) -> bool:
        running = self.holder.ref.version if self.holder.ref else 0
        detail = f"refused model update{f' v{version}' if version else ''} ({e.reason}): {e.detail}; " \
                 f"still running v{running}"
        log.error("%s", detail)
        self.holder.report("failed", detail[:1000])
        self._remember(version or 0, "refused", detail)
        self.on_change()
        return False

    def _check_manifest(self, ann: Announcement) -> Manifest:
        try:
            manifest = verify(ann.manifest, ann.signature, self.keys, now=self.clock())
        except ProtocolError as e:
            raise UpdateRefused(e.reason, e.detail or str(e)) from e
        if manifest.name != self.cfg.model.name:
            raise UpdateRefused("not_ours", f"model {manifest.name}, we run {self.cfg.model.name}")
        running = self.holder.ref.version if self.holder.ref else 0
        state = self.store.load()
        if manifest.version in state.blocked:
            raise UpdateRefused("blocked", f"v{manifest.version} was rolled back from on this agent")
        if manifest.version == running:
            raise UpdateRefused("not_newer", f"v{manifest.version} already runs")
        if manifest.version < running:
            raise UpdateRefused("downgrade", f"v{manifest.version} is older than the running v{running}")
        if not manifest.cohort.includes(manifest.name, self.cfg.agent_id, tuple(self.cfg.groups)):
            raise UpdateRefused("not_in_cohort", f"v{manifest.version} is for another cohort")
        return manifest

    def _card(self, manifest: Manifest) -> ModelCard:
        try:
            card = card_from_dict(manifest.card, "manifest card")
        except ProtocolError as e:
            raise UpdateRefused("bad_card", e.detail) from e
        mismatch = [k for k, a, b in (("name", card.name, manifest.name), ("version", card.version, manifest.version),
                                      ("task", card.task, manifest.task), ("labels", card.labels, manifest.labels))
                    if a != b]
        if mismatch:
            raise UpdateRefused("bad_card", f"card and manifest disagree on {', '.join(mismatch)}")
        return card

    def _install(self, ann: Announcement, manifest: Manifest) -> bool:
        card = self._card(manifest)
        with self._cancel_lock:
            epoch = self._epoch
        self.holder.report("updating", f"installing v{manifest.version}")
        self.on_change()
        part = self.store.incoming / f"v{manifest.version}.part"
        try:
            self._download(ann.url, manifest, part, epoch)
            self._check_file(part)
            if self._cancelled(epoch):
                raise UpdateRefused("cancelled", "a rollback command came during the install")
            path = self.store.install(manifest.version, part, manifest.card)
        finally:
            part.unlink(missing_ok=True)
        try:
            runner = ModelRunner.load(path, self.cfg.model.providers, card=card, intra=self.cfg.model.intra_op_threads,
                                      inter=self.cfg.model.inter_op_threads, score_floor=self.score_floor)
        except ModelError as e:
            self.store.prune(self._keep(self.store.load()))
            raise UpdateRefused("bad_model", str(e)) from e
        if self._cancelled(epoch):
            self.store.prune(self._keep(self.store.load()))
            raise UpdateRefused("cancelled", "a rollback command came during the install")
        new_ref = ModelRef(manifest.version, str(path), manifest.card)
        old = self.holder.ref
        state = self.store.load()
        last = self._last(manifest.version, "installed", "")
        if self.health is not None:
            last["probation"] = manifest.version  # a restart before the verdict opens a new window
            # Nothing is on probation here (announcements wait for the verdict): what runs is the revert target.
            good = old if old is not None else state.good
        else:
            good = new_ref  # no window: a model that loads and warms up is trusted at once
        state = ModelState(new_ref, old, state.blocked, last, good)
        self.store.save(state)  # the commit point
        detail = f"updated to v{manifest.version}" + (f" from v{old.version}" if old else "")
        self._end_probation()
        self.holder.swap(runner, new_ref, "ok", detail)
        self._probation(new_ref, old, detail)
        self.store.prune(self._keep(state))
        log.info("model %s updated to v%d", manifest.name, manifest.version)
        self.on_change()
        return True

    def _download(self, url: str, manifest: Manifest, dest: Path, epoch: int) -> None:
        u = self.cfg.updates
        if manifest.size > u.max_download_bytes:
            raise UpdateRefused("too_large", f"{manifest.size} bytes > updates.max_download_bytes")
        download = Download(url, deadline_s=u.download_deadline_s, read_timeout_s=u.download_timeout_s,
                            allow_http=u.allow_http)
        with self._cancel_lock:
            # A rollback after the install took its epoch but before this found no transfer to cancel.
            if self._epoch != epoch:
                raise UpdateRefused("cancelled", "a rollback command came during the install")
            self._transfer = download
        try:
            n, digest = download.save(dest, manifest.size)
        except DownloadError as e:
            raise UpdateRefused(e.reason, e.detail) from e
        finally:
            with self._cancel_lock:
                self._transfer = None
        if n != manifest.size:
            raise UpdateRefused("size_mismatch", f"downloaded {n} bytes, manifest says {manifest.size}")
        if digest != manifest.sha256:
            raise UpdateRefused("sha256_mismatch", f"downloaded file's sha256 {digest[:16]}... does not match "
                                                   f"the signed {manifest.sha256[:16]}...")

    @staticmethod
    def _check_file(path: Path) -> None:
        try:
            refs = external_data_tensors(path.read_bytes())
        except OnnxFormatError as e:
            raise UpdateRefused("bad_model", f"not an ONNX model: {e}") from e
        if refs:
            raise UpdateRefused("external_data", f"{len(refs)} tensor(s) reference external data files "
                                                 f"(e.g. {refs[0]}); models must be one self-contained file")

    # -- rollback ------------------------------------------------------------------

    def rollback(self) -> bool:
        """Run the previous model again and block the current version from coming back."""
        with self._lock:
            state = self.store.load()
            current = self.holder.ref
            if state.previous is None or current is None or state.previous.version in state.blocked:
                why = "no previous model on disk" if state.previous is None or current is None else \
                    f"the previous v{state.previous.version} is blocked (it failed or was rolled back from)"
                self.holder.report("failed", f"rollback refused: {why}")
                log.error("rollback refused: %s", why)
                self.on_change()
                return False
            try:
                runner = self._load(state.previous)
            except (ModelError, ProtocolError) as e:
                self.holder.report("failed", f"rollback failed: {e}"[:1000])
                log.error("rollback failed: %s", e)
                self.on_change()
                return False
            blocked = tuple(sorted(set(state.blocked) | {current.version}))
            good = state.previous if state.good is None or state.good.version == current.version else state.good
            new_state = ModelState(state.previous, current, blocked,
                                   self._last(state.previous.version, "rolled_back", f"from v{current.version}"), good)
            self.store.save(new_state)
            self._end_probation()
            self.holder.swap(runner, state.previous, "reverted",
                             f"rolled back from v{current.version} to v{state.previous.version}")
            log.warning("rolled back from v%d to v%d", current.version, state.previous.version)
            self.on_change()
            return True

    # -- health window -------------------------------------------------------------

    def _probation(self, ref: ModelRef, previous: ModelRef | None, detail: str) -> None:
        if self.health is None:
            return
        h = self.cfg.updates.health
        self.health.begin(ref.version, previous.version if previous else None)
        self.holder.report("updating", f"{detail}; on probation: health window of {h.window_s:g} s and "
                                       f"{h.min_frames} frames")

    def _end_probation(self) -> None:
        if self.health is not None:
            self.health.end()

    def check_health(self) -> None:
        """Act on the health window's verdict (keep the new model, or go back to the good one), then install
        an announcement held during the probation."""
        self._judge()
        self.apply_deferred()

    def _judge(self) -> None:
        if self.health is None:
            return
        with self._lock:
            verdict = self.health.verdict()
            if verdict is None:
                return
            version, state, reason = verdict
            ref = self.holder.ref
            if ref is None or ref.version != version:  # swapped away meanwhile
                self.health.end()
                return
            if state == "pending":
                return
            self.health.end()
            if state == "failed":
                self._revert(ref, reason)
                return
            detail = f"v{version} passed its health window: {reason}"
            self.holder.report("ok", detail)
            self.store.save(replace(self.store.load(), good=ref))
            self._remember(version, "healthy", detail)
            log.info("model %s", detail)
            self.on_change()

    def _revert(self, failed: ModelRef, reason: str) -> None:
        """Run the last good model again after a failed window; the failed version is blocked for good."""
        state = self.store.load()
        blocked = tuple(sorted(set(state.blocked) | {failed.version}))
        why = f"v{failed.version} failed its health window: {reason}"
        runner = None
        target = state.good if state.good is not None and state.good.version not in blocked else state.previous
        if target is not None and target.version in blocked:
            why += f"; the previous v{target.version} is blocked"
            target = None
        if target is not None:
            try:
                runner = self._load(target)
            except (ModelError, ProtocolError) as e:
                why += f"; the previous v{target.version} cannot run either: {e}"
        if runner is None:
            # Nothing to go back to: a model whose frames can never be sent is no better than none.
            self.store.save(ModelState(None, None, blocked, self._last(failed.version, "failed_health", why)))
            detail = f"{why}; no model runs until an update"
            self.holder.swap(None, None, "failed", detail[:1000])
            log.error("%s", detail)
            self.on_change()
            return
        self.store.save(ModelState(target, failed, blocked,
                                   self._last(failed.version, "failed_health", why[:500]), target))
        detail = f"{why}; reverted to v{target.version}, v{failed.version} is blocked"
        self.holder.swap(runner, target, "reverted", detail[:1000])
        log.error("%s", detail)
        self.on_change()

    # -- helpers ---------------------------------------------------------------------

    def _last(self, version: int, result: str, detail: str) -> dict:
        return {"version": version, "result": result, "detail": detail, "at": self.clock()}

    def _remember(self, version: int, result: str, detail: str) -> None:
        state = self.store.load()
        last = self._last(version, result, detail[:500])
        if self.health is not None and self.health.probation is not None:
            last["probation"] = self.health.probation  # a refused announcement does not end a probation
        self.store.save(replace(state, last=last))

    def _keep(self, state: ModelState) -> set[int]:
        return {r.version for r in state.refs()}
