"""Reconciliation: the plan (every action, canonicalisation), the guard, dry-run, apply and convergence."""

import pandas as pd
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from connectors.base import Account
from deployments.cli import app
from helpers import write_config
from models.config import load_config
from models.db import session_scope, upgrade
from models.events import EventUser
from models.identity import find_user, upsert_user
from models.tables import Mapping, Operation, ReconciliationRun, utcnow
from sandbox.scim import ScimSandbox
from tasks.plan import ACCOUNT_COLUMNS, TEXT_FIELDS, diff

runner = CliRunner()
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


# --- the diff alone (no servers) -----------------------------------------------------------

def _desired(*rows):
    cols = ["local_id", "entity_name", "reason", *TEXT_FIELDS, "active"]
    return pd.DataFrame([{"entity_name": r["local_id"] + "@PRIMARY", "reason": "in scope", "external_id": r["local_id"],
                          "given_name": None, "family_name": None, "display_name": None, "email": None,
                          "active": True, **r} for r in rows], columns=cols)


def _target(*rows):
    return pd.DataFrame([{"external_id": None, "given_name": None, "family_name": None, "display_name": None,
                          "email": None, "active": True, **r} for r in rows], columns=list(ACCOUNT_COLUMNS))


EVERY_KEY = ("external_id", "user_name", "email")


def test_diff_plans_every_action_and_ignores_cosmetic_differences():
    desired = _desired(
        dict(local_id="u-same", user_name="same", email="Same@Example.com", given_name="S"),
        dict(local_id="u-upd", user_name="upd", given_name="New", family_name="F"),
        dict(local_id="u-off", user_name="off", active=False),
        dict(local_id="u-on", user_name="on"),
        dict(local_id="u-new", user_name="new"),
        dict(local_id="u-ext", user_name="ext"),
        dict(local_id="u-name", user_name="byname", given_name="N"),
        dict(local_id="u-mail", user_name="bymail", email="m@example.com"),
        dict(local_id="u-gone", user_name="gone"),
        dict(local_id="u-taken", user_name="taken"),
    )
    target = _target(
        dict(remote_id="r-same", user_name="same", external_id="u-same", email="SAME@example.COM ", given_name="S"),
        dict(remote_id="r-upd", user_name="upd", external_id="u-upd", given_name="Old", family_name=""),
        dict(remote_id="r-off", user_name="off", external_id="u-off"),
        dict(remote_id="r-on", user_name="on", external_id="u-on", active=False),
        dict(remote_id="r-ext", user_name="ext-renamed", external_id="u-ext"),
        dict(remote_id="r-name", user_name="BYNAME", given_name="N"),
        dict(remote_id="r-mail", user_name="something", email="M@Example.com"),
        dict(remote_id="r-del", user_name="leaver", external_id="u-del"),
        dict(remote_id="r-orphan", user_name="ghost", external_id="u-ghost"),
        dict(remote_id="r-mine", user_name="mine", external_id="u-unknown-mapped"),
        dict(remote_id="r-taken", user_name="taken", external_id="someone-else"),
        dict(remote_id="r-foreign", user_name="admin"),
    )
    mappings = pd.DataFrame({"local_id": ["u-same", "u-upd", "u-off", "u-on", "u-gone", "u-del", "u-dropped"],
                             "remote_id": ["r-same", "r-upd", "r-off", "r-on", "r-missing", "r-del", "r-mine"],
                             "remote_name": ["same", "upd", "off", "on", "gone", "leaver", "mine"]})
    deprovision = pd.DataFrame({"local_id": ["u-del"], "entity_name": ["leaver@PRIMARY"], "mode": ["delete"],
                                "reason": ["the user was deleted"]})
    known = pd.Series(["u-same", "u-upd", "u-off", "u-on", "u-new", "u-ext", "u-name", "u-mail", "u-gone",
                       "u-taken", "u-del", "u-ghost"])
    by_default, _ = diff(desired, target, mappings, deprovision, known)  # email matching is opt-in
    assert ("create", "u-mail") in {(r.action, r.local_id) for r in by_default.itertuples()}
    plan, unmanaged = diff(desired, target, mappings, deprovision, known, match=("external_id", "user_name", "email"))
    got = {(r.action, r.local_id or r.remote_id): r for r in plan.itertuples()}
    assert set(got) == {("update", "u-upd"), ("disable", "u-off"), ("enable", "u-on"), ("create", "u-new"),
                        ("link", "u-ext"), ("link", "u-name"), ("link", "u-mail"), ("relink", "u-gone"),
                        ("delete", "u-del"), ("orphan", "r-orphan"), ("orphan", "u-dropped"),
                        ("create", "u-taken")}, plan[["action", "local_id", "remote_id"]]
    assert got[("update", "u-upd")].changes == {"given_name": {"had": "Old", "want": "New"},
                                                "family_name": {"had": "", "want": "F"}}
    assert got[("link", "u-ext")].changes == {"user_name": {"had": "ext-renamed", "want": "ext"}}
    assert got[("link", "u-ext")].op == "update"
    # adopted by username: only our externalId is stamped on it (the case of the username is no drift)
    assert got[("link", "u-name")].changes == {"external_id": {"had": None, "want": "u-name"}}
    assert got[("link", "u-name")].remote_id == "r-name"
    assert got[("link", "u-mail")].remote_id == "r-mail"
    assert got[("orphan", "r-orphan")].op == "none"  # orphans: report
    assert unmanaged == 2  # r-foreign, r-taken (someone else's externalId: never adopted)

    deleting, _ = diff(desired, target, mappings, deprovision, known, orphans="delete", match=EVERY_KEY)
    assert set(deleting.loc[deleting.action == "orphan", "op"]) == {"delete"}
    readonly, _ = diff(desired, target, mappings, deprovision, known, read_only=("given_name", "family_name"),
                       match=EVERY_KEY)
    assert "u-upd" not in set(readonly.loc[readonly.action == "update", "local_id"])


