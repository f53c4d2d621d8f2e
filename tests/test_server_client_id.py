"""The server's default MQTT client id: host name plus a suffix kept in the data dir (two servers on one
broker no longer share, and steal, one persistent session); an explicit ``[mqtt] client_id`` wins."""

from __future__ import annotations

import re
import socket

from trainer.server.config import ServerConfig, resolve_client_id


def _config(data_dir, **mqtt) -> ServerConfig:
    return ServerConfig.model_validate({"mqtt": mqtt, "store": {"data_dir": str(data_dir)}})


def test_the_default_id_is_per_host_and_data_dir_and_survives_a_restart(tmp_path) -> None:
    a = resolve_client_id(_config(tmp_path / "a")).mqtt.client_id
    again = resolve_client_id(_config(tmp_path / "a")).mqtt.client_id  # a restart resumes its session
    b = resolve_client_id(_config(tmp_path / "b")).mqtt.client_id  # a second server on the same broker
    assert a == again and a != b
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32]
    assert a.startswith(f"edgeloop-{host}-") and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", a)


def test_an_explicit_client_id_wins(tmp_path) -> None:
    assert resolve_client_id(_config(tmp_path, client_id="col-7")).mqtt.client_id == "col-7"
    assert not (tmp_path / "mqtt_client_id").exists()


def test_the_service_runs_with_the_resolved_id(tmp_path) -> None:
    from trainer.server.service import Service

    service = Service(_config(tmp_path / "d", enabled=False))
    assert service.config.mqtt.client_id == resolve_client_id(_config(tmp_path / "d")).mqtt.client_id


def test_processes_starting_together_agree_on_the_suffix(tmp_path):
    """Collectors and workers sharing a data dir start at once: one creates the file, all read the same id."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from trainer.server.config import _client_id_suffix; "
            "print(_client_id_suffix(Path(sys.argv[1])))")
    path = tmp_path / "data" / "mqtt_client_id"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1 and outs == {path.read_text().strip()}


def test_a_bad_broker_option_names_the_option_and_exits_2(capsys) -> None:
    import argparse

    import pytest

    from trainer.roles.cli import configure as configure_role
    from trainer.server.cli import configure as configure_server

    for build in (configure_server, lambda p: configure_role(p, "collector")):
        parser = argparse.ArgumentParser(prog="edgeloop")
        build(parser)
        assert parser.parse_args(["--broker", "mq.local:8883"]).broker == ("mq.local", 8883)
        for bad in ("mq.local", "mq.local:port", ":1883", "mq.local:70000"):
            with pytest.raises(SystemExit) as e:
                parser.parse_args(["--broker", bad])
            assert e.value.code == 2
            err = capsys.readouterr().err
            assert "argument --broker: expected HOST:PORT" in err and "invalid literal" not in err
