"""Reconciliation of groups: a connector's configured groups exist in the target and
their membership follows the store, as set differences; members we do not manage are left alone."""

import pandas as pd
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from connectors.base import Account, RemoteGroup
from deployments.cli import app
from helpers import write_config
from models.config import load_config
from models.db import session_scope
from models.events import EventUser
from models.identity import find_user, set_groups, upsert_user
from models.tables import Group, Mapping, Operation, ReconciliationRun, utcnow
from tasks.plan import group_diff

pytestmark = pytest.mark.usefixtures("prefect_harness")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
GROUPS = "    groups: [all-staff, admins]\n"


def reconcile(config, *args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), *args])
    return result.exit_code, result.output


def members(scim) -> dict[str, set[str]]:
    return {g["displayName"]: {m["value"] for m in g.get("members") or []} for g in scim.groups()}


def remote_ids(scim) -> dict[str, str]:
    return {u["userName"]: u["id"] for u in scim.users()}


def last_run() -> ReconciliationRun:
    with session_scope() as session:
        return session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()


def add_user(name: str, groups: list[str]) -> str:
    with session_scope() as session:
        return upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                              family_name="Family", groups=groups), "example.com", source="api").id


def test_group_diff_is_set_differences():
    remote = [RemoteGroup(name="g", id="rg", member_ids=frozenset({"r-keep", "r-leave", "r-foreign"}))]
    rows = group_diff(["g", "new"], {"g": "lg"}, {"g": {"u-keep", "u-leave-not", "u-new", "u-out"}}, remote,
                      {"lg": "rg"}, {"u-keep": "r-keep", "u-new": None, "u-leave-not": "r-other"},
                      {}, {"r-keep": "u-keep", "r-leave": "u-leave", "r-other": "u-leave-not"})
    got = sorted((r.action, r.group, r.remote_id or "") for r in rows.itertuples())
    # u-out is not desired on the connector; r-foreign is not ours: neither is touched.
    assert got == [("group_create", "new", ""), ("member_add", "g", ""), ("member_add", "g", "r-other"),
                   ("member_remove", "g", "r-leave")]
    assert group_diff([], {}, {}, [], {}, {}, {}, {}).empty


def test_reconcile_creates_groups_and_keeps_membership_in_step(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=GROUPS)
    add_user("alice", ["all-staff", "admins"])
    add_user("bob", ["all-staff"])
    add_user("carol", ["chess-club"])  # an unconfigured group is not pushed

    # Dry-run: the group rows are planned and counted; nothing mutating is sent.
    before = len(scim.requests)
    code, out = reconcile(config, "--dry-run")
    assert code == 0, out
    assert "group_create 2, member_add 3" in out, out
    assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []
    assert scim.groups() == [] and scim.users() == []
    run = last_run()
    assert run.dry_run and run.counts["group_create"] == 2 and run.counts["member_add"] == 3
    with session_scope() as session:
        assert session.exec(select(Operation)).all() == []

    # Apply: users first, then the groups they join (their ids resolved from the new mappings).
    code, out = reconcile(config)
    assert code == 0, out
    assert "succeeded 8, failed 0" in out, out  # 3 creates, 2 group creates, 3 member adds
    ids = remote_ids(scim)
    assert members(scim) == {"all-staff": {ids["alice"], ids["bob"]}, "admins": {ids["alice"]}}
    with session_scope() as session:
        local = {g.name: g.id for g in session.exec(select(Group))}
        mapped = {m.remote_name: m.local_id for m in session.exec(select(Mapping).where(Mapping.entity_type == "group"))}
        ops = session.exec(select(Operation).where(Operation.entity_type == "group")).all()
    assert mapped == {"all-staff": local["all-staff"], "admins": local["admins"]}  # the event path reuses them
    assert sorted(o.operation for o in ops) == ["group_create"] * 2 + ["member_add"] * 3
    assert {o.status for o in ops} == {"succeeded"}
    assert last_run().counts["member_add"] == 3 and last_run().outcomes["succeeded"] == 8

    # alice leaves admins locally; an account we do not manage is put in admins behind our back.
    connector = _connector(config)
    stranger = connector.create_user(Account(user_name="stranger"))
    admins = next(g["id"] for g in scim.groups() if g["displayName"] == "admins")
    connector.add_members(admins, [stranger.id])
    with session_scope() as session:
        set_groups(session, find_user(session, "example.com", "PRIMARY", "alice"), ["all-staff"])
    code, out = reconcile(config)
    assert code == 0, out
    assert "plan: member_remove 1;" in out, out
    assert members(scim) == {"all-staff": {ids["alice"], ids["bob"]}, "admins": {stranger.id}}

    # Converged: a second run plans nothing and sends nothing mutating.
    before = len(scim.requests)
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out
    assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []


def test_an_existing_group_is_adopted_and_a_deprovisioned_member_removed(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff]\n    deprovision: disable\n")
    connector = _connector(config)
    existing = connector.create_group("all-staff", [])
    dave, erin = add_user("dave", ["all-staff"]), add_user("erin", ["all-staff"])
    assert reconcile(config)[0] == 0
    ids = remote_ids(scim)
    assert len(scim.groups()) == 1 and members(scim) == {"all-staff": {ids["dave"], ids["erin"]}}
    with session_scope() as session:
        group = session.exec(select(Mapping).where(Mapping.entity_type == "group")).one()
        assert group.remote_id == existing.id
        find_user(session, "example.com", "PRIMARY", "erin").deleted_at = utcnow()

    # erin is deprovisioned (disabled): her account stays, ours, and leaves the group.
    code, out = reconcile(config, "--yes")
    assert code == 0, out
    assert "disable 1, " in out and "member_remove 1;" in out, out
    assert members(scim) == {"all-staff": {ids["dave"]}}
    assert {u["userName"]: u["active"] for u in scim.users()} == {"dave": True, "erin": False}
    assert dave != erin


def _connector(config):
    from connectors.factory import get_connector

    return get_connector(load_config(config).connectors[0])


def test_plan_without_groups_has_no_group_counts():
    from tasks.plan import Plan

    plan = Plan("x", pd.DataFrame(columns=["action", "op"]), 0, 0)
    assert "member_add" not in plan.counts()
