"""The demo's agents: real `edgeloop agent` processes, one per config."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class AgentProcesses:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, config: Path, log_path: Path) -> None:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "agent", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append((name, proc, log_path))
        log.info("agent %s started (pid %d, log %s)", name, proc.pid, log_path)

    def check(self) -> list[str]:
        """Names of agents that exited, with the tail of their log (an agent that dies is a demo bug)."""
        dead = []
        for name, proc, log_path in self.procs:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                dead.append(f"{name} exited with {proc.returncode}:\n{tail}")
        return dead

    def stop(self, timeout: float = 15.0) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc, _ in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("agent %s did not stop in %.0fs; killing it", name, timeout)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()
