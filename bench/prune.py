"""Prune N operation rows (and one attempt each) with models.retention; print the counts and the time.

    .venv/bin/python bench/prune.py 1000000 postgresql   # a throwaway database on 127.0.0.1:5432
    .venv/bin/python bench/prune.py 1000000 sqlite       # a throwaway file in a temporary directory

The operations belong to N/10 users on one connector, ten each, started 100 to 200 days ago (all
past the 90-day default), so every one but the latest per user goes: 90% of the rows. Half the
events are finished and old. Seeding is done in SQL (not timed); the dry run and the prune are timed.
"""

import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from models.config import RetentionSettings  # noqa: E402
from models.db import dispose_all, get_engine  # noqa: E402
from models.retention import prune  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

SEED_PG = """
INSERT INTO operations (id, connector, entity_type, entity_id, entity_name, action, operation, status, attempts,
                        started_at, finished_at)
SELECT i, 'app', 'user', 'u' || (i % :users), 'u' || (i % :users), 'provision', 'update', 'succeeded', 1,
       now() - interval '200 days' + (i * interval '1 second' * (8640000.0 / :n)),
       now() - interval '200 days' + (i * interval '1 second' * (8640000.0 / :n))
FROM generate_series(1, :n) AS i;
INSERT INTO operation_attempts (operation_id, number, status, started_at)
SELECT id, 1, 'succeeded', started_at FROM operations;
INSERT INTO events (id, type, trigger, payload, status, received_at)
SELECT 'e' || i, 'user.updated', 'api', '{}', CASE WHEN i % 2 = 0 THEN 'succeeded' ELSE 'accepted' END,
       now() - interval '150 days' FROM generate_series(1, :users) AS i;
SELECT setval(pg_get_serial_sequence('operations', 'id'), :n);
"""

SEED_SQLITE = """
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
INSERT INTO operations (id, connector, entity_type, entity_id, entity_name, action, operation, status, attempts,
                        started_at, finished_at)
SELECT i, 'app', 'user', 'u' || (i % :users), 'u' || (i % :users), 'provision', 'update', 'succeeded', 1,
       datetime('now', '-200 days', '+' || (i * 8640000 / :n) || ' seconds'),
       datetime('now', '-200 days', '+' || (i * 8640000 / :n) || ' seconds') FROM seq;
INSERT INTO operation_attempts (operation_id, number, status, started_at)
SELECT id, 1, 'succeeded', started_at FROM operations;
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :users)
INSERT INTO events (id, type, trigger, payload, status, received_at)
SELECT 'e' || i, 'user.updated', 'api', '{}', CASE WHEN i % 2 = 0 THEN 'succeeded' ELSE 'accepted' END,
       datetime('now', '-150 days') FROM seq;
"""


def seed(url: str, n: int) -> float:
    engine = get_engine(url)
    script = SEED_PG if engine.dialect.name == "postgresql" else SEED_SQLITE
    started = time.perf_counter()
    with engine.begin() as conn:
        for statement in filter(str.strip, script.split(";\n")):
            conn.execute(text(statement), {"n": n, "users": max(n // 10, 1)})
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def run(url: str, n: int) -> None:
    print(f"seeded {n} operations, {n} attempts, {max(n // 10, 1)} events in {seed(url, n):.1f} s")
    started = time.perf_counter()
    dry = prune(RetentionSettings(), dry_run=True, url=url)
    print(f"dry run: {dry.summary()} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    done = prune(RetentionSettings(), url=url)
    print(f"prune:   {done.summary()} in {time.perf_counter() - started:.1f} s")
    with get_engine(url).connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM operations")).scalar()
    print(f"operations left: {left} (the latest per user)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    kind = sys.argv[2] if len(sys.argv) > 2 else "postgresql"
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/bench.db", n)
            dispose_all()
        return
    import psycopg

    name = f"outbound_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", n)
    finally:
        dispose_all()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
