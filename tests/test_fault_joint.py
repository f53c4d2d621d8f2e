"""Real agents, the real broker and the real collector together, under faults (issue 11).

Three ``edgeloop agent`` processes on synthetic cameras reach the broker
through ``netfault.FaultProxy`` (one proxy each); the collector is the server
process (``python -m trainer.server``, MQTT only). In one run of 1,000+
picked frames:

* the collector is killed -9 three times, while frames are in flight;
* the broker is killed -9 once without persistence (the collector's session
  and every queued message are lost: the collector must resubscribe and the
  agents resend) and once with persistence (``persistence true``);
* agent ``fa``'s network is cut for ``EDGELOOP_OUTAGE_S`` seconds (half
  stalled: connections open, no byte moves; half dropped: connections closed
  and refused); it resends after its 2 s receipt timeout;
* agent ``fc`` starts cut off, fills its 256 KiB outbox (evicting), is killed
  -9 with the outbox full, and restarts connected, picking nothing more;
* agent ``fb``'s proxy zeroes the JPEG of every 37th frame: the collector
  refuses those as ``not_jpeg`` with a ``rejected`` receipt; at the end its
  receipts are dropped on the wire, so frames it sent stay in flight (its
  receipt timeout is an hour) until a ``resend_outbox`` command.

At the end the store holds exactly the frames the agents picked minus what
they evicted and what the collector rejected, each once, with the bytes the
agent sent, and each agent's outbox counters add up (picked = delivered +
rejected + evicted + pending, pending 0). Evictions happen only while ``fc``
has never been connected, so no evicted frame can have been stored.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import ROOT, base_config, make_classifier, write_config
from edgeloop.broker import LocalBroker
from mqtt_util import publish
from netfault import FaultProxy
from protocol import Command, encode
from protocol.topics import command_topic

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("EDGELOOP_OUTAGE_S", "4"))
N_A, N_C = 500, 300  # frames of the finite cameras; fb's camera runs until the end
CORRUPT_EVERY = 37


def _seq(frame_id: str) -> int:
    return int(re.search(r"-(\d+)$", frame_id).group(1))


class Proc:
    """A process in its own session (kill -9 takes its children too), logging to a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.p: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log, "ab") as out:
            self.p = subprocess.Popen(self.args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def kill9(self) -> None:
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2500:] if self.log.exists() else ""


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        conn.close()


class Agent:
    def __init__(self, tmp: Path, name: str, proxy: FaultProxy, model: Path, **sections) -> None:
        self.name, self.dir, self.proxy = name, tmp / name, proxy
        self.dir.mkdir()
        self.model, self.sections = model, sections
        self.proc: Proc | None = None
        self.log = self.dir / "agent.log"

    def start(self, **override) -> None:
        broker = type("B", (), {"host": self.proxy.host, "port": self.proxy.port})()
        sections = {**self.sections, **override}
        cfg = base_config(self.dir, broker, self.model, **sections)
        cfg["agent_id"] = self.name
        path = write_config(self.dir / "agent.toml", cfg)
        self.proc = Proc([sys.executable, "-m", "edgeloop", "agent", "--config", str(path), "--seed", "1"],
                         self.log).start()

    def counters(self) -> dict[str, int]:
        db = self.dir / "data" / "outbox.sqlite"
        found = dict(_query(db, "SELECT name, value FROM counters"))
        found["pending"] = (_query(db, "SELECT count(*) FROM items") or [(0,)])[0][0]
        return found

    def pending_ids(self) -> set[str]:
        return {r[0] for r in _query(self.dir / "data" / "outbox.sqlite", "SELECT frame_id FROM items")}


def _wait(what: str, predicate, timeout: float, *procs: Proc) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log.name} ({p.log.parent.name}):\n{p.tail()}" for p in procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.1)


def _settled(agent: "Agent", at_least: int, quiet_s: float = 1.5):
    """A predicate: the agent picked ``at_least`` frames and then nothing for ``quiet_s`` (its camera ended)."""
    seen = {"picked": -1, "since": time.monotonic()}

    def check() -> bool:
        picked = agent.counters().get("picked", 0)
        if picked != seen["picked"]:
            seen.update(picked=picked, since=time.monotonic())
        return picked >= at_least and time.monotonic() - seen["since"] >= quiet_s

    return check


def _camera(seed: int, frames: int, fps: float) -> list[dict]:
    return [{"id": "cam", "source": "synthetic",
             "synthetic": {"seed": seed, "width": 64, "height": 48, "fps": fps, "frames": frames}}]


