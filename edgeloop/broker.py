"""Start and stop a local MQTT broker: mosquitto when installed, else amqtt.

Used by the test fixtures (real broker on a free port, killable for fault
tests) and by ``edgeloop demo`` (no broker to install first).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


class LocalBroker:
    """A broker process on 127.0.0.1:port with its config and log in ``workdir``.

    ``kind`` is "mosquitto" (MQTT 3.1.1 and 5, shared subscriptions) or
    "amqtt" (the pure-Python fallback, MQTT 3.1.1 only).
    """

    def __init__(self, workdir: str | Path, port: int | None = None, prefer: str = "mosquitto",
                 extra_conf: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.mosquitto = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
        self.kind = "mosquitto" if (prefer == "mosquitto" and self.mosquitto) else "amqtt"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.kind}.log"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "max_queued_messages 100000\n"
                # The collector acks after each commit: a wider window means bigger batches.
                "max_inflight_messages 1000\n"
                f"{self.extra_conf}\n"
            )
            return [self.mosquitto, "-c", str(conf)]
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    def start(self, timeout: float = 10.0) -> "LocalBroker":
        if self.proc and self.proc.poll() is None:
            return self
        logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._command(), stdout=logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logfile.close()
        try:
            wait_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start; see {self.log_path}:\n{self._tail()}") from None
        log.info("%s broker listening on %s:%d", self.kind, self.host, self.port)
        return self

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would: no clean disconnects."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    @property
    def supports_mqtt5(self) -> bool:
        return self.kind == "mosquitto"

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
