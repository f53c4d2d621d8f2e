"""`edgeloop publish` and `edgeloop rollback` against a real broker and registry."""

from __future__ import annotations

import json

from mqtt_util import Recorder

from edgeloop.cli import main
from protocol import decode
from protocol.manifest import load_public_key, verify
from protocol.topics import announce_topic
from trainer.publish import keys
from trainer.publish.registry import NewModel, Registry
from trainer.publish.simfleet import tiny_classifier


def setup(tmp_path, versions: int) -> tuple[list[str], keys.KeyFiles]:
    files = keys.generate(tmp_path / "keys")
    with Registry(tmp_path / "data") as r:
        for seed in range(versions):
            f = tiny_classifier(tmp_path / f"{seed}.onnx", "cam", ("a", "b"), seed=seed)
            r.register(NewModel(name="cam", file=f, task="classification", labels=("a", "b")))
    return ["--data-dir", str(tmp_path / "data"), "--name", "cam", "--key", str(files.private),
            "--base-url", "http://models.local:8080"], files


def test_publish_to_fleet_then_rollback(tmp_path, broker, capsys):
    common, files = setup(tmp_path, 2)
    net = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    assert main(["publish", "1", "--cohort", "fleet", *common, *net]) == 0
    assert main(["publish", "2", "--cohort", "fleet", *common, *net]) == 0
    assert main(["rollback", *common, *net]) == 0
    assert "cam v3 (rollback to 1)" in capsys.readouterr().out
    rec = Recorder(broker.host, broker.port, [announce_topic("cam")])
    try:
        topic, payload, retained = rec.get()
    finally:
        rec.close()
    ann = decode(topic, payload)
    man = verify(ann.manifest, ann.signature, [load_public_key(files.public_b64)])
    assert retained and (man.version, man.note) == (3, "rollback to 1")
    with Registry(tmp_path / "data") as r:
        assert [(m.version, m.state) for m in r.models("cam")] == [(3, "fleet"), (2, "rolled_back"), (1, "fleet")]


def test_staged_publish_with_no_agents_widens_and_prints_the_result(tmp_path, broker, capsys):
    common, _files = setup(tmp_path, 1)
    config = tmp_path / "server.toml"
    config.write_text(f'[publish]\nmqtt_host = "{broker.host}"\nmqtt_port = {broker.port}\n'
                      '[publish.rollout]\ndiscovery_s = 0.1\nwindow_s = 0.1\n')
    assert main(["publish", "1", "--config", str(config), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "fleet" and out["canaries"] == []


def test_bad_settings_are_clear_errors(tmp_path, broker, capsys):
    common, _files = setup(tmp_path, 1)
    assert main(["publish", "1", "--key", str(tmp_path / "keys" / "signing_key.pem")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    bad = tmp_path / "server.toml"
    bad.write_text('[publish]\nmqtt_prot = 1883\n')
    assert main(["rollback", "--config", str(bad), *common]) == 2
    assert "publish.mqtt_prot" in capsys.readouterr().err
    assert main(["publish", "7", "--cohort", "fleet", *common, "--mqtt-host", broker.host,
                 "--mqtt-port", str(broker.port)]) == 1
    assert "no model cam v7" in capsys.readouterr().err
    assert main(["rollback", *common, "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]) == 1
    assert "no fleet model" in capsys.readouterr().err


def test_register_the_fleets_first_model_and_publish_it(tmp_path, broker, capsys):
    common, _files = setup(tmp_path, 0)
    seed = tiny_classifier(tmp_path / "seed.onnx", "cam", ("a", "b"), version=3)
    net = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    assert main(["publish", "--register", str(seed), "--cohort", "fleet", *common, *net]) == 0
    assert "as cam v3" in capsys.readouterr().out  # the card's version: agents already run "v3"
    with Registry(tmp_path / "data") as r:
        assert (r.current("cam").version, r.current("cam").labels) == (3, ("a", "b"))
    other = tiny_classifier(tmp_path / "other.onnx", "dog-cam", ("a",))
    assert main(["publish", "--register", str(other), *common, *net]) == 1
    assert "card names model 'dog-cam'" in capsys.readouterr().err
    assert main(["publish", *common, *net]) == 2
