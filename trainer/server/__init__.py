"""The central server: MQTT collector, error queue, REST API and review UI."""
