"""FastAPI dependencies and error responses that the API's route modules share.

Small typed aliases, as in the full-stack FastAPI template's ``api/deps.py``: a handler takes
``user: User`` (authenticated, and allowed the route's role by roles.py) or ``store: StoreDep``
instead of repeating ``Depends(...)``, and a router's ``responses`` come from ``error_responses``
with the one ``ErrorOut`` model. Used by api*.py, users.py, trainer/fleet/routes.py and
trainer/publish/routes.py. Dependencies run on FastAPI's worker threads and wait on nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from trainer.store import Store

from .access import store_of
from .auth import require_user
from .schemas import ErrorOut

__all__ = ["CSRF_MISSING", "ErrorOut", "StoreDep", "User", "error_responses", "store_of"]

User = Annotated[str, Depends(require_user)]
StoreDep = Annotated[Store, Depends(store_of)]
CSRF_MISSING = "missing CSRF token on a cookie-authenticated write"


def error_responses(by_status: dict[int, str], forbidden: str = CSRF_MISSING) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an authenticated router: 401, 403 (``forbidden``), then ``by_status``.

    Each answers ``{"detail": "..."}`` (ErrorOut); the text says when.
    """
    described = {401: "no or wrong credentials", 403: forbidden, **by_status}
    return {status: {"model": ErrorOut, "description": text} for status, text in described.items()}
