"""Shared fixtures: a real MQTT broker per test, paths to optional shared data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeloop.broker import LocalBroker

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_report_header(config: pytest.Config) -> list[str]:
    mosquitto = shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto")
    lines = [f"edgeloop broker: {'mosquitto at ' + mosquitto if mosquitto else 'amqtt (mosquitto not installed: MQTT 5 tests skip)'}"]
    lines.append(f"edgeloop shared data: {SHARED if SHARED.exists() else 'absent (shared-data tests skip)'}")
    return lines


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EDGELOOP_REQUIRE_MOSQUITTO") and not LocalBroker(ROOT / "build").mosquitto:
        raise pytest.UsageError("EDGELOOP_REQUIRE_MOSQUITTO is set but mosquitto is not installed")


@pytest.fixture
def broker(tmp_path: Path):
    """A real broker on a free loopback port; ``broker.kill()`` / ``.start()`` for fault tests."""
    b = LocalBroker(tmp_path / "broker")
    if b.kind != "mosquitto":
        print("mosquitto not found: using the embedded amqtt broker (MQTT 3.1.1 only)")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def mqtt5_broker(broker: LocalBroker) -> LocalBroker:
    if not broker.supports_mqtt5:
        pytest.skip("needs mosquitto (MQTT 5); the amqtt fallback speaks 3.1.1 only")
    return broker


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED / "data").exists():
        pytest.skip("../shared/data is absent")
    return SHARED / "data"
