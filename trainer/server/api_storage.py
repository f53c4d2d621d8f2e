"""``GET /api/storage``: disk usage by category, the hard limit and what retention deleted (the Dataset page).

Reads the store (one grouped query and the counters); the figures are the ones /metrics exports
(trainer/store/retention.py measures them).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from trainer.store.retention import CATEGORIES, usage

from .api import ERRORS, StoreDep, User

router = APIRouter(prefix="/api", responses=ERRORS)


class CategoryOut(BaseModel):
    examples: int
    bytes: int


class StorageOut(BaseModel):
    categories: dict[str, CategoryOut]  # labeled, unreviewed, rejected, skipped
    total_bytes: int  # image bytes in the store, each stored image once
    limit_bytes: int | None  # retention.hard_limit_bytes
    full: bool  # new samples are refused for now (dead letter store_full)
    deleted: dict[str, int]  # examples deleted by retention, by reason
    policies: dict  # the [retention] table in force


@router.get("/storage", response_model=StorageOut, summary="disk usage by category, hard limit, retention")
def get_storage(request: Request, user: User, store: StoreDep) -> StorageOut:
    svc = request.app.state.service
    u = usage(store.db.read())
    cfg = svc.config.retention
    limit = cfg.hard_limit_bytes
    deleted = {k[len("retention_"):]: v for k, v in store.counters().items() if k.startswith("retention_")}
    return StorageOut(categories={c: CategoryOut(examples=u.examples.get(c, 0), bytes=u.bytes.get(c, 0))
                                  for c in CATEGORIES},
                      total_bytes=u.total_bytes, limit_bytes=limit, full=limit is not None and u.total_bytes >= limit,
                      deleted=deleted, policies=cfg.model_dump())
