"""Wire the publishing side together: registry, key, MQTT link, fleet watch, publisher, rollout, drift.

The server builds one ``PublishingService`` in its lifespan hook (and the
``edgeloop publish``/``rollback`` CLIs build a short-lived one)::

    svc = PublishingService.open(PublishingConfig(...), data_dir)
    ...
    svc.close()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.topics import STATUS_FILTER, TELEMETRY_FILTER
from trainer.drift.monitor import DriftConfig, DriftMonitor

from .health import RolloutPolicy
from .keys import load_signing_key
from .mqttlink import MqttLink, MqttSettings
from .publisher import PublishConfig, Publisher
from .registry import Registry
from .rollout import FleetWatch, RolloutController

PASSWORD_ENV = "EDGELOOP_MQTT_PASSWORD"


class PublishingConfig(BaseModel):
    """The ``[publish]`` section a server config can carry (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    signing_key: Path  # signing_key.pem from `edgeloop keys generate`
    base_url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    expiry_s: int = Field(30 * 86400, ge=60, le=366 * 86400)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_username: str | None = None  # password from $EDGELOOP_MQTT_PASSWORD
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None  # a client certificate, when the broker listener asks for one
    mqtt_key_file: str | None = None
    rollout: RolloutPolicy = RolloutPolicy()
    drift: DriftConfig = DriftConfig()  # [publish.drift]: live confidence histograms vs each model's test split


@dataclass
class PublishingService:
    config: PublishingConfig
    registry: Registry
    link: MqttLink
    watch: FleetWatch
    publisher: Publisher
    controller: RolloutController
    owns_registry: bool
    drift: DriftMonitor

    @classmethod
    def open(cls, config: PublishingConfig, data_dir: str | Path | None = None, registry: Registry | None = None,
             client_id: str = "edgeloop-publisher", resume: bool = True) -> "PublishingService":
        """Load the key, connect to the broker, subscribe to fleet health. Raises on a bad key or no broker."""
        key = load_signing_key(config.signing_key)
        owns = registry is None
        if registry is None:
            if data_dir is None:
                raise ValueError("give data_dir or registry")
            registry = Registry(data_dir)
        watch = FleetWatch()
        settings = MqttSettings(host=config.mqtt_host, port=config.mqtt_port, client_id=client_id,
                                username=config.mqtt_username, password=os.environ.get(PASSWORD_ENV),
                                tls=config.mqtt_tls, ca_file=config.mqtt_ca_file,
                                cert_file=config.mqtt_cert_file, key_file=config.mqtt_key_file)
        link = MqttLink(settings, (STATUS_FILTER, TELEMETRY_FILTER), watch.on_message)
        try:
            link.start()
        except Exception:
            if owns:
                registry.close()
            raise
        publisher = Publisher(registry, key, link, PublishConfig(base_url=config.base_url, expiry_s=config.expiry_s))
        controller = RolloutController(registry, publisher, watch, config.rollout)
        drift = DriftMonitor(registry, config.model_name, config.drift,
                             lambda topic, payload: link.publish(topic, payload, qos=1), watch.status)
        svc = cls(config, registry, link, watch, publisher, controller, owns, drift)
        if resume:  # the server; the short-lived CLIs neither resume rollouts nor raise drift alerts
            watch.telemetry_listeners.append(drift.on_telemetry)
            controller.resume_active()  # rollouts a stopped server left running or paused keep going
        return svc

    def close(self) -> None:
        self.controller.close()
        self.drift.close()
        self.link.stop()
        if self.owns_registry:
            self.registry.close()
