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
