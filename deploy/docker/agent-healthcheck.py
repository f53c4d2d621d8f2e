#!/usr/bin/env python3
"""Container health of the edge agent: is it connected to its MQTT broker?

Exit 0 when some process in this container (the agent, alone in it) holds an
established TCP connection to the broker port named in the agent config
(``[mqtt] port``, default 1883), else 1 with the reason on stdout, which
``docker inspect`` shows. Reads only the config file and /proc, so it costs
nothing next to the agent; the port is matched without resolving the host.

    agent-healthcheck.py [CONFIG]   (default: $EDGELOOP_AGENT_CONFIG)
"""

from __future__ import annotations

import os
import sys
import tomllib

ESTABLISHED = "01"  # the st column of /proc/net/tcp


def broker_port(config_path: str) -> int:
    with open(config_path, "rb") as f:
        mqtt = tomllib.load(f).get("mqtt", {})
    return int(mqtt.get("port", 1883))


def established_remote_ports(proc_net: str = "/proc/net") -> set[int]:
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, name)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == ESTABLISHED:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def main(argv: list[str]) -> int:
    config = argv[1] if len(argv) > 1 else os.environ.get("EDGELOOP_AGENT_CONFIG", "/etc/edgeloop/agent.toml")
    try:
        port = broker_port(config)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"unhealthy: cannot read the broker port from {config}: {e}")
        return 1
    if port in established_remote_ports():
        print(f"healthy: connected to the broker port {port}")
        return 0
    print(f"unhealthy: no established connection to a broker on port {port}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
