"""The agent benchmark runs end to end on a small generated video (figures are not checked: no timing in tests)."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import agent as bench_agent


def test_bench_agent_runs_and_reports_both_loops(tmp_path):
    video = tmp_path / "clip.avi"
    bench_agent.make_video(video, 40)
    parser = argparse.ArgumentParser()
    bench_agent.configure(parser)
    args = parser.parse_args(["--video", str(video), "--frames", "40", "--repeats", "1"])
    result = bench_agent.run(args)
    assert result["frames"] == 40 and result["pipeline"]["frames"] > 0
    assert result["picked"] == result["sent_and_receipted"] > 0
    assert result["pipeline"]["pending_at_stop"] == 0
    for key in ("pipeline_fps", "bare_fps", "bare_infer_only_fps", "ratio", "ratio_vs_infer_only"):
        assert result[key] > 0
    json.dumps(result)  # the figures are plain JSON


def test_shipped_bench_model_is_the_one_build_model_writes(tmp_path):
    """The agent-only install runs the shipped file; it must stay what the documented recipe builds."""
    pytest.importorskip("onnx")
    rebuilt = tmp_path / "bench_cnn.onnx"
    bench_agent.build_model(rebuilt)
    assert rebuilt.read_bytes() == bench_agent.SHIPPED_MODEL.read_bytes()
