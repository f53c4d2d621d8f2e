"""The detection loop end to end, with real processes and no shortcut between them (issue 10).

Two `edgeloop agent` processes run the fleet's small detector on a synthetic
video whose every object is known; they sample by score band, band count and
flicker and send over a real broker to the real collector; an oracle labels the
queue with the true boxes through the HTTP API; 30 labels start an incremental
round; the gate re-scores candidate and fleet model on the frozen test split;
the candidate is signed and rolled out to a canary, then the fleet; and both
agents say so in their retained Status. This is the demo's machinery
(``edgeloop.demo``) with ground truth in place of the teacher.
"""

from __future__ import annotations

import time

import pytest

from agent_helpers import write_video
from mqtt_util import Recorder, wait_until
from protocol import Status, decode
from protocol.topics import STATUS_FILTER

FRAMES = 120
SIZE = (128, 96)


def synthetic_video(path):
    """A looping clip of shapes whose boxes are known: (video, boxes of frame i)."""
    from agent.synthetic import SyntheticCamera

    cam = SyntheticCamera(seed=11, width=SIZE[0], height=SIZE[1], hold=3, max_shapes=2)
    frames = [cam.frame(i) for i in range(FRAMES)]
    truth = [[{"x1": s.box()[0], "y1": s.box()[1], "x2": s.box()[2], "y2": s.box()[3], "label": "vehicle"}
              for s in f.shapes] for f in frames]
    return write_video(path, [f.image for f in frames]), truth


def retained_statuses(broker, n: int) -> dict[str, Status]:
    """The agents' retained Status messages, as a subscriber arriving now sees them."""
    rec = Recorder(broker.host, broker.port, [STATUS_FILTER])
    out: dict[str, Status] = {}
    try:
        while len(out) < n:
            topic, payload, retained = rec.get(timeout=10)
            if retained:
                status = decode(topic, payload)
                out[status.agent_id] = status
    finally:
        rec.close()
    return out


@pytest.mark.slow
@pytest.mark.timeout(2400)  # training on 2 busy cores
def test_detection_loop_from_camera_to_rolled_out_model(tmp_path):
    from edgeloop.demo.detection import DetectionTask
    from edgeloop.demo.layout import DemoConfig, Layout
    from edgeloop.demo.runner import Demo

    video, truth = synthetic_video(tmp_path / "shapes.avi")
    cfg = DemoConfig(data=tmp_path / "data", agents=2, source=str(video), auto_label=True, headless=True,
                     http_port=0, batch_size=30, camera_fps=15.0, task="detection", initial_examples=30, epochs=10)
    task = DetectionTask(cfg, Layout(cfg.data.resolve()), truth=lambda _video, i: truth[i])
    demo = Demo(cfg, task=task)
    try:
        demo.up()  # the first model: 30 frames with their true boxes, trained, gated, rolled out
        first = demo.registry.current("vehicles")
        store = demo.service.store
        initial_splits = dict(store.db.read().execute("SELECT id, split FROM examples").fetchall())
        assert set(initial_splits.values()) >= {"train", "test"}
        before = demo.service.rounds.last.round_id

        # One round is the subject: once the oracle's labels have started it, the oracle stops, so
        # no next round is rolling out while the agents' Status is read.
        assert wait_until(lambda: demo.service.rounds.worker.running, 600)
        demo.oracle.stop()
        report = demo.wait_for_round(before, timeout=900)
        assert report is not None and report.state == "done", report
        # Every sample came through the broker from an agent, picked by a detection strategy.
        strategies = {r[0] for r in store.db.read().execute("SELECT DISTINCT strategy FROM samples")}
        assert strategies and strategies <= {"threshold_band", "band_count", "flicker", "random"}, strategies
        assert strategies & {"threshold_band", "band_count", "flicker"}, strategies
        assert demo.oracle.labelled >= 30 and demo.oracle.unknown == 0
        labelled_edge = store.db.read().execute(
            "SELECT count(*) FROM examples WHERE source = 'edge' AND status = 'labeled' AND labeled_by = 'oracle'"
        ).fetchone()[0]
        assert labelled_edge >= 30

        record = demo.registry.get("vehicles", report.version)
        assert record.parent_version == first.version  # incremental: trained on from the fleet model
        assert "map_50" in record.metrics
        # The frozen test split: the initial examples kept their splits; the gate scored both models on it.
        after_splits = dict(store.db.read().execute("SELECT id, split FROM examples").fetchall())
        assert {k: after_splits[k] for k in initial_splits} == initial_splits
        gate = report.gate.to_dict()
        assert gate["publish"], gate
        assert gate["candidate"] > gate["current"], gate

        # Signed, staged: a canary first, then the fleet; both agents run the new version.
        rollout = demo.service.rounds.rollouts[-1].result(timeout=300)
        assert rollout.outcome == "fleet", rollout
        assert len(rollout.canaries) == 1
        assert demo.wait_agents_on(report.version, timeout=120) == 2
        # An agent says "updating" while the new model is on probation (its health window), then "ok".
        deadline = time.monotonic() + 180
        while True:
            statuses = retained_statuses(demo.broker, 2)
            settled = all(s.model_state == "ok" for s in statuses.values())
            if settled or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert {s.agent_id for s in statuses.values()} == {"demo-agent-1", "demo-agent-2"}
        for s in statuses.values():
            assert (s.state, s.model_name, s.model_state) == ("online", "vehicles", "ok"), s
            assert s.model_version >= report.version, s
        assert demo.agents.check() == []
    finally:
        demo.down()
