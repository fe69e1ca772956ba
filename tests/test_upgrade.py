"""Upgrades: a store made by schema 0001 is migrated by `outbound db upgrade` with every row intact.

SQLite: the committed fixture tests/fixtures/schema_0001.sqlite (made by make_schema_0001.py).
PostgreSQL: a fresh database upgraded to 0001, the same rows inserted with raw SQL, then upgraded.
Either way the app must work on the store afterwards (accept an event, list the runs).
"""

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from fixtures.make_schema_0001 import FIXTURE, JSON_COLUMNS, ROWS, TENANT, insert_rows

ROOT = Path(__file__).parent.parent
OUTBOUND = ROOT / ".venv" / "bin" / "outbound"
runner = CliRunner()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from models.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def normal(table: str, column: str, value):
    """A stored value in the form ROWS writes it (JSON parsed, booleans, UTC datetimes as text)."""
    if (table, column) in JSON_COLUMNS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, datetime):
        if value.utcoffset() is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if column == "active" and isinstance(value, int):
        return bool(value)
    return value


def read_rows(url: str) -> dict[str, list[dict]]:
    engine = create_engine(url)
    try:
        out = {}
        with engine.connect() as conn:
            for table, expected in ROWS.items():
                cols = list(expected[0])
                key = ", ".join(cols[:2]) if table in ("user_roles", "group_members") else cols[0]
                result = conn.execute(text(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}"))
                out[table] = [{c: normal(table, c, v) for c, v in zip(cols, row)} for row in result]
        return out
    finally:
        engine.dispose()


def expected_rows() -> dict[str, list[dict]]:
    def key(table, row):
        cols = list(row)
        return tuple(str(row[c]) for c in (cols[:2] if table in ("user_roles", "group_members") else cols[:1]))

    return {t: sorted(rows, key=lambda r, t=t: key(t, r)) for t, rows in ROWS.items()}


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def cli_upgrade(url: str) -> subprocess.CompletedProcess:
    """`outbound db upgrade` in its own process, the way an operator runs it."""
    env = {**os.environ, "OUTBOUND_DATABASE_URL": url}
    cmd = [str(OUTBOUND)] if OUTBOUND.exists() else [sys.executable, "-m", "deployments.cli"]
    return subprocess.run([*cmd, "db", "upgrade"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def check_app_works(tmp_path: Path, url: str) -> None:
    """After the upgrade: accept an event for a migrated user, list the runs, read the identity data."""
    from deployments.cli import app
    from models.ingest import accept
    from models.config import parse_config
    from models.db import dispose_all, session_scope
    from models.identity import find_user, groups_of, roles_of

    dispose_all()
    try:
        config = parse_config({"tenant_domain": TENANT, "connectors": []})
        accepted = accept({"id": "evt-after-upgrade", "type": "user.updated",
                           "user": {"username": "alice", "family_name": "Hargreaves"}}, config)
        assert accepted.new
        assert not accept({"id": "evt-0001", "type": "user.created", "user": {"username": "alice"}}, config).new
        with session_scope() as session:
            alice = find_user(session, TENANT, "PRIMARY", "alice")
            assert alice.id == "u-alice" and alice.family_name == "Hargreaves"
            assert alice.attributes == {"department": "Sales", "employee_no": 42}
            assert roles_of(session, alice.id) == {"sales", "admin"}
            assert groups_of(session, alice.id) == {"staff", "Sales EMEA"}
            assert alice.created_at == datetime(2026, 1, 2, 10, 0, tzinfo=timezone.utc)
        result = runner.invoke(app, ["runs", "--json"], env={"OUTBOUND_DATABASE_URL": url})
        assert result.exit_code == 0, result.output
        runs = [json.loads(line) for line in result.output.splitlines() if line.strip()]
        assert [r["id"] for r in runs] == [2, 1]
        assert runs[1]["operation"] == "create" and runs[1]["attempts"] == 2 and runs[0]["error_code"] == "AuthFailed"
        # New rows get ids after the migrated ones.
        with session_scope() as session:
            from models.runstate import record

            assert record(session, connector="scim-app", entity_id="u-alice", entity_name="alice@PRIMARY",
                          action="skip", status="skipped").id == 3
    finally:
        dispose_all()


def upgrade_and_check(tmp_path: Path, url: str) -> None:
    assert revision_of(url) == "0001"
    before = read_rows(url)
    assert before == expected_rows()  # the fixture holds what the script wrote

    done = cli_upgrade(url)
    assert done.returncode == 0, done.stdout + done.stderr
    head = head_revision()
    assert f"schema at revision {head}" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert revision_of(url) == head
    assert read_rows(url) == before  # every row, every value

    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"reconciliation_runs", "leases", *ROWS} <= tables

    again = cli_upgrade(url)  # a second upgrade is a no-op
    assert again.returncode == 0 and revision_of(url) == head, again.stderr
    assert read_rows(url) == before
    check_app_works(tmp_path, url)


def test_sqlite_fixture_from_0001_upgrades_with_data_intact(tmp_path, monkeypatch):
    assert FIXTURE.stat().st_size < 64 * 1024  # the committed fixture stays small
    copy = tmp_path / "old.sqlite"
    shutil.copy(FIXTURE, copy)
    url = f"sqlite:///{copy}"
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", url)
    upgrade_and_check(tmp_path, url)


def test_postgresql_from_0001_upgrades_with_data_intact(tmp_path, pg_url):
    from models.db import dispose_all, upgrade

    upgrade(pg_url, "0001")
    dispose_all()
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            insert_rows(conn)
    finally:
        engine.dispose()
    upgrade_and_check(tmp_path, pg_url)


def test_the_fixture_script_rebuilds_the_same_data(tmp_path):
    """make_schema_0001.py still runs (e.g. after a new migration) and yields what the fixture holds."""
    out = tmp_path / "rebuilt.sqlite"
    done = subprocess.run([sys.executable, str(FIXTURE.with_name("make_schema_0001.py")), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{out}"
    assert revision_of(url) == "0001"
    assert read_rows(url) == read_rows(f"sqlite:///{FIXTURE}") == expected_rows()


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/x/y.db",
                                 "postgresql+psycopg://postgres:Upgr4de-Secret-PW@127.0.0.1:1/nothing"])
def test_upgrade_of_an_unreachable_store_is_a_clear_error_without_traceback_or_password(url):
    done = cli_upgrade(url)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "cannot upgrade the schema" in output and "Traceback" not in output
    assert "Upgr4de-Secret-PW" not in output


def test_a_store_at_head_is_known_without_alembic(db_url):
    import models.db as db

    head = head_revision()
    assert db._heads() == {head}
    engine = db.get_engine(db_url, migrate=False)
    assert not db.at_head(engine)  # a new store: no version table yet
    db.upgrade(db_url, "0001")
    assert not db.at_head(engine)
    db.get_engine(db_url)  # its first use migrates a store that is not at head
    assert db.at_head(engine) and revision_of(db_url) == head


def test_a_migration_file_not_read_leaves_the_decision_to_alembic(tmp_path, monkeypatch):
    import models.db as db

    shutil.copytree(db.MIGRATIONS / "versions", tmp_path / "versions")
    monkeypatch.setattr(db, "MIGRATIONS", tmp_path)
    head = head_revision()
    (tmp_path / "versions" / "0099_next.py").write_text(
        f'"""Next."""\nrevision: str = "0099_next"\ndown_revision: Union[str, None] = "{head}"\n')
    assert db._heads() == {"0099_next"}
    (tmp_path / "versions" / "0100_merge.py").write_text(
        f"revision = '0100_merge'\ndown_revision = ('0099_next', '{head}')\n")
    assert db._heads() is None
