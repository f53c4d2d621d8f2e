"""The README's run command, unattended: the whole loop with real processes, end to end.

Agents stream a synthetic camera whose style drifts away from what the first
model saw; an oracle labels the error queue through the REST API; a round
trains on CPU, passes the gate, is signed, announced, downloaded and
hot-swapped by every agent. This is issue 6's full-loop test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_headless_demo_runs_rounds_and_updates_every_agent(tmp_path):
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "edgeloop", "demo", "--data", str(tmp_path / "data"), "--headless", "--rounds", "2",
           "--json", str(out), "--port", "0", "--agents", "2", "--batch-size", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    initial = summary["initial"]
    rounds = summary["rounds"]
    assert len(rounds) == 2
    for r in rounds:
        assert r["state"] == "done", r
        assert r["metric_name"] == "accuracy" and 0.0 <= r["metric"] <= 1.0
        assert r["model_version"] > initial["model_version"]
        if r["gate"]["publish"] and r["rollout"] == "fleet":
            assert r["agents_updated"] == 2, f"every agent must run v{r['model_version']}: {r}"
            assert r["loop_seconds"] > 0
        elif r["gate"]["publish"]:  # the canary's health refused it and was rolled back
            assert r["rollout"] == "halted" and r["agents_updated"] == 0, r
        else:
            assert r["agents_updated"] == 0 and r["gate"]["reasons"], r
    assert rounds[1]["labels"] > rounds[0]["labels"] >= 30
    published = [r for r in rounds if r["gate"]["publish"]]
    assert published, f"no round passed the gate: {[r['gate'] for r in rounds]}"
    # The point of the loop: the fleet's model got better on the drifted stream.
    assert published[-1]["stream_accuracy"] > initial["stream_accuracy"] + 0.05, summary
    assert summary["oracle"]["labelled"] >= 60

    # A second run resumes from the data folder: the fleet model is kept, not retrained from nothing.
    again = subprocess.run([sys.executable, "-m", "edgeloop", "demo", "--data", str(tmp_path / "data"), "--headless",
                            "--rounds", "0", "--port", "0", "--agents", "1"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # Rounds may have gone on past the summarized ones before the first run stopped: the newest fleet
    # model is at least the last one the summary saw published.
    resumed = re.search(r"resuming: fleet model shapes v(\d+)", again.stdout)
    assert resumed and int(resumed.group(1)) >= published[-1]["model_version"], again.stdout[-2000:]


@pytest.mark.parametrize("task", ["classification", "detection"])
@pytest.mark.parametrize("source", [None, "/videos/road.avi"])
def test_demo_agent_configs_load_as_the_agent_reads_them(tmp_path, task, source):
    """Both tasks' agent configs come from one template: each is strict-valid and says what its task needs."""
    import tomllib
    from pathlib import Path

    from agent.config import parse_config
    from edgeloop.demo.classification import ClassificationTask
    from edgeloop.demo.detection import DetectionTask
    from edgeloop.demo.layout import DemoConfig, Layout

    cfg = DemoConfig(data=tmp_path, agents=2, source=source, seed=4, task=task)
    demo_task = (ClassificationTask if task == "classification" else DetectionTask)(cfg, Layout(tmp_path))
    for i in range(2):
        agent = parse_config(tomllib.loads(demo_task.agent_config(i, 1884, Path("/m/first.onnx"))), tmp_path)
        assert agent.agent_id == f"demo-agent-{i + 1}" and agent.mqtt.port == 1884
        assert agent.model.name == demo_task.model_name and agent.model.path == Path("/m/first.onnx")
        assert agent.sampling.seed == 4 + i and agent.data_dir == tmp_path / "agents" / agent.agent_id
        assert agent.updates.trusted_key_files == [tmp_path / "keys" / "signing_key.pub.pem"]
        (camera,) = agent.cameras
        names = [s.name for s in agent.sampling.strategies]
        if task == "detection":
            assert agent.model.intra_op_threads == 1 and "flicker" in names and camera.on_eof == "loop"
            assert camera.source == source if source else camera.source.endswith(f"highway_video{i + 1}.avi")
        else:
            assert names == ["margin", "random"] and camera.source == (source or "synthetic")
