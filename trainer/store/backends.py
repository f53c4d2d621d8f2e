"""Store URLs: which database backend to open.

``sqlite:///path/to/edgeloop.db`` (or no URL: ``$EDGELOOP_STORE_URL``, else
``data_dir/edgeloop.db``, the embedded default) opens ``trainer.store.db.Database``; ``postgresql://...``
(or ``postgres://``) opens ``trainer.store.pg.PgDatabase``. Both have
the same interface:

- ``write(fn, timeout=None)``: run ``fn(db)`` in one transaction, return its value once committed;
- ``write_async(fn)``: the same, returning a ``Future``;
- ``read()``: a reader with ``execute(sql, params)`` (and ``.dialect``);
- ``close()``; ``dialect`` (``trainer.store.sql``); ``url``.

``fn`` and readers speak the store's SQL (``trainer.store.sql``). The model
registry uses the same URL: on SQLite its own file (``registry.db`` beside
``edgeloop.db``), on PostgreSQL the same database (its tables do not overlap).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from .sql import Conn

SCHEMES = ("sqlite", "postgresql", "postgres")
URL_ENV = "EDGELOOP_STORE_URL"


class BadStoreURL(ValueError):
    """A store URL this build cannot open."""


def scheme(url: str) -> str:
    s = urlsplit(url).scheme
    if s not in SCHEMES:
        raise BadStoreURL(f"store URL must start with sqlite:/// or postgresql://, not {url.split(':', 1)[0]!r}")
    return "postgresql" if s == "postgres" else s


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/x.db`` -> ``relative/x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if scheme(url) != "sqlite":
        raise BadStoreURL(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or rest == "/":
        raise BadStoreURL(f"a sqlite URL is sqlite:///path/to/file.db, got {url!r}")
    return Path(unquote(rest[1:] if not rest.startswith("//") else rest[1:]))


def default_url(data_dir: str | Path, name: str = "edgeloop.db") -> str:
    """``$EDGELOOP_STORE_URL`` when set (the registry's: ``sibling_url`` of it), else SQLite in ``data_dir``.

    Every entry point that opens a store from a data folder (server, collector, CLIs, tests) thus
    follows one variable to PostgreSQL.
    """
    env = os.environ.get(URL_ENV)
    if env:
        scheme(env)
        return env if name == "edgeloop.db" else sibling_url(env, name)
    return f"sqlite:///{Path(data_dir) / name}"


def redact(url: str) -> str:
    """The URL without its password, for logs and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return url.replace(parts.netloc, netloc, 1)


def open_database(url: str, *, migrate: Callable[[Conn], None] | None = None, busy_timeout_ms: int = 10_000,
                  pool_size: int = 8):
    """Open (and migrate) the database a store URL names."""
    if scheme(url) == "sqlite":
        from .db import Database

        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Database(path, busy_timeout_ms=busy_timeout_ms, migrate=migrate)
    from .pg import PgDatabase  # psycopg is only needed for PostgreSQL

    return PgDatabase(url, migrate=migrate, max_size=pool_size, connect_timeout_s=busy_timeout_ms / 1000)


def sibling_url(url: str, name: str) -> str:
    """The registry's database for a store URL: a file beside a SQLite store, the same PostgreSQL database."""
    if scheme(url) == "sqlite":
        return f"sqlite:///{sqlite_path(url).parent / name}"
    return url
