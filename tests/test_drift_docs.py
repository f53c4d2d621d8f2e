"""docs/publishing.md documents every drift setting, the event topic and every event field."""

from __future__ import annotations

from pathlib import Path

from trainer.drift.monitor import EVENT_TOPIC, AgentDrift, DriftConfig, DriftMonitor

DOC = (Path(__file__).resolve().parents[1] / "docs" / "publishing.md").read_text()


def test_every_drift_setting_is_documented():
    missing = [k for k in DriftConfig.model_fields if f"\n{k} =" not in DOC]
    assert not missing, f"DriftConfig settings missing from docs/publishing.md: {missing}"


def test_the_event_topic_and_its_fields_are_documented():
    assert EVENT_TOPIC.replace("{agent_id}", "{agent_id}") in DOC
    monitor = DriftMonitor.__new__(DriftMonitor)  # only _event is used: no thread, no registry
    monitor.model_name, monitor.config, monitor.status_of = "m", DriftConfig(), lambda _a: None
    event = monitor._event(AgentDrift("a1"), "fired", 0.0)
    missing = [k for k in event if f"`{k}`" not in DOC]
    assert not missing, f"drift event fields missing from docs/publishing.md: {missing}"
