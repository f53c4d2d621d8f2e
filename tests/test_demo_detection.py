"""`edgeloop demo --task detection --headless --auto-label`: the README's detection run, unattended.

With ../shared, the agents run on the two highway videos and YOLOX-Nano is the
server's teacher. Without it, the same command runs on a generated video with a
small real ONNX detector as the teacher (agent_helpers.make_detector: a bright
grid cell is a box): the loop, the teacher's pre-labels accepted through the
API, the summary's fields and the rollout are still tested. Where ../shared is
here (CI) only the highway run runs: the generated-video run would prove the
same loop again on easier footage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent_helpers import make_detector, write_video

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HIGHWAY = SHARED / "data" / "video" / "highway_video1.avi"
YOLOX = SHARED / "models" / "yolox-nano" / "yolox_nano.onnx"


def run_demo(tmp_path: Path, *extra: str, rounds: int = 1) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "edgeloop", "demo", "--task", "detection", "--data", str(tmp_path / "data"),
           "--headless", "--auto-label", "--rounds", str(rounds), "--json", str(out), "--port", "0",
           "--agents", "2", "--batch-size", "30", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc


def check_summary(summary: dict, rounds: int) -> list[dict]:
    assert summary["task"] == "detection" and summary["model"] == "vehicles"
    initial = summary["initial"]
    assert initial["metric_name"] == "map_50" and 0.0 <= initial["metric"] <= 1.0
    assert len(summary["rounds"]) == rounds
    for r in summary["rounds"]:
        assert r["state"] == "done", r
        assert r["metric_name"] == "map_50" and 0.0 <= r["metric"] <= 1.0
        assert 0.0 <= r["stream_map_50"] <= 1.0
        if r["gate"]["publish"]:
            assert r["rollout"] == "fleet" and r["agents_updated"] == 2, r
        else:
            assert r["gate"]["reasons"], r
    assert summary["oracle"]["labelled"] >= 30 * rounds
    timing = summary["inference_ms"]
    assert timing["threads"] == 1 and timing["frames"] > 0
    assert timing["fleet_model"]["ms_per_frame"] > 0 and timing["teacher"]["ms_per_frame"] > 0
    return [r for r in summary["rounds"] if r["gate"]["publish"]]


def lit_cells_video(path: Path, frames: int = 240, grid: int = 4, size: tuple[int, int] = (160, 120)) -> Path:
    """Dark frames with 1-3 bright cells of a 4x4 grid: exactly what the grid teacher below finds."""
    rng = np.random.default_rng(5)
    w, h = size
    images = []
    for i in range(frames):
        if i % 3 == 0:  # a scene holds for 3 frames, as a camera's view does
            cells = rng.choice(grid * grid, size=int(rng.integers(1, 4)), replace=False)
        image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        for c in cells:
            r, k = divmod(int(c), grid)
            image[r * h // grid:(r + 1) * h // grid, k * w // grid:(k + 1) * w // grid] = 230
        images.append(image)
    return write_video(path, images)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # training on 2 busy cores
def test_detection_demo_with_a_grid_teacher_on_a_generated_video(tmp_path):
    """No ../shared needed: the teacher is a real ONNX detector whose boxes are known (a bright grid
    cell is a box), the video is generated; the student learns the teacher's boxes round after round."""
    if HIGHWAY.exists() and YOLOX.exists():
        pytest.skip("../shared is here: the highway test below runs the same command on real footage")
    video = lit_cells_video(tmp_path / "cells.avi")
    teacher = make_detector(tmp_path / "grid-teacher.onnx", labels=("vehicle",))
    summary, proc = run_demo(tmp_path, "--source", str(video), "--teacher", str(teacher), "--initial", "30",
                             "--epochs", "3")
    check_summary(summary, 1)
    assert "pre-labelled by the teacher and accepted" in proc.stdout
    assert summary["inference_ms"]["teacher"]["name"] == "blobs"


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.timeout(2400)  # training on 2 busy cores
def test_detection_demo_on_the_highway_videos_learns_from_yolox(tmp_path):
    if not (HIGHWAY.exists() and YOLOX.exists()):
        pytest.skip("../shared's highway videos or YOLOX-Nano are absent")
    summary, proc = run_demo(tmp_path, rounds=2)
    published = check_summary(summary, 2)
    assert "pre-labelled by the teacher and accepted" in proc.stdout
    assert published, f"no round passed the gate: {[r['gate'] for r in summary['rounds']]}"
    assert published[-1]["stream_map_50"] > summary["initial"]["stream_map_50"], summary
    assert summary["inference_ms"]["teacher"]["name"] == "yolox-nano"


def test_detection_demo_without_videos_says_what_to_pass(tmp_path):
    """A missing video or teacher is a clear message naming the option, not a traceback."""
    from agent.synthetic import SyntheticCamera

    clip = write_video(tmp_path / "clip.avi", [SyntheticCamera(seed=1, width=64, height=48).frame(i).image
                                               for i in range(5)])
    proc = subprocess.run([sys.executable, "-m", "edgeloop", "demo", "--task", "detection", "--data",
                           str(tmp_path / "data"), "--source", str(clip), "--teacher",
                           str(tmp_path / "missing.onnx"), "--headless", "--port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "--teacher MODEL.onnx" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
