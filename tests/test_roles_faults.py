"""Role processes under kill -9, on SQLite and PostgreSQL: real `edgeloop collector` / `edgeloop worker`
processes, a real mosquitto, a real agent outbox and uplink.

- two collectors share the sample topics (MQTT 5 shared subscription); one is killed -9 three times
  (and restarted with its client id) while 1,000 frames flow: exactly 1,000 are stored, each once, and
  every frame leaves the agent's outbox on a receipt;
- two workers wait for round jobs; the one that claimed the round is killed -9 (with its training
  child): after the lease the other takes it over and the round completes once (one registered model);
  a cancel written by another process stops the next round. This one runs once, on PostgreSQL (the
  scaled layout's store; SQLite where no server is usable): the claim, lease, takeover and cancel
  contract it relies on is tested on both backends in tests/test_roles_jobs.py, and the kill is not
  about the store;
- PostgreSQL (a private server made with initdb/pg_ctl, never the shared one) crashes and restarts
  under ingest: the collectors reconnect and every frame is stored once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import factories
from agent_helpers import outbox_uplink, put_sample, write_config
from conftest import preferred_backend
from mqtt_util import wait_until
from trainer.store import Store

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = pytest.mark.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)
ONE_BACKEND = pytest.mark.parametrize("store_backend", [preferred_backend()], indirect=True)


class Role:
    """One ``edgeloop <role>`` process in its own process group (so -9 takes its children too)."""

    def __init__(self, role: str, config: Path, log: Path, *extra: str) -> None:
        self.args = [sys.executable, "-m", "edgeloop.cli", role, "--config", str(config), *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Role":
        self.starts += 1
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def _collector_config(tmp: Path, broker, client_id: str) -> Path:
    return write_config(tmp / f"{client_id}.toml", {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id, "shared_group": "edgeloop",
                 "protocol": "5", "batch_ms": 20},
        "http": {"enabled": False}, "store": {"data_dir": str(tmp / "data")}})


@BACKENDS
def test_two_collectors_one_killed_three_times_store_exactly_1000(mqtt5_broker, tmp_path, store_backend):
    frames = 1000
    logs = tmp_path / "logs"
    logs.mkdir()
    a = Role("collector", _collector_config(tmp_path, mqtt5_broker, "col-a"), logs / "a.log").start()
    b = Role("collector", _collector_config(tmp_path, mqtt5_broker, "col-b"), logs / "b.log").start()
    outbox, uplink = outbox_uplink(mqtt5_broker, tmp_path / "agent", receipt_timeout_s=2.0, max_inflight=100)
    try:
        for role in (a, b):
            assert wait_until(lambda: "collector connected" in role.text(), 60), role.text()[-2000:]
        uplink.start()

        def feed() -> None:  # about 100 frames a second, so the kills land in the middle of the flow
            for i in range(frames):
                put_sample(outbox, factories.sample(frame_id=f"cam-agent-1.gate.{i:05d}",
                                                    jpeg=factories.jpeg(48, 32, seed=i), width=48, height=32))
                time.sleep(0.01)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for _ in range(3):
            time.sleep(2.0)
            a.kill9()
            a.start()
            assert wait_until(lambda: a.text().count("collector connected") >= a.starts, 60), a.text()[-2000:]
        feeder.join(60)
        assert wait_until(lambda: outbox.stats().pending == 0, 60), outbox.stats()
        assert a.text().count("collector connected") == 4
    finally:
        uplink.stop()
        outbox.close()
        a.stop()
        b.stop()
    stats = outbox.stats()
    assert stats.delivered == frames and stats.rejected == 0 and stats.evicted == 0
    with Store(tmp_path / "data") as store:
        ids = store.frame_ids()
        assert len(ids) == frames and Counter(ids).most_common(1)[0][1] == 1
        assert sorted(ids) == [f"cam-agent-1.gate.{i:05d}" for i in range(frames)]
        assert store.count() == frames and store.counters()["ingest_stored"] == frames
    assert "collector connected" in b.text()


TRAIN = {"model": "small_cnn", "input_size": 32, "epochs": 2, "min_steps": 0, "batch_size": 16, "patience": 5,
         "augment": {"enabled": False}, "export": {"verify_images": 2}, "device": "cpu"}


def _labelled_store(data: Path, gen: Path) -> None:
    from trainer.store import new_example
    from trainer.synthetic.shapes import CLASSES, ShapesGenerator

    examples = ShapesGenerator(size=32).generate(48, np.random.default_rng(1), gen)
    with Store(data) as s:
        s.add_examples([new_example(e.image_path.read_bytes(), label=e.label, source="synthetic", origin=e.id)
                        for e in examples], task="classification", labels=CLASSES)


def _worker_config(tmp: Path) -> Path:
    path = write_config(tmp / "worker.toml", {
        "http": {"enabled": False}, "store": {"data_dir": str(tmp / "data")},
        "roles": {"worker_lease_s": 3.0, "worker_poll_s": 0.3}})
    lines = ["\n[rounds]", 'model_name = "shapes"', "auto_start = false", f'work_dir = "{tmp / "rounds"}"',
             "[rounds.train]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in TRAIN.items() if not isinstance(v, dict)]
    lines += ["[rounds.train.augment]", "enabled = false", "[rounds.train.export]", "verify_images = 2"]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


@ONE_BACKEND
def test_two_workers_one_killed_mid_round_the_round_completes_once(tmp_path, store_backend):
    from trainer.publish.registry import Registry
    from trainer.rounds.jobs import RoundJobs

    _labelled_store(tmp_path / "data", tmp_path / "gen")
    config = _worker_config(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = {w: Role("worker", config, logs / f"{w}.log", "--worker-id", w).start() for w in ("wa", "wb")}
    store = Store(tmp_path / "data")
    try:
        jobs = RoundJobs(store, "test")
        rid = jobs.enqueue("fault test")
        assert wait_until(lambda: (j := jobs.get(rid)).state == "running" and j.owner in workers, 90), \
            {w: r.text()[-1500:] for w, r in workers.items()}
        first = jobs.get(rid).owner
        time.sleep(1.0)  # its training child is up: the kill lands mid-round
        workers[first].kill9()
        other = next(w for w in workers if w != first)
        assert wait_until(lambda: jobs.get(rid).state not in ("queued", "running"), 150), \
            (jobs.get(rid), workers[other].text()[-3000:])
        job = jobs.get(rid)
        assert job.state == "done", (job, workers[other].text()[-3000:])
        assert job.owner == other and job.attempts == 2 and len(job.epochs) >= 1
        with Registry(tmp_path / "data") as registry:
            made = [m for m in registry.models("shapes") if m.config.get("round") == rid]
        assert len(made) == 1 and job.detail["version"] == made[0].version
        # Cancel across processes: this test process flags the round in the store, the worker stops it.
        again = jobs.enqueue("cancel me")
        assert wait_until(lambda: jobs.get(again).state == "running", 60)
        assert jobs.request_cancel().cancel_requested
        assert wait_until(lambda: jobs.get(again).state == "cancelled", 90), workers[other].text()[-2000:]
        with Registry(tmp_path / "data") as registry:
            assert [m.version for m in registry.models("shapes")] == [made[0].version]
    finally:
        for w in workers.values():
            w.stop()
        store.close()


# --- PostgreSQL restarted under ingest (a private server: the shared one is never touched) ------------

def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """initdb + pg_ctl in a temp dir, run as the ``postgres`` user (initdb refuses root), trust auth."""

    def __init__(self, root: Path, port: int) -> None:
        self.bin, self.root, self.port = _pg_bin(), root, port
        self.data = root / "data"

    def _as_postgres(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> "PrivatePostgres":
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import shutil
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "pg.log"), "-o",
                          f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/edgeloop"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_restarted_under_ingest_collectors_reconnect_nothing_lost(mqtt5_broker, tmp_path, monkeypatch):
    if _pg_bin() is None:
        pytest.skip("needs the PostgreSQL server binaries (initdb, pg_ctl)")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root needs a postgres user for initdb")
    pg = PrivatePostgres(Path(f"/tmp/edgeloop-pg-{os.getpid()}-{int(time.time())}"), _free_port()).init()
    pg.start()
    frames = 600
    try:
        import psycopg
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE edgeloop")
        monkeypatch.setenv("EDGELOOP_STORE_URL", pg.url)
        logs = tmp_path / "logs"
        logs.mkdir()
        cols = [Role("collector", _collector_config(tmp_path, mqtt5_broker, f"col-{c}"), logs / f"{c}.log").start()
                for c in "ab"]
        outbox, uplink = outbox_uplink(mqtt5_broker, tmp_path / "agent", receipt_timeout_s=2.0, max_inflight=100)
        try:
            for role in cols:
                assert wait_until(lambda: "collector connected" in role.text(), 60), role.text()[-2000:]
            uplink.start()

            def feed() -> None:
                for i in range(frames):
                    put_sample(outbox, factories.sample(frame_id=f"cam-agent-1.gate.{i:05d}",
                                                        jpeg=factories.jpeg(48, 32, seed=i), width=48, height=32))
                    time.sleep(0.01)
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            time.sleep(2.5)
            pg.stop("immediate")  # a crash: no checkpoint, recovery from the WAL at the next start
            time.sleep(2.0)
            pg.start()
            feeder.join(60)
            assert wait_until(lambda: outbox.stats().pending == 0, 60), outbox.stats()
            assert all(r.proc.poll() is None for r in cols), "a collector died with the database"
        finally:
            uplink.stop()
            outbox.close()
            for r in cols:
                r.stop()
        assert outbox.stats().delivered == frames
        # The restart reached the collectors: their pool lost its connections and made new ones.
        assert any("error connecting in 'edgeloop-store'" in r.text() or "retrying" in r.text() for r in cols)
        with Store(tmp_path / "data") as store:
            ids = store.frame_ids()
            assert sorted(ids) == [f"cam-agent-1.gate.{i:05d}" for i in range(frames)]
            assert store.count() == frames
    finally:
        pg.stop("fast")
        subprocess.run(["rm", "-rf", str(pg.root)], timeout=60)
