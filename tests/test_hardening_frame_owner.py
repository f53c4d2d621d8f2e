"""Finding 8 of issue 11: a frame id belongs to the agent that publishes it.

Frame ids are ``<agent>.<camera>.<counter>`` and unique across the fleet. Before, agent ``evil`` could
publish a frame whose id starts with ``victim.``; the victim's real frame was then dropped as a
duplicate but receipted as stored, so the victim deleted it from its outbox: lost. The collector now
refuses such a frame (a counted dead letter and a ``rejected`` receipt to the sender), and the store
never receipts a frame id to an agent other than the one that stored it.
"""

from __future__ import annotations

from pathlib import Path

import factories
import protocol
from mqtt_util import Recorder, wait_until
from protocol import topics
from test_ingest_collector import _config, _publish_all
from trainer.server.service import Service
from trainer.store import Store, incoming


def _receipts(rec: Recorder, n: int) -> list:
    out = []
    while len(out) < n:
        topic, payload, _ = rec.get(timeout=20)
        out.append((topic, protocol.decode(topic, payload)))
    return out


def test_an_agent_cannot_claim_another_agents_frame_id(broker, tmp_path: Path) -> None:
    svc = Service(_config(broker, tmp_path)).start()
    rec = Recorder(broker.host, broker.port, [topics.receipt_topic("evil"), topics.receipt_topic("victim")])
    try:
        assert svc.collector.connected.wait(10)
        forged = factories.sample(agent_id="evil", camera_id="gate", frame_id="victim.gate.000001",
                                  jpeg=factories.jpeg(seed=1))
        _publish_all(broker, [(protocol.topic_for(forged), protocol.encode(forged))])
        [(topic, receipt)] = _receipts(rec, 1)
        assert topic == topics.receipt_topic("evil")
        assert receipt.stored == () and receipt.rejected == (("victim.gate.000001", "frame_id_not_owned"),)
        assert wait_until(lambda: svc.store.dead_letter_counts() == {"frame_id_not_owned": 1})
        assert svc.store.count() == 0

        real = factories.sample(agent_id="victim", camera_id="gate", frame_id="victim.gate.000001",
                                jpeg=factories.jpeg(seed=2))
        _publish_all(broker, [(protocol.topic_for(real), protocol.encode(real))])
        [(topic, receipt)] = _receipts(rec, 1)
        assert topic == topics.receipt_topic("victim") and receipt.stored == ("victim.gate.000001",)
        [item] = svc.store.queue()[0]
        assert item.agent_id == "victim" and svc.store.image(item.id)[0] == real.jpeg
    finally:
        rec.close()
        svc.stop()


def test_the_store_never_receipts_a_frame_id_stored_by_another_agent(tmp_path: Path, another_store_url) -> None:
    # Agent and camera ids may contain dots, so "site1" + camera "door.gate" and "site1.door" + camera
    # "gate" both own the prefix "site1.door.gate.": the first one stores it, the second is told so.
    first = factories.sample(agent_id="site1", camera_id="door.gate", frame_id="site1.door.gate.1",
                             jpeg=factories.jpeg(seed=1))
    second = factories.sample(agent_id="site1.door", camera_id="gate", frame_id="site1.door.gate.1",
                              jpeg=factories.jpeg(seed=2))
    with Store(tmp_path / "store") as store:
        result = store.ingest_samples([incoming(first)])
        assert result.stored == ("site1.door.gate.1",) and result.conflicts == ()
        result = store.ingest_samples([incoming(second), incoming(first)])  # first: a plain resend
        assert result.stored == ("site1.door.gate.1",) and result.conflicts == (("site1.door", "site1.door.gate.1"),)
        assert store.count() == 1 and store.counters()["ingest_frame_id_conflicts"] == 1
        both = store.ingest_samples([incoming(second), incoming(second)])
        assert both.conflicts == (("site1.door", "site1.door.gate.1"),) and both.new == 0
    with Store(tmp_path / "fresh", url=another_store_url()) as store:  # the same id twice in one batch: first wins
        result = store.ingest_samples([incoming(second), incoming(first)])
        assert result.new == 1 and result.conflicts == (("site1", "site1.door.gate.1"),)
        assert [i.agent_id for i in store.queue()[0]] == ["site1.door"]
