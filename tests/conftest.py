import os
import sys
from pathlib import Path

# Prefect must not try to reach a server or phone home from tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# `make test` (and so CI) draws the same examples on every run: a property test that fails does so
# every time, and a good change is never refused by chance. `make fuzz` explores with fresh seeds;
# what it finds becomes an @example in the test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~14 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/state.db"
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", url)
    return url


@pytest.fixture
def pg_url(monkeypatch):
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"outbound_test_{uuid.uuid4().hex[:10]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc}); .ci/run starts it")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", url)
    yield url
    from models.db import dispose_all

    dispose_all()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def scim():
    """A real SCIM 2.0 server (scim2-server) on a free loopback port."""
    from sandbox.scim import ScimSandbox

    with ScimSandbox() as server:
        yield server
