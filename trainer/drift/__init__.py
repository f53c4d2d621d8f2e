"""Drift you can see: live per-class confidence histograms of agents against their model's test split.

``psi`` holds the pure parts (Population Stability Index with smoothing,
levels, the alert decision, the sampling-budget decision), ``reference``
computes a model's reference histogram on its frozen test split when a round
registers it, ``monitor`` keeps each agent's recent histogram from its
telemetry and raises alerts (metric, MQTT event, webhook, budget raise),
``routes`` serves ``/api/drift`` and the Drift page. See docs/publishing.md, "Drift".
"""
