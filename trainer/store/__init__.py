"""The central store: one SQLite database (one writer thread) holding metadata and image bytes."""

from .imaging import BadImage
from .records import (ACTIONS, STATUSES, Conflict, DeadLetter, IncomingSample, IngestResult, InvalidLabel, Item,
                      NewExample, NotFound, Project, QueueFilter, StoreError)
from .store import Store, incoming, new_example

__all__ = ["ACTIONS", "STATUSES", "BadImage", "Conflict", "DeadLetter", "IncomingSample", "IngestResult",
           "InvalidLabel", "Item", "NewExample", "NotFound", "Project", "QueueFilter", "Store", "StoreError",
           "incoming", "new_example"]
