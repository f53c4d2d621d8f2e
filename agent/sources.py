"""Frame sources: RTSP/HTTP streams, USB devices, video files, image folders, synthetic.

Each camera runs one capture thread that puts frames into a FrameHub slot.
Live sources (streams, USB) overwrite their slot, so a slow consumer always
gets the newest frame instead of a buffer of stale ones (and the overwrite is
counted as a ``stale_frame`` drop). Files, folders and the synthetic camera
wait for their slot to be free, so every frame is inferred.

A source that fails to open or stops delivering is reopened with capped,
jittered backoff; its state and last error are visible to the status report.

``max_fps`` on a live source does not sleep between reads: the stream keeps
coming, and a sleeping reader would find a backlog of old frames in the
decoder's and the socket's buffers. The capture thread grabs every frame
(no colour conversion) and delivers only the first one due.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backoff import Backoff
from .config import CameraConfig
from .metrics import Counters
from .synthetic import SyntheticCamera

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
LIVE_KINDS = {"rtsp", "http", "usb"}


@dataclass(frozen=True)
class Frame:
    camera_id: str
    seq: int  # per camera, from 0, counts delivered frames
    captured_at: float  # wall clock, seconds since 1970
    image: np.ndarray  # BGR uint8, HxWx3


class SourceError(RuntimeError):
    """The source itself failed (cannot open, stopped delivering): reconnect."""


class BadFrame(SourceError):
    """One frame is unusable: drop it, count it, read the next."""


def detect_kind(source: str) -> str:
    s = source.strip()
    if s == "synthetic":
        return "synthetic"
    if s.isdigit() or s.startswith("usb:"):
        return "usb"
    if s.startswith("rtsp://"):
        return "rtsp"
    if s.startswith(("http://", "https://")):
        return "http"
    return "folder" if Path(s).is_dir() else "file"


def check_image(image: object) -> np.ndarray:
    """A usable BGR frame, or SourceError saying what is wrong with it."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise BadFrame("empty frame")
    if image.dtype != np.uint8:
        raise BadFrame(f"frame dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise BadFrame(f"frame shape {image.shape}, expected HxWx3")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def read_image_file(path: Path) -> np.ndarray:
    """Decode one image file; truncated JPEGs are refused (OpenCV would pad them with grey)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadFrame(f"{path.name}: cannot read ({e.strerror})") from e
    if data[:3] == b"\xff\xd8\xff" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BadFrame(f"{path.name}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadFrame(f"{path.name}: not a decodable image")
    return check_image(image)


class FrameHub:
    """One slot per camera; the inference loop takes from whichever is full, round-robin."""

    def __init__(self, camera_ids: list[str], counters: Counters) -> None:
        self._cond = threading.Condition()
        self._slots: dict[str, Frame | None] = {c: None for c in camera_ids}
        self._order = list(camera_ids)
        self._next = 0
        self._taken = 0
        self.counters = counters

    def put(self, frame: Frame, live: bool, stop: threading.Event) -> bool:
        with self._cond:
            if not live:
                while self._slots[frame.camera_id] is not None and not stop.is_set():
                    self._cond.wait(0.1)
                if stop.is_set():
                    return False
            elif self._slots[frame.camera_id] is not None:
                self.counters.add("stale_frame")
            self._slots[frame.camera_id] = frame
            self._cond.notify_all()
            return True

    def idle(self) -> bool:
        """No frame waiting and none taken but not yet ``done()``."""
        with self._cond:
            return self._taken == 0 and all(f is None for f in self._slots.values())

    def done(self) -> None:
        """The consumer finished a frame it took."""
        with self._cond:
            self._taken -= 1

    def take(self, timeout: float) -> Frame | None:
        """The next frame, round-robin over cameras; call ``done()`` when finished with it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for k in range(len(self._order)):
                    cam = self._order[(self._next + k) % len(self._order)]
                    frame = self._slots[cam]
                    if frame is not None:
                        self._slots[cam] = None
                        self._taken += 1
                        self._next = (self._next + k + 1) % len(self._order)
                        self._cond.notify_all()
                        return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class _Reader:
    """Opens a source and reads raw frames; ``read()`` returns None at end of file."""

    def __init__(self, cfg: CameraConfig, kind: str) -> None:
        self.cfg = cfg
        self.kind = kind
        self.cap: cv2.VideoCapture | None = None
        self.files: list[Path] = []
        self.index = 0
        self.synthetic: SyntheticCamera | None = None

    def open(self) -> None:
        cfg, kind = self.cfg, self.kind
        self.index = 0
        if kind == "synthetic":
            s = cfg.synthetic
            self.synthetic = SyntheticCamera(s.seed, s.width, s.height, s.drift_per_frame, max_shapes=s.max_shapes)
            return
        if kind == "folder":
            folder = Path(cfg.source)
            if not folder.is_dir():
                raise SourceError(f"folder {folder} does not exist")
            self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SourceError(f"folder {folder} has no images")
            return
        if kind == "file" and not Path(cfg.source).is_file():
            raise SourceError(f"video file {cfg.source} does not exist")
        target: str | int = int(cfg.source.removeprefix("usb:")) if kind == "usb" else cfg.source
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {kind} source {cfg.source}")
        if kind in LIVE_KINDS:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we keep only the latest frame anyway
        self.cap = cap

    def read(self) -> np.ndarray | None:
        if self.synthetic is not None:
            n = self.cfg.synthetic.frames
            if n and self.index >= n:
                return None
            self.index += 1
            return self.synthetic.frame(self.index - 1).image
        if self.files:
            if self.index >= len(self.files):
                return None
            self.index += 1
            return read_image_file(self.files[self.index - 1])
        assert self.cap is not None
        ok, image = self.cap.read()
        if not ok:
            if self.kind in LIVE_KINDS:
                raise SourceError(f"{self.kind} source {self.cfg.source} stopped delivering frames")
            if not Path(self.cfg.source).is_file():
                raise SourceError(f"video file {self.cfg.source} disappeared")
            return None
        return check_image(image)

    def skip(self) -> None:
        """Take the next frame of a live stream off its buffers without converting it."""
        assert self.cap is not None
        if not self.cap.grab():
            raise SourceError(f"{self.kind} source {self.cfg.source} stopped delivering frames")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
        self.synthetic = None
        self.files = []


class CameraSource:
    """The capture thread of one camera."""

    def __init__(self, cfg: CameraConfig, hub: FrameHub, counters: Counters, rng: random.Random) -> None:
        self.cfg = cfg
        self.kind = cfg.kind if cfg.kind != "auto" else detect_kind(cfg.source)
        self.live = self.kind in LIVE_KINDS
        self.hub = hub
        self.counters = counters
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self.stop_event = threading.Event()
        self.state = "starting"  # starting | running | reconnecting | ended
        self.last_error = ""
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name=f"capture-{cfg.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def _fail(self, reader: _Reader, message: str) -> None:
        reader.close()
        if self.last_error != message or self.state != "reconnecting":
            log.error("camera %s: %s; reconnecting with backoff", self.cfg.id, message)
        self.state, self.last_error = "reconnecting", message
        self.counters.add("camera_error")
        self.stop_event.wait(self.backoff.next())

    def _run(self) -> None:
        reader = _Reader(self.cfg, self.kind)
        while not self.stop_event.is_set():
            try:
                reader.open()
            except (SourceError, cv2.error) as e:
                self._fail(reader, str(e))
                continue
            if self.state == "reconnecting":
                log.info("camera %s: source is back", self.cfg.id)
            self.state = "running"
            if self._pump(reader) == "eof":
                reader.close()
                if self.cfg.on_eof == "stop":
                    log.info("camera %s: end of %s, stopping", self.cfg.id, self.kind)
                    self.state = "ended"
                    return
        reader.close()

    def _pump(self, reader: _Reader) -> str:
        """Read until end of file, a source failure or stop; return why it ended."""
        period = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        if self.kind == "synthetic" and self.cfg.synthetic.fps:
            period = max(period, 1.0 / self.cfg.synthetic.fps)
        next_at = time.monotonic()
        paced_live = bool(period) and self.live
        while not self.stop_event.is_set():
            try:
                if paced_live and time.monotonic() < next_at:
                    reader.skip()  # not due yet: drain the stream instead of sleeping on a growing backlog
                    continue
                image = reader.read()
            except BadFrame as e:
                log.warning("camera %s: dropped frame: %s", self.cfg.id, e)
                self.counters.add("corrupt_frame")
                continue
            except SourceError as e:
                self._fail(reader, str(e))
                return "error"
            except cv2.error as e:
                log.warning("camera %s: dropped frame: %s", self.cfg.id, e)
                self.counters.add("corrupt_frame")
                continue
            if image is None:
                return "eof"
            self.backoff.reset()
            frame = Frame(self.cfg.id, self.delivered, time.time(), image)
            if not self.hub.put(frame, self.live, self.stop_event):
                return "stop"
            self.delivered += 1
            if period:
                next_at = max(next_at + period, time.monotonic() - period)
                if not paced_live:
                    self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        return "stop"
