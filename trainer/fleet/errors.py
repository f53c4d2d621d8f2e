"""The fleet's typed error: a command or bundle that cannot be sent, with the HTTP status that says why.

No threads, no I/O.
"""

from __future__ import annotations


class FleetError(Exception):
    """A fleet operation that cannot happen; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)
