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