# --- end to end: store → plan → SCIM sandbox -------------------------------------------------

@pytest.fixture
def scim():
    with ScimSandbox() as server:
        yield server


def add_users(n: int, prefix: str = "user", **extra) -> list[str]:
    with session_scope() as session:
        ids = []
        for i in range(n):
            data = EventUser(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com", given_name=f"G{i}",
                             family_name="Family", **extra)
            ids.append(upsert_user(session, data, "example.com", source="api").id)
        return ids


def reconcile(config, *args):
    result = runner.invoke(app, ["reconcile", "--config", str(config), *args])
    return result.exit_code, result.output


def mutating(scim, since: int = 0) -> list:
    return [r for r in scim.requests[since:] if r[0] in MUTATING]


def by_name(scim) -> dict:
    return {u["userName"]: u for u in scim.users()}


@pytest.mark.usefixtures("prefect_harness")
def test_dry_run_then_apply_then_nothing_left(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    ids = add_users(12)
    connector = _connector(config)
    # Already in the target: one with our externalId (a create whose DB write was lost), one by
    # username with an upper-cased email and extra attributes the server keeps (defaults we do not manage).
    connector.create_user(Account(user_name="user0", external_id=ids[0], given_name="G0", family_name="Family",
                                  display_name="G0 Family", email="user0@example.com"))
    connector.create_user(Account(user_name="user1", given_name="G1", family_name="Family",
                                  display_name="G1 Family", email="USER1@EXAMPLE.COM"))
    before = len(scim.requests)

    code, out = reconcile(config, "--dry-run", "--report", str(tmp_path / "plan.csv"))
    assert code == 0, out
    assert "create 10" in out and "link 2" in out, out
    assert mutating(scim, before) == []  # dry-run: nothing mutating left the connector
    assert len(scim.users()) == 2
    report = pd.read_csv(tmp_path / "plan.csv")
    assert sorted(report["action"].value_counts().items()) == [("create", 10), ("link", 2)]

    code, out = reconcile(config)
    assert code == 0, out
    assert "succeeded 12, failed 0" in out, out
    assert len(scim.users()) == 12  # linked, not duplicated
    assert [m for m in mutating(scim, before) if m[1].endswith("/Users")] == []  # creates went through /Bulk
    assert by_name(scim)["user1"]["externalId"] == ids[1]  # adopted by username: our externalId stamped
    assert by_name(scim)["user1"]["emails"][0]["value"].startswith("USER1@")  # case is no drift: not rewritten
    with session_scope() as session:
        assert len(session.exec(select(Mapping)).all()) == 12
        ops = session.exec(select(Operation)).all()
        assert sorted({o.operation for o in ops}) == ["create", "link"] and {o.status for o in ops} == {"succeeded"}
        runs = session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at)).all()
        assert [r.dry_run for r in runs] == [True, False] and runs[-1].status == "succeeded"
        assert runs[-1].counts["create"] == 10 and runs[-1].outcomes["succeeded"] == 12

    before = len(scim.requests)
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out
    assert mutating(scim, before) == []


