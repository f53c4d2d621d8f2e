"""``/api/drift``: every agent's drift against its model's test split, for the Drift page and scripts.

Reads ``app.state.publishing.drift`` (a ``DriftMonitor``); without ``[publish]``
the routes answer 404 (the feature is not configured). Authenticated like
the rest of the API (``require_user``).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from protocol.topics import ID_PATTERN

from .monitor import DriftMonitor

AgentId = Annotated[str, Path(pattern=ID_PATTERN, description="the agent id")]


def monitor_of(request: Request) -> DriftMonitor:
    svc = getattr(request.app.state, "publishing", None)
    if svc is None or getattr(svc, "drift", None) is None:
        raise HTTPException(404, "drift is not watched on this server (no [publish] in its config)")
    if not svc.drift.config.enabled:
        raise HTTPException(404, "drift is switched off on this server (publish.drift.enabled = false)")
    return svc.drift


def api_router(require_user: Callable[..., str] | None = None) -> APIRouter:
    if require_user is None:
        from trainer.server.auth import require_user
    api = APIRouter(prefix="/api/drift", tags=["drift"], dependencies=[Depends(require_user)])

    @api.get("", summary="every agent's PSI, level and alert state, with the thresholds")
    def drift_list(monitor: Annotated[DriftMonitor, Depends(monitor_of)]) -> dict[str, Any]:
        c = monitor.config
        return {"model_name": monitor.model_name, "agents": monitor.agents(),
                "thresholds": {"stable_below": 0.1, "drift_above": 0.25, "alert_psi": c.alert_psi,
                               "clear_psi": c.clear_psi, "min_samples": c.min_samples, "window_s": c.window_s,
                               "epsilon": c.epsilon}}

    @api.get("/{agent_id}", summary="one agent: live and reference histograms per class, PSI history")
    def drift_agent(monitor: Annotated[DriftMonitor, Depends(monitor_of)], agent_id: AgentId) -> dict[str, Any]:
        row = monitor.agent(agent_id)
        if row is None:
            raise HTTPException(404, f"no telemetry from agent {agent_id} since the server started")
        return row

    return api
