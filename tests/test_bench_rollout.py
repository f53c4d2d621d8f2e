"""The rollout benchmark runs real agents (worker processes, real Updater and ModelStore) to the new version.

Figures are not checked (no timing in tests): the run must finish with every agent on the new version,
its health window passed, and the new version on disk in each agent's model store.
"""

from __future__ import annotations

import argparse

import pytest

from bench import rollout


@pytest.mark.slow
def test_bench_rollout_real_agents_install_and_pass_health():
    parser = argparse.ArgumentParser()
    rollout.configure(parser)
    args = parser.parse_args(["--agents", "4", "--processes", "2", "--model-kb", "64", "--no-sim", "--timeout", "90"])
    result = rollout.run(args)
    assert result["agents"] == 4 and result["sim_agents"] is None
    real = result["project"]
    assert 0 < real["seconds"] <= real["health_ok_seconds"]
    assert real["model_bytes"] > 64 * 1024
    assert real["stores_with_new_version"] == 4  # the real ModelStore wrote the new version for every agent
