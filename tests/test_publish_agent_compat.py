"""The real agent updater accepts what the publisher announces, and refuses a re-announced older version.

Publisher -> router (real HTTP) -> ``agent.updater.Updater.apply``: the card
version rewrite for rollbacks and the manifest fields must satisfy the agent's
own checks, not only ``protocol.manifest.verify``.
"""

from __future__ import annotations

from fastapi import FastAPI

from agent.config import parse_config
from agent.modelstore import ModelStore
from agent.updater import ModelHolder, Updater
from agent_helpers import base_config, make_classifier
from protocol import decode
from protocol.manifest import Cohort
from trainer.publish import keys
from trainer.publish.publisher import PublishConfig, Publisher
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import router
from trainer.publish.simfleet import ModelServer


class Sink:
    """Where the announcements go instead of MQTT: the test hands them to the updater itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 10.0):
        self.sent.append((topic, payload))


def test_agent_installs_updates_and_rollbacks_and_refuses_a_downgrade(tmp_path):
    files = keys.generate(tmp_path / "keys")
    raw = base_config(tmp_path, type("B", (), {"host": "127.0.0.1", "port": 1})(),
                      make_classifier(tmp_path / "v1.onnx", version=1),
                      updates={"enabled": True, "trusted_keys": [files.public_b64], "allow_http": True})
    cfg = parse_config(raw, tmp_path)
    holder = ModelHolder()
    updater = Updater(cfg, ModelStore(cfg.data_dir / "models"), holder, lambda: None)
    updater.load_initial()
    registry = Registry(tmp_path / "data")
    for seed in (1, 2, 3):  # the card inside says version 99: the publisher sets the announced one
        f = make_classifier(tmp_path / f"round-{seed}.onnx", version=99, seed=seed)
        registry.register(NewModel(name=cfg.model.name, file=f, task="classification", labels=()))
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    sink = Sink()
    try:
        with ModelServer(app) as server:
            pub = Publisher(registry, keys.load_signing_key(files.private), sink, PublishConfig(base_url=server.url))

            def announce(version: int) -> bool:
                pub.announce(cfg.model.name, version, Cohort("fleet"))
                return updater.apply(decode(*sink.sent[-1]))
            assert announce(2) and announce(3)
            assert (holder.ref.version, holder.model_state) == (3, "ok")
            registry.set_state(cfg.model.name, 2, "fleet")
            back = registry.register_rollback(cfg.model.name, 2)
            assert announce(back.version) and holder.ref.version == 4
            assert not announce(2)
            assert holder.ref.version == 4 and "downgrade" in holder.detail
    finally:
        registry.close()