PICK_ALL = {"strategies": [{"name": "random", "rate": 1.0}]}
PICK_NONE = {"strategies": [{"name": "random", "rate": 0.0}]}


class Rig:
    """The broker, the collector process, one fault proxy and one agent process per agent."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.b1 = LocalBroker(tmp / "broker1")
        if self.b1.kind != "mosquitto":
            pytest.skip("needs mosquitto (broker persistence, kill -9)")
        self.broker = self.b1
        data = tmp / "server"
        self.store_db = data / "edgeloop.db"
        (tmp / "server.toml").write_text(
            f'[mqtt]\nhost = "{self.b1.host}"\nport = {self.b1.port}\nclient_id = "joint-collector"\n'
            f'batch_ms = 20\nprotocol = "3.1.1"\n[http]\nenabled = false\n[store]\ndata_dir = "{data}"\n')
        self.collector = Proc([sys.executable, "-m", "trainer.server", "--config", str(tmp / "server.toml")],
                              tmp / "collector.log")
        model = make_classifier(tmp / "model.onnx", version=1)
        corrupt = lambda f: _seq(f) % CORRUPT_EVERY == 5  # noqa: E731
        self.proxies = {n: FaultProxy(self.b1.host, self.b1.port, corrupt=corrupt if n == "fb" else None)
                        for n in ("fa", "fb", "fc")}
        common = {"mqtt": {"keepalive_s": 5, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}}
        self.a = Agent(tmp, "fa", self.proxies["fa"], model, cameras=_camera(1, N_A, 60), sampling=PICK_ALL,
                       uplink={"receipt_timeout_s": 2.0, "max_inflight": 32}, **common)
        self.b = Agent(tmp, "fb", self.proxies["fb"], model, cameras=_camera(2, 0, 50), sampling=PICK_ALL,
                       uplink={"receipt_timeout_s": 3600.0, "max_inflight": 2000}, **common)
        self.c = Agent(tmp, "fc", self.proxies["fc"], model, cameras=_camera(3, N_C, 100), sampling=PICK_ALL,
                       uplink={"receipt_timeout_s": 2.0, "max_inflight": 32}, outbox={"max_bytes": 256 * 1024},
                       **common)
        self.agents = (self.a, self.b, self.c)
        self.outage = None

    def procs(self) -> list[Proc]:
        return [self.collector] + [x.proc for x in self.agents if x.proc]

    def stored(self) -> int:
        return (_query(self.store_db, "SELECT count(*) FROM samples") or [(0,)])[0][0]

    def wait_stored(self, n: int, timeout: float = 60) -> None:
        _wait(f"{n} frames stored", lambda: self.stored() >= n, timeout, *self.procs())

    def kill_collector(self) -> None:
        self.collector.kill9()
        self.collector.start()

    def start(self) -> None:
        self.b1.start()
        self.collector.start()
        self.proxies["fc"].drop()  # fc has never reached the broker when its outbox overflows
        for x in self.agents:
            x.start()

    def without_persistence(self) -> None:
        self.wait_stored(100, timeout=180)  # four Python processes importing onnxruntime / FastAPI on 2 busy cores
        self.kill_collector()  # 1
        self.outage = _cut(self.proxies["fa"], OUTAGE_S)
        self.wait_stored(250)
        self.b1.kill()  # the collector's session and every queued message are gone
        time.sleep(0.5)
        self.b1.start()
        c = self.c
        _wait("fc's camera ended", _settled(c, N_C // 2), 60, c.proc)
        full = c.counters()
        assert full["evicted"] > 0 and full["delivered"] == 0, full
        c.proc.kill9()  # with a full outbox
        self.proxies["fc"].restore()
        c.start(sampling=PICK_NONE)
        self.wait_stored(400)
        self.kill_collector()  # 2

    def with_persistence(self) -> None:
        self.wait_stored(550)
        self.b1.stop()
        self.broker = LocalBroker(self.tmp / "broker2", port=self.b1.port, extra_conf=(
            f"persistence true\npersistence_location {self.tmp / 'broker2'}/\nautosave_interval 1\n"))
        self.broker.start()
        self.wait_stored(700)
        time.sleep(1.2)  # one autosave with the collector's session in it
        self.broker.kill()
        time.sleep(0.5)
        self.broker.start()
        self.wait_stored(850)
        self.kill_collector()  # 3
        self.outage.join(OUTAGE_S + 30)

    def drain(self) -> None:
        """fa and fc deliver everything they picked."""
        a, c = self.a, self.c
        _wait("fa's camera ended", _settled(a, N_A // 2), 120, a.proc)
        _wait("fa and fc drained", lambda: a.counters()["pending"] == 0 and c.counters()["pending"] == 0,
              120, *self.procs())
        self.wait_stored(1050)

    def resend_drill(self) -> None:
        """fb's receipts vanish: what it sends stays in flight (an hour's timeout) until resend_outbox."""
        b, proxy = self.b, self.proxies["fb"]
        proxy.drop_receipts.set()
        before = b.counters()["picked"]
        _wait("fb picks 20 more frames", lambda: b.counters()["picked"] >= before + 20, 30, b.proc)
        b.proc.stop()
        b.start(sampling=PICK_NONE)  # it resends what is pending once, on connecting
        stuck = b.pending_ids()
        assert stuck, b.counters()
        good = {f for f in stuck if _seq(f) % CORRUPT_EVERY != 5}
        stored_of = lambda: {r[0] for r in _query(self.store_db, "SELECT frame_id FROM samples")} & good  # noqa
        _wait("fb's pending frames stored (their receipts dropped)", lambda: stored_of() == good, 60,
              self.collector, b.proc)
        time.sleep(1.0)
        assert b.pending_ids() == stuck, "fb must not resend before its receipt timeout"
        proxy.drop_receipts.clear()
        publish(self.broker.host, self.broker.port, command_topic("fb"),
                encode(Command(command_id="resend-1", action="resend_outbox", issued_at=time.time())))
        _wait("fb drained after resend_outbox", lambda: b.counters()["pending"] == 0, 30, self.collector, b.proc)

    def close(self) -> None:
        if self.outage is not None:
            self.outage.join(OUTAGE_S + 30)
        for x in self.agents:
            if x.proc:
                x.proc.stop()
        self.collector.stop()
        for p in self.proxies.values():
            p.close()
        self.broker.stop()
        self.b1.stop()


def test_real_agents_broker_and_collector_under_faults(tmp_path: Path) -> None:
    started = time.monotonic()
    rig = Rig(tmp_path)
    try:
        rig.start()
        rig.without_persistence()
        rig.with_persistence()
        rig.drain()
        rig.resend_drill()
    finally:
        rig.close()
    _check(tmp_path, rig.store_db, rig.agents, rig.proxies, time.monotonic() - started)


def _cut(proxy: FaultProxy, seconds: float):
    import threading

    def run() -> None:
        proxy.stall()
        time.sleep(seconds / 2)
        proxy.drop()
        time.sleep(seconds / 2)
        proxy.restore()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _check(tmp_path: Path, store_db: Path, agents, proxies, elapsed: float) -> None:
    from trainer.store import Store

    counters = {x.name: x.counters() for x in agents}
    with Store(store_db.parent) as store:
        rows = _query(store_db, "SELECT frame_id, agent_id FROM samples")
        dead = store.dead_letter_counts()
        totals = store.counters()
        figures = (f"joint fault run {elapsed:.0f} s (outage {OUTAGE_S:g} s): agents {counters}; stored "
                   f"{len(rows)}; dead letters {dead}; collector counters {totals}")
        print(figures)
        (tmp_path / "figures.txt").write_text(figures)
        frame_ids = [r[0] for r in rows]
        assert len(frame_ids) == len(set(frame_ids)), "a frame stored twice"
        picked_total = sum(c["picked"] for c in counters.values())
        assert picked_total >= 1000, counters
        for x in agents:
            c = counters[x.name]
            assert c["pending"] == 0, (x.name, c)
            assert c["picked"] == c["delivered"] + c["rejected"] + c["evicted"] + c["pending"], (x.name, c)
            mine = {f for f, agent in rows if agent == x.name}
            assert len(mine) == c["picked"] - c["evicted"] - c["rejected"], (x.name, c, len(mine))
            assert len(mine) == c["delivered"], (x.name, c, len(mine))
            assert all(f.startswith(f"{x.name}.cam.") for f in mine)
        assert counters["fc"]["evicted"] > 0 and counters["fb"]["rejected"] > 0, counters
        corrupted = proxies["fb"].corrupted
        assert corrupted and not corrupted & set(frame_ids)
        assert counters["fb"]["rejected"] == len(corrupted), (counters["fb"], len(corrupted))
        assert dead.get("not_jpeg", 0) >= len(corrupted), dead
        # every stored image is the one its agent sent: content-addressed, and a valid JPEG
        for frame_id, sha in list(store.sample_blobs().items())[::50]:
            body = store.blob(sha)
            assert body[:3] == b"\xff\xd8\xff", frame_id
    a_log = (tmp_path / "fa" / "agent.log").read_text()
    assert "sending again" in a_log, "fa never resent after a receipt timeout"
