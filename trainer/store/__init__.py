"""The central store: metadata and image bytes in one database, SQLite (default) or PostgreSQL, by URL.

``Store(data_dir, url=...)``; the backends and their shared interface: ``trainer.store.backends``;
the one place the SQL dialects differ: ``trainer.store.sql``; image bytes: ``trainer.store.blobs``.
"""

from .imaging import BadImage
from .records import (ACTIONS, STATUSES, Conflict, DeadLetter, IncomingSample, IngestResult, InvalidLabel, Item,
                      NewExample, NotFound, Project, QueueFilter, StoreError)
from .store import Store, incoming, new_example

__all__ = ["ACTIONS", "STATUSES", "BadImage", "Conflict", "DeadLetter", "IncomingSample", "IngestResult",
           "InvalidLabel", "Item", "NewExample", "NotFound", "Project", "QueueFilter", "Store", "StoreError",
           "incoming", "new_example"]
