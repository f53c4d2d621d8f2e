"""Shared fixtures: a real MQTT broker per test, both store backends, paths to optional shared data.

Store backends: every test in a module named in ``BOTH_BACKENDS`` runs twice,
``[sqlite]`` and ``[postgresql]``. The PostgreSQL run gets a schema of its own
in a database this session creates (random name, dropped at the end) on the
server at ``$EDGELOOP_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
and ``$EDGELOOP_STORE_URL`` points at it, so every ``Store``, ``Registry`` and
server the test opens, in this process or a child, uses it. A test that asks
for ``store_url`` gets that URL (``None`` on SQLite). Without a server the
``[postgresql]`` runs skip, unless ``EDGELOOP_REQUIRE_POSTGRES`` is set (CI).
A test that reads the SQLite file itself is marked ``sqlite_only``.
``EDGELOOP_TEST_ALL_BACKENDS=1`` runs every module on both.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from edgeloop.broker import LocalBroker

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_report_header(config: pytest.Config) -> list[str]:
    mosquitto = shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto")
    lines = [f"edgeloop broker: {'mosquitto at ' + mosquitto if mosquitto else 'amqtt (mosquitto not installed: MQTT 5 tests skip)'}"]
    lines.append(f"edgeloop shared data: {SHARED if SHARED.exists() else 'absent (shared-data tests skip)'}")
    problem = _pg_problem()
    lines.append(f"edgeloop PostgreSQL: {PG_ADMIN_URL if problem is None else problem + ' ([postgresql] tests skip)'}")
    return lines


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EDGELOOP_REQUIRE_MOSQUITTO") and not LocalBroker(ROOT / "build").mosquitto:
        raise pytest.UsageError("EDGELOOP_REQUIRE_MOSQUITTO is set but mosquitto is not installed")
    config.addinivalue_line("markers", "sqlite_only: reads the SQLite file itself; not run on PostgreSQL")
    if os.environ.get("EDGELOOP_REQUIRE_POSTGRES") and _pg_problem() is not None:
        raise pytest.UsageError(f"EDGELOOP_REQUIRE_POSTGRES is set but {_pg_problem()}")


# Modules whose every test runs on both store backends (store, ingest, API, rounds, registry).
BOTH_BACKENDS = re.compile(r"^test_(store_.*|ingest_.*|api_(?!docs).*|rounds_.*|publish_registry|train_registry|queue_order"
                           r"|hardening_frame_owner|hardening_labels|hardening_presence)\.py$")
PG_ADMIN_URL = os.environ.get("EDGELOOP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_pg_state: dict = {}


def _pg_problem() -> str | None:
    """Why PostgreSQL cannot be used here (None when it can); asked once per session."""
    if "problem" not in _pg_state:
        try:
            import psycopg

            psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
            _pg_state["problem"] = None
        except Exception as e:  # no driver, no server, refused: all mean "skip" (or fail under CI)
            _pg_state["problem"] = f"PostgreSQL at {PG_ADMIN_URL} is not usable: {str(e).strip()[:200]}"
    return _pg_state["problem"]


def preferred_backend() -> str:
    """``postgresql`` where a server is usable (always in CI), else ``sqlite``: for a process-level test whose
    subject is not the store, run once on the backend its deployment uses rather than twice."""
    return "postgresql" if _pg_problem() is None else "sqlite"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1] + ".py"
    # EDGELOOP_TEST_ALL_BACKENDS=1: every module on both (to find what else still assumes SQLite).
    if "store_backend" in metafunc.fixturenames and (BOTH_BACKENDS.match(module)
                                                     or os.environ.get("EDGELOOP_TEST_ALL_BACKENDS")):
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_database():
    """A database of this session's own on the test server (dropped at the end); its URL."""
    problem = _pg_problem()
    if problem is not None:
        pytest.skip(problem)
    import psycopg

    name = f"edgeloop_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``sqlite`` or ``postgresql`` (see the module docstring); sqlite where a module is not parametrized."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        if request.node.get_closest_marker("sqlite_only"):
            pytest.skip("reads the SQLite file itself")
        base = request.getfixturevalue("pg_database")
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        monkeypatch.setenv("EDGELOOP_STORE_URL", f"{base}?options=-csearch_path%3D{schema}")
    else:
        monkeypatch.delenv("EDGELOOP_STORE_URL", raising=False)
    return backend


@pytest.fixture
def another_store_url(store_backend: str):
    """``another_store_url()``: a second, empty store for tests that open two (None on SQLite: use another folder)."""
    def make() -> str | None:
        url = os.environ.get("EDGELOOP_STORE_URL")
        if url is None:
            return None
        import psycopg

        base = url.split("?", 1)[0]
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{base}?options=-csearch_path%3D{schema}"
    return make


@pytest.fixture
def store_url(store_backend: str) -> str | None:
    """The PostgreSQL URL this test's stores open, or None on SQLite (their data folder's file)."""
    return os.environ.get("EDGELOOP_STORE_URL")


@pytest.fixture
def broker(tmp_path: Path):
    """A real broker on a free loopback port; ``broker.kill()`` / ``.start()`` for fault tests."""
    b = LocalBroker(tmp_path / "broker")
    if b.kind != "mosquitto":
        print("mosquitto not found: using the embedded amqtt broker (MQTT 3.1.1 only)")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def mqtt5_broker(broker: LocalBroker) -> LocalBroker:
    if not broker.supports_mqtt5:
        pytest.skip("needs mosquitto (MQTT 5); the amqtt fallback speaks 3.1.1 only")
    return broker


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED / "data").exists():
        pytest.skip("../shared/data is absent")
    return SHARED / "data"
