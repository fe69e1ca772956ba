"""The engine of the state store, chosen by OUTBOUND_DATABASE_URL, migrated on first use."""

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

DEFAULT_DATABASE_URL = "sqlite:///outbound.db"
MIGRATIONS = Path(__file__).parent / "migrations"
# Any number that is ours alone: serialises migrations across processes on PostgreSQL.
_ADVISORY_LOCK_KEY = 0x0B0D_2026

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.RLock()  # re-entrant: the first use migrates under it


def database_url() -> str:
    return os.environ.get("OUTBOUND_DATABASE_URL") or DEFAULT_DATABASE_URL


def redacted(url: str) -> str:
    """The URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers run beside one writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A store that does not answer (not one that refuses) must not hold a request for minutes.
    connect_args = {} if "connect_timeout" in url else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply the migrations up to `revision`."""
    from alembic import command

    url = url or database_url()
    engine = get_engine(url, migrate=False)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
        try:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                conn.commit()


# `revision = '0012_suspensions'` and `down_revision = …` of a migration file, as alembic's template writes them.
_REVISION = re.compile(r"^(down_)?revision(?:: [^=]+)? = (?:'([^']+)'|\"([^\"]+)\"|None)\s*$", re.M)


def _heads() -> set[str] | None:
    """The revisions no migration builds on, read from the files' text; None when a file is not in the
    one form this reads (a revision, then what it builds on: one name or None): alembic must decide."""
    revisions, built_on = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = [(m.group(1) is not None, m.group(2) or m.group(3)) for m in _REVISION.finditer(path.read_text())]
        if [down for down, _ in found] != [False, True] or found[0][1] is None:
            return None
        revisions.add(found[0][1])
        built_on.add(found[1][1])
    return (revisions - built_on) or None


def at_head(engine: Engine) -> bool:
    """Whether the store is at the migrations' head, asked without importing alembic (0.1-0.2 s of
    every command that opens the store); False when unsure (no version table yet, a file not read)."""
    from sqlalchemy.exc import DBAPIError

    heads = _heads()
    if heads is None:
        return False
    try:
        with engine.connect() as conn:
            stored = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    except DBAPIError:  # no such table (a new store), or the store cannot answer: the upgrade will say
        return False
    return stored == heads


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url, migrate=False).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def get_engine(url: str | None = None, migrate: bool = True) -> Engine:
    """The engine for `url` (default: OUTBOUND_DATABASE_URL), migrated to head on first use."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _make_engine(url)
        if migrate and url not in _migrated:
            if not at_head(engine):
                upgrade(url)
            _migrated.add(url)
    return engine


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
