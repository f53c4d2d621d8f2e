"""The ``[roles]`` table: which parts of the central side this process runs.

With the defaults one ``edgeloop server`` does everything (the embedded SQLite
setup). On PostgreSQL the parts can run as separate processes on separate
machines, any number of each: ``edgeloop server`` with ``collector = false``
and ``worker = false`` serves the UI and API and enqueues rounds,
``edgeloop collector`` ingests MQTT (several share the topics through
``[mqtt] shared_group``), ``edgeloop worker`` claims round jobs from the
database (trainer/rounds/jobs.py). Pure data, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RolesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    collector: bool = True  # ingest MQTT samples, statuses and telemetry here (needs [mqtt] enabled)
    worker: bool = True  # train round jobs here (needs [rounds]); false: only enqueue them
    retention: bool = True  # run the periodic retention pass and storage meter here
    worker_lease_s: float = Field(60.0, ge=2.0, le=3600.0)  # a dead worker's round goes to another after this
    worker_poll_s: float = Field(2.0, gt=0.0, le=600.0)  # how often an idle worker looks for a job
    # Names this process in round jobs (owner) and logs; empty: "<hostname>:<pid>".
    worker_id: str = Field("", max_length=128, pattern=r"^[A-Za-z0-9._:@-]*$")