def _connector(config):
    from connectors.factory import get_connector

    return get_connector(load_config(config).connectors[0])


@pytest.mark.usefixtures("prefect_harness")
def test_drift_relink_orphan_and_the_guard(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    ids = add_users(12)
    code, out = reconcile(config)
    assert code == 0, out
    connector = _connector(config)
    with session_scope() as session:
        remote = {m.local_id: m.remote_id for m in session.exec(select(Mapping))}
        user = find_user(session, "example.com", "PRIMARY", "user2")
        user.active = False
        find_user(session, "example.com", "PRIMARY", "user3").deleted_at = utcnow()
        find_user(session, "example.com", "PRIMARY", "user4").family_name = "Changed"
    connector.update_user(remote[ids[5]], {"given_name": "Tampered"}, connector.get_user(remote[ids[5]]))
    connector.disable_user(remote[ids[6]])
    connector.delete_user(remote[ids[7]])  # gone behind our back: relink
    connector.create_user(Account(user_name="ghost", external_id="not-one-of-ours"))  # unmanaged
    with session_scope() as session:  # a user the policy does not want here, whose account carries our id
        outsider = upsert_user(session, EventUser(username="outsider"), "example.com", source="federated_login").id
    connector.create_user(Account(user_name="outsider", external_id=outsider))

    # 1 delete + 1 disable > max_deletions (10% of 13 accounts = 1): the CLI refuses without --yes.
    before = len(scim.requests)
    code, out = reconcile(config)
    assert code == 3, out
    assert "--yes" in out and mutating(scim, before) == []
    code, out = reconcile(config, "--yes")
    assert code == 0, out
    assert "update 2, disable 1, enable 1, delete 1, relink 1, orphan 1;" in out, out
    assert "succeeded 6, failed 0, skipped 1" in out, out  # the orphan is only reported
    users = by_name(scim)
    assert "user3" not in users and users["user2"]["active"] is False and users["user6"]["active"] is True
    assert users["user5"]["name"]["givenName"] == "G5" and users["user4"]["name"]["familyName"] == "Changed"
    assert users["user7"]["id"] != remote[ids[7]] and {"ghost", "outsider"} <= set(users)

    before = len(scim.requests)
    code, out = reconcile(config)
    assert code == 0 and "plan: orphan 1;" in out and "(1 unmanaged)" in out, out
    assert mutating(scim, before) == []


@pytest.mark.usefixtures("prefect_harness")
def test_an_interrupted_apply_completes_on_the_next_run(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, attempts=1)
    add_users(8)
    scim.faults.plan.rate, scim.faults.plan.kinds, scim.faults.plan.only_methods = 1.0, ("5xx",), ("POST",)
    code, out = reconcile(config)
    assert code == 1 and "failed 8" in out, out
    assert scim.users() == []
    scim.faults.plan.rate = 0.0
    code, out = reconcile(config)
    assert code == 0 and "succeeded 8" in out, out
    assert len(scim.users()) == 8 and len(by_name(scim)) == 8
    with session_scope() as session:
        failed = session.exec(select(Operation).where(Operation.status == "failed")).all()
        assert len(failed) == 8 and failed[0].error_code


def test_migration_0002_upgrades_sqlite_and_postgresql(db_url):
    from sqlalchemy import inspect

    from models.db import current_revision, get_engine

    upgrade(db_url, revision="0002")  # stop at 0002: the later migrations build on this one
    assert current_revision(db_url) == "0002"
    assert "reconciliation_runs" in inspect(get_engine(db_url, migrate=False)).get_table_names()
    with session_scope(db_url) as session:
        session.add(ReconciliationRun(connector="app", counts={"create": 1}, outcomes={"succeeded": 1}))
