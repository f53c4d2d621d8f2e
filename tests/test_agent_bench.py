"""The agent benchmark runs end to end on a small generated video (figures are not checked: no timing in tests)."""

from __future__ import annotations

import argparse
import json

from bench import agent as bench_agent


def test_bench_agent_runs_and_reports_both_loops(tmp_path):
    video = tmp_path / "clip.avi"
    bench_agent.make_video(video, 40)
    parser = argparse.ArgumentParser()
    bench_agent.configure(parser)
    args = parser.parse_args(["--video", str(video), "--frames", "40", "--repeats", "1"])
    result = bench_agent.run(args)
    assert result["frames"] == 40 and result["pipeline"]["frames"] > 0
    assert result["pipeline"]["picked"] == result["pipeline"]["delivered"]
    for key in ("pipeline_fps", "bare_fps", "bare_infer_only_fps", "ratio", "ratio_vs_infer_only"):
        assert result[key] > 0
    json.dumps(result)  # the figures are plain JSON
